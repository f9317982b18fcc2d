"""The tiny Korean corpus the end-to-end conformance tests train on (the same text as the C++
trainer fixture, tests/trainer_fixture.h): 160 documents of 3-6 sentences, blank-line separated, and
the tokenizer and NSP shards built from it with our CLIs."""
import os
import subprocess
import sys

SENTENCES = ["이순신은 조선 중기의 무신이다.", "한산도 대첩에서 일본 수군을 크게 물리쳤다.",
             "그는 전라좌도 수군절도사로 임명되었다.", "거북선을 만들어 왜군을 막았다.", "노량 해전에서 전사하였다.",
             "세종은 훈민정음을 창제하였다.", "집현전 학자들이 한글 연구를 도왔다.", "BERT는 마스크 언어 모델로 학습된다."]


FAILURES = []  # the messages of the checks that failed, in order


def check(ok, message):
    """Prints an ok / FAIL line; a failure is also kept in FAILURES (the test exits non-zero on any)."""
    print(("ok    " if ok else "FAIL  ") + message, flush=True)
    if not ok:
        FAILURES.append(message)


def run(cmd):
    """Runs a command; exits with its output if it fails."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def build(bin_dir, work, valid_fraction="0.1"):
    """corpus.txt -> tok/ (vocab 300) -> shards/ (seq 32, dupe factor 2) under `work`."""
    path = lambda name: os.path.join(work, name)
    with open(path("corpus.txt"), "w") as f:
        for d in range(160):
            for s in range(3 + d % 4):
                f.write(SENTENCES[(d * 3 + s) % 8] + "\n")
            f.write("\n")
    run([os.path.join(bin_dir, "bert_tokenizer"), "train", "--input", path("corpus.txt"), "--out", path("tok"),
         "--vocab-size", "300", "--quiet"])
    run([os.path.join(bin_dir, "bert_prepare"), "build", "--tokenizer", path("tok"), "--input", path("corpus.txt"),
         "--out", path("shards"), "--max-seq-len", "32", "--dupe-factor", "2", "--valid-fraction", valid_fraction,
         "--seed", "3", "--quiet"])
