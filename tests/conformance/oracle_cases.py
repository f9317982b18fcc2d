"""The Python side of tests/oracle_cases.h: the conformance scripts that compare a reader of ours with
Python's write their cases to a file, run a hidden Catch test case that answers each, and read back
one line a case ("ok ..." or "error <message>")."""
import os
import subprocess


def answer_cases(binary, tag, cases_env, out_env, work, cases):
    """Runs `binary tag` on `cases` (bytes each). Returns (problems, answers): problems lists what went
    wrong with the run itself (it failed, answers are not valid UTF-8, or their count is off)."""
    cases_path = os.path.join(work, "cases.bin")
    with open(cases_path, "wb") as f:
        for case in cases:
            f.write(str(len(case)).encode() + b"\n" + case)
    out_path = os.path.join(work, "answers.txt")
    env = dict(os.environ, **{cases_env: cases_path, out_env: out_path})
    run = subprocess.run([binary, tag], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        return [f"{os.path.basename(binary)} {tag} failed: {run.stdout[-300:]} {run.stderr[-300:]}"], []
    with open(out_path, "rb") as f:
        raw = f.read().split(b"\n")[:-1]
    answers = [line.decode("utf-8", "replace") for line in raw]
    problems = []
    broken = [line for line in raw if line.decode("utf-8", "replace").encode() != line]
    if broken:
        problems.append(f"answers that are not valid UTF-8: {broken[:3]}")
    if len(answers) != len(cases):
        problems.append(f"{len(answers)} answers for {len(cases)} cases")
    return problems, answers


def mutate_chars(r, text, alphabet):
    """`text` with 1-3 random characters inserted from `alphabet`, deleted or replaced by one of it."""
    chars = list(text)
    for _ in range(r.randint(1, 3)):
        op = r.random()
        at = r.randint(0, len(chars))
        if op < 0.4:
            chars.insert(at, r.choice(alphabet))
        elif chars and op < 0.7:
            del chars[min(at, len(chars) - 1)]
        elif chars:
            chars[min(at, len(chars) - 1)] = r.choice(alphabet)
    return "".join(chars)
