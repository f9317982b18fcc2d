#!/usr/bin/env python3
"""bert_infer on a terminal: with stdin a terminal and no --mask/--input it answers each line as it is
typed, not at end of input (tests/test_infer.cpp runs --interactive on streams, which cannot show that).

On a pseudo-terminal (pty.fork): the hint naming [MASK] and Ctrl-D; a prompt line's answer table
arrives while stdin is still open; a line without [MASK] is reported by line number and the session
goes on; Ctrl-D ends it with exit status 1 (one line failed) and the count of failed lines. With stdin
a pipe, nothing is printed before the end of input and there is no hint. The checkpoint: a tiny
BertForMaskedLM with random weights that transformers saves, a vocab.txt of 11 tokens.

    ~/.cache/bertforge/venv/bin/python tests/test_infer_terminal.py --infer build/bert_infer --work /tmp/x
"""
import argparse
import os
import pty
import select
import shutil
import subprocess
import sys
import time

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "."]


def make_model(directory):
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    torch.manual_seed(0)
    os.makedirs(directory, exist_ok=True)
    vocab = os.path.join(directory, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        f.write("\n".join(TOKENS) + "\n")
    BertTokenizer(vocab).save_pretrained(directory)
    config = BertConfig(vocab_size=len(TOKENS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertForMaskedLM(config).save_pretrained(directory, safe_serialization=True)


class Terminal:
    """A child on a pseudo-terminal: what it wrote so far, and waits for a marker in it."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(argv[0], argv)
        self.seen = b""

    def wait_for(self, marker, timeout=60):
        end = time.time() + timeout
        while marker.encode() not in self.seen:
            left = end - time.time()
            if left <= 0:
                raise SystemExit(f"FAIL: no {marker!r} within {timeout} s; the terminal shows:\n"
                                 + self.seen.decode(errors="replace"))
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise SystemExit(f"FAIL: the terminal closed before {marker!r}:\n"
                                     + self.seen.decode(errors="replace"))
                self.seen += chunk

    def type(self, text):
        os.write(self.fd, text.encode())

    def exit_status(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                try:  # what it wrote last
                    while select.select([self.fd], [], [], 0.1)[0]:
                        chunk = os.read(self.fd, 4096)
                        if not chunk:
                            break
                        self.seen += chunk
                except OSError:
                    pass
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.1)
        os.kill(self.pid, 9)
        raise SystemExit("FAIL: bert_infer did not exit after Ctrl-D")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infer", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    model = os.path.join(args.work, "model")
    make_model(model)
    infer = os.path.abspath(args.infer)

    session = Terminal([infer, "--model", model, "--top-k", "1", "--threads", "1"])
    session.wait_for("Ctrl-D ends")
    session.type("the cat [MASK] on the mat.\n")
    session.wait_for("> the cat [MASK] on the mat.")
    session.wait_for("     1  ")  # the answer's first row, stdin still open
    session.type("the cat sat.\n")
    session.wait_for("error: <stdin>:2: no [MASK] in the prompt")
    session.type("[MASK] cat sat.\n")  # still answering after the error
    session.wait_for("> [MASK] cat sat.")
    session.type("\x04")  # Ctrl-D: end of input
    code = session.exit_status()
    shown = session.seen.decode(errors="replace")
    if code != 1 or "1 of 3 prompts failed" not in shown:
        raise SystemExit(f"FAIL: exit {code} (want 1, one line failed); the terminal shows:\n{shown}")
    print("terminal session: answers as lines are typed, the bad line reported, exit 1")

    # A pipe is not a terminal: the prompts are read to the end first (answered in batches), no hint.
    piped = subprocess.run([infer, "--model", model, "--top-k", "1", "--threads", "1"],
                           input="the cat [MASK] on the mat.\n", capture_output=True, text=True, timeout=120)
    if piped.returncode != 0 or "Ctrl-D" in piped.stderr or "> the cat [MASK] on the mat." not in piped.stdout:
        raise SystemExit(f"FAIL: piped stdin: exit {piped.returncode}\n{piped.stdout}\n{piped.stderr}")
    print("piped stdin: no hint, answered at end of input")
    print("PASS")


if __name__ == "__main__":
    sys.exit(main())
