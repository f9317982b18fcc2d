#!/usr/bin/env python3
"""Rewrites a kernels/cuda/*.cu file into C++ the host compiler takes with tests/kernel_emu/cuda_emu.h
force-included (the kernel emulation; tests/kernel_emu/README.md). Only the constructs that are
CUDA syntax rather than functions change; every line keeps its number (a #line directive names the
original file, so compiler messages and __FILE__ point at the .cu):

  kernel<T><<<grid, block[, smem[, stream]]>>>(args);
      -> ::emu::launch("kernel<T>", key, [](const auto&... a) { kernel<T>(a...); },
                       grid, block, smem, stream, args);
  extern __shared__ __align__(N) TYPE name[];
      -> TYPE* name = static_cast<TYPE*>(::emu::dynamic_shared());
  __shared__ TYPE name[A][B];
      -> auto& name = ::emu::block_shared<TYPE[A][B]>([] {});   (one object per block and declaration)
  __global__ void __launch_bounds__(N) kernel(params) {
      -> __global__ void kernel(params) { ::emu::check_launch_bounds(N);   (a launch above N faults)

Usage: transform_cu.py INPUT.cu OUTPUT.cpp [DISPLAY_PATH]. Fails (non-zero, naming the line) on a
launch or __shared__ declaration it cannot parse, so nothing is silently left per-thread.
"""
import re
import sys

LAUNCH_HEAD = re.compile(r"([A-Za-z_]\w*(?:\s*<[^<>;(){}]*>)?)\s*<<<")
DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*(?:\s+[A-Za-z_]\w*)*)\s+(\w+)\s*\[\s*\]\s*;")
STATIC_SHARED = re.compile(
    r"__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>, ]*?)\s+(\w+)\s*((?:\[[^\]\n]+\]\s*)*);")


def fail(path, text, pos, what):
    line = text.count("\n", 0, pos) + 1
    sys.exit(f"{path}:{line}: transform_cu.py: {what}")


def split_top_level(text):
    """Splits at commas outside (), [] and {} nesting (template arguments in a launch configuration
    need parentheses around them)."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def matching(text, open_pos, opener, closer):
    depth = 0
    for i in range(open_pos, len(text)):
        if text[i] == opener:
            depth += 1
        elif text[i] == closer:
            depth -= 1
            if depth == 0:
                return i
    return -1


def keep_lines(original, replacement):
    """The replacement followed by as many newlines as it removed, so later lines keep their numbers."""
    missing = original.count("\n") - replacement.count("\n")
    return replacement + "\n" * max(missing, 0)


def rewrite_launches(path, text):
    out, pos, count = [], 0, 0
    while True:
        m = LAUNCH_HEAD.search(text, pos)
        if not m:
            break
        config_end = text.find(">>>", m.end())
        if config_end < 0:
            fail(path, text, m.start(), "a <<< without >>>")
        config = split_top_level(text[m.end():config_end])
        if not 2 <= len(config) <= 4:
            fail(path, text, m.start(), "a launch configuration needs 2 to 4 values")
        config += ["0", "nullptr"][len(config) - 2:]
        paren = config_end + 3
        while paren < len(text) and text[paren].isspace():
            paren += 1
        if paren >= len(text) or text[paren] != "(":
            fail(path, text, m.start(), "a launch without an argument list")
        close = matching(text, paren, "(", ")")
        if close < 0 or not text[close + 1:].lstrip().startswith(";"):
            fail(path, text, m.start(), "cannot find the end of the launch")
        end = text.index(";", close) + 1
        kernel = " ".join(m.group(1).split())
        args = text[paren + 1:close].strip()
        # The kernel is called through a generic lambda, so template arguments the launch leaves to
        # deduction (CUDA deduces them from the arguments) are deduced here too. The kernel's address
        # keys its cudaFuncSetAttribute limit; only launches with dynamic shared memory need it.
        key = "nullptr" if config[2] == "0" else f"reinterpret_cast<const void*>(&{kernel})"
        call = f"[](const auto&... emu_args) {{ {kernel}(emu_args...); }}"
        pieces = [f'"{kernel}"', key, call] + config + ([args] if args else [])
        replacement = "::emu::launch(" + ", ".join(" ".join(p.split()) for p in pieces) + ");"
        out.append(text[pos:m.start()])
        out.append(keep_lines(text[m.start():end], replacement))
        pos = end
        count += 1
    out.append(text[pos:])
    return "".join(out), count


def rewrite_launch_bounds(path, text):
    """__launch_bounds__(N) kernel(params) { -> kernel(params) { ::emu::check_launch_bounds(N);"""
    out, pos, count = [], 0, 0
    while True:
        start = text.find("__launch_bounds__(", pos)
        if start < 0:
            break
        open_paren = start + len("__launch_bounds__")
        close = matching(text, open_paren, "(", ")")
        params = text.find("(", close + 1)
        params_end = matching(text, params, "(", ")") if params >= 0 else -1
        body = params_end + 1
        while 0 < body < len(text) and text[body].isspace():
            body += 1
        if close < 0 or params_end < 0 or body >= len(text) or text[body] != "{" or ";" in text[close:params]:
            fail(path, text, start, "cannot find the kernel body after __launch_bounds__")
        bound = " ".join(text[open_paren + 1:close].split()).split(",")[0]
        out.append(text[pos:start])
        out.append(keep_lines(text[start:close + 1], ""))
        out.append(text[close + 1:body + 1] + f" ::emu::check_launch_bounds({bound});")
        pos = body + 1
        count += 1
    out.append(text[pos:])
    return "".join(out), count


def rewrite_shared(path, text):
    text, dynamic = DYNAMIC_SHARED.subn(
        lambda m: f"{m.group(1)}* {m.group(2)} = static_cast<{m.group(1)}*>(::emu::dynamic_shared());", text)

    def static(m):
        dims = "".join(m.group(3).split())
        return keep_lines(m.group(0), f"auto& {m.group(2)} = ::emu::block_shared<{m.group(1).strip()}{dims}>([] {{}});")

    text, statics = STATIC_SHARED.subn(static, text)
    left = re.search(r"\b__shared__\b", re.sub(r"//[^\n]*", "", text))
    if left:
        fail(path, text, left.start(), "a __shared__ declaration this script cannot parse")
    return text, dynamic + statics


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    display = sys.argv[3] if len(sys.argv) == 4 else source
    text = open(source, encoding="utf-8").read()
    text, launches = rewrite_launches(source, text)
    text, shared = rewrite_shared(source, text)
    text, bounds = rewrite_launch_bounds(source, text)
    header = (f"// Generated from {display} by tests/kernel_emu/transform_cu.py ({launches} launches, {shared} shared, "
              f"{bounds} launch bounds).\n")
    with open(target, "w", encoding="utf-8") as f:
        f.write(header + f'#line 1 "{display}"\n' + text)


if __name__ == "__main__":
    main()
