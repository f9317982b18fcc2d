#!/usr/bin/env python3
"""The committed tokenizer/unicode_tables.inc must be what scripts/gen_unicode_tables.py derives
from the installed (pinned) `tokenizers`: catches a pin bump that changes HF's character classes."""
import os
import subprocess
import sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
fresh = subprocess.run([sys.executable, os.path.join(root, "scripts", "gen_unicode_tables.py")], check=True,
                       capture_output=True, text=True).stdout
committed = open(os.path.join(root, "tokenizer", "unicode_tables.inc"), encoding="utf-8").read()
if fresh != committed:
    print("FAIL tokenizer/unicode_tables.inc differs from what the installed tokenizers implies; "
          "regenerate with: python3 scripts/gen_unicode_tables.py > tokenizer/unicode_tables.inc")
    sys.exit(1)
print("PASS unicode tables match the installed tokenizers (every code point probed)")
