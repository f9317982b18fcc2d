#!/usr/bin/env python3
"""bert_infer reading prompts as they come: from a terminal (no --mask/--input), or with --interactive
from a pipe, each line is answered before the next is read, not at end of input (tests/test_infer.cpp
runs --interactive on string streams, which cannot show that).

- On a pseudo-terminal (pty.fork): the hint naming [MASK] and Ctrl-D; a prompt line's answer table
  arrives while stdin is still open; a line without [MASK] is reported by line number and the session
  goes on; Ctrl-D ends it with exit status 1 (one line failed) and the count of failed lines.
- On a pipe with --interactive --json: each answer line, then the {"error": ...} line of a bad
  prompt, is read while stdin is still open (the output is flushed per line, not at exit).
- On a pipe without it: the prompts are read to the end first and checked before any answer, so a
  good line then a bad one print nothing and exit 1; no hint.
The checkpoint: a tiny random BertForPreTraining (hidden 16, 1 layer, vocabulary of 11 tokens) written
here as safetensors by hand (standard library only).

    python3 tests/test_infer_terminal.py --infer build/bert_infer --work /tmp/x
"""
import argparse
import json
import os
import pty
import random
import select
import shutil
import struct
import subprocess
import sys
import time

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "."]
HIDDEN, INTERMEDIATE, POSITIONS = 16, 32, 32


def make_model(directory):
    """config.json, vocab.txt, tokenizer_config.json and a model.safetensors of BertForPreTraining's
    tensors (HF names; LayerNorm weights 1, biases 0, the rest normal(0, 0.5))."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(TOKENS) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    config = {"architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": len(TOKENS),
              "hidden_size": HIDDEN, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": INTERMEDIATE, "max_position_embeddings": POSITIONS, "type_vocab_size": 2,
              "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    h, i, v = HIDDEN, INTERMEDIATE, len(TOKENS)
    shapes = {"bert.embeddings.word_embeddings.weight": [v, h],
              "bert.embeddings.position_embeddings.weight": [POSITIONS, h],
              "bert.embeddings.token_type_embeddings.weight": [2, h],
              "bert.embeddings.LayerNorm.weight": [h], "bert.embeddings.LayerNorm.bias": [h]}
    layer = "bert.encoder.layer.0."
    for name in ("query", "key", "value"):
        shapes[f"{layer}attention.self.{name}.weight"] = [h, h]
        shapes[f"{layer}attention.self.{name}.bias"] = [h]
    shapes.update({f"{layer}attention.output.dense.weight": [h, h], f"{layer}attention.output.dense.bias": [h],
                   f"{layer}attention.output.LayerNorm.weight": [h], f"{layer}attention.output.LayerNorm.bias": [h],
                   f"{layer}intermediate.dense.weight": [i, h], f"{layer}intermediate.dense.bias": [i],
                   f"{layer}output.dense.weight": [h, i], f"{layer}output.dense.bias": [h],
                   f"{layer}output.LayerNorm.weight": [h], f"{layer}output.LayerNorm.bias": [h],
                   "bert.pooler.dense.weight": [h, h], "bert.pooler.dense.bias": [h],
                   "cls.predictions.bias": [v],
                   "cls.predictions.transform.dense.weight": [h, h], "cls.predictions.transform.dense.bias": [h],
                   "cls.predictions.transform.LayerNorm.weight": [h], "cls.predictions.transform.LayerNorm.bias": [h],
                   "cls.seq_relationship.weight": [2, h], "cls.seq_relationship.bias": [2]})
    rng = random.Random(0)
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, shape in shapes.items():
        count = 1
        for d in shape:
            count *= d
        if "LayerNorm.weight" in name:
            values = [1.0] * count
        elif name.endswith("bias"):
            values = [0.0] * count
        else:
            values = [rng.gauss(0, 0.5) for _ in range(count)]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * count]}
        data += struct.pack(f"<{count}f", *values)
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes + data)


def read_line(pipe, timeout=60):
    """One line from a child's stdout pipe within `timeout` seconds (while its stdin stays open)."""
    ready, _, _ = select.select([pipe], [], [], timeout)
    if not ready:
        raise SystemExit(f"FAIL: no output line within {timeout} s while stdin is open")
    return pipe.readline()


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

    # --batch-size on a terminal asks for batches: no interactive hint, the lines read to Ctrl-D and
    # then answered together.
    session = Terminal([infer, "--model", model, "--top-k", "1", "--threads", "1", "--batch-size", "2"])
    session.type("the cat [MASK] on the mat.\n[MASK] cat sat.\n")
    session.type("\x04")
    code = session.exit_status()
    shown = session.seen.decode(errors="replace")
    if code != 0 or "Ctrl-D ends" in shown or shown.count("     1  ") != 2:
        raise SystemExit(f"FAIL: --batch-size on a terminal: exit {code}; the terminal shows:\n{shown}")
    print("--batch-size on a terminal: read to the end, then answered")

    # --interactive on a pipe: each line's answer (or error object) flushed before the next is read.
    child = subprocess.Popen([infer, "--model", model, "--top-k", "1", "--threads", "1", "--interactive", "--json"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             bufsize=1)
    child.stdin.write("the cat [MASK] on the mat.\n")
    child.stdin.flush()
    answer = json.loads(read_line(child.stdout))
    if not (isinstance(answer, list) and answer[0]["sequence"].startswith("the cat ")):
        raise SystemExit(f"FAIL: --interactive on a pipe answered {answer!r}")
    child.stdin.write("the cat sat.\n")
    child.stdin.flush()
    error = json.loads(read_line(child.stdout))
    if not (isinstance(error, dict) and error["error"].startswith("<stdin>:2: no [MASK]")):
        raise SystemExit(f"FAIL: --interactive on a pipe, a bad line gave {error!r}")
    child.stdin.close()
    rest, stderr = child.stdout.read(), child.stderr.read()
    if child.wait(timeout=60) != 1 or rest or "1 of 2 prompts failed" not in stderr or "Ctrl-D" in stderr:
        raise SystemExit(f"FAIL: --interactive on a pipe: exit {child.returncode}, then {rest!r}; stderr {stderr!r}")
    print("--interactive on a pipe: each line answered while stdin is open")

    # A plain pipe is not a terminal: the prompts are read to the end and checked before any answer, so
    # a bad second line leaves no answer to the first; no hint.
    piped = subprocess.run([infer, "--model", model, "--top-k", "1", "--threads", "1"],
                           input="the cat [MASK] on the mat.\nthe cat sat.\n", capture_output=True, text=True,
                           timeout=120)
    if piped.returncode != 1 or piped.stdout or "Ctrl-D" in piped.stderr or "<stdin>:2" not in piped.stderr:
        raise SystemExit(f"FAIL: piped stdin: exit {piped.returncode}\n{piped.stdout}\n{piped.stderr}")
    print("piped stdin: read whole, no hint")
    print("PASS")


if __name__ == "__main__":
    sys.exit(main())
