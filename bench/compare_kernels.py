#!/usr/bin/env python3
"""Two bench_kernels JSON files side by side: what a kernel change bought on the same device.

    python3 bench/compare_kernels.py BASELINE.json NEW.json [--any-device] [--filter TEXT]

Per case in both files (status ok in both): median ms before and after, the speedup (before / after,
> 1 is faster), and the percentage of the ceiling before and after (each file's own ceilings, measured
in its own run). Then the cases only one file has, and, from NEW alone, the pairs that time one op
two ways in the same run (`<case>` beside `<case>_dense`: the MLM decoder with its logits rows padded
as the engine runs it, and dense; `<op>/...` beside `<op>_baseline/...`: a specialised kernel and the
general one it replaced, KernelPaths::baseline(); the ratio is the second's time over the first's,
above 1 where the first is faster). Medians of different runs: differences of a few per cent are noise
(the same case moved by up to ~3% between two calls on one H200).

The files must come from the same device (the JSON's `device`), else it exits 2 saying so
(--any-device compares anyway). scripts/gpu_check.sh runs it against the last device run's JSON
kept under bench/results/ when the device names match.
"""
import argparse
import json
import sys


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        sys.exit(f"compare_kernels: {path}: {error}")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        sys.exit(f"compare_kernels: {path}: not a bench_kernels JSON (no 'cases' list)")
    cases = {}
    for case in data["cases"]:
        if isinstance(case, dict) and case.get("status") == "ok" and isinstance(case.get("median_ms"), (int, float)):
            cases[case["name"]] = case
    return data, cases


def percent(case):
    value = case.get("percent_of_ceiling")
    return f"{value:5.1f}%" if isinstance(value, (int, float)) else "     -"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline")
    parser.add_argument("new")
    parser.add_argument("--any-device", action="store_true", help="compare files from different devices")
    parser.add_argument("--filter", default="", help="only cases whose name contains this text")
    args = parser.parse_args(argv)

    base_data, base = load(args.baseline)
    new_data, new = load(args.new)
    base_device, new_device = base_data.get("device", "?"), new_data.get("device", "?")
    if base_device != new_device and not args.any_device:
        print(f"compare_kernels: {args.baseline} is from {base_device!r}, {args.new} from {new_device!r}: "
              "medians of different devices do not compare (--any-device to print them anyway)", file=sys.stderr)
        return 2
    print(f"baseline: {args.baseline} ({base_device})")
    print(f"new:      {args.new} ({new_device})")

    names = [name for name in new if name in base and args.filter in name]
    width = max([len(name) for name in names] + [4])
    print(f"{'case':<{width}}  {'before ms':>10}  {'after ms':>10}  {'speedup':>8}  {'ceiling before -> after':>23}")
    for name in names:
        before, after = base[name]["median_ms"], new[name]["median_ms"]
        speedup = f"{before / after:7.2f}x" if after > 0 else "       -"
        print(f"{name:<{width}}  {before:10.4f}  {after:10.4f}  {speedup}  "
              f"{percent(base[name]):>13} -> {percent(new[name])}")

    only_new = sorted(name for name in new if name not in base and args.filter in name)
    only_base = sorted(name for name in base if name not in new and args.filter in name)
    if only_new:
        print("only in new: " + ", ".join(only_new))
    if only_base:
        print("only in baseline: " + ", ".join(only_base))

    pairs = [(name[: -len("_dense")], name) for name in new if name.endswith("_dense") and args.filter in name]
    pairs += [(name.replace("_baseline/", "/", 1), name) for name in new if "_baseline/" in name and args.filter in name]
    for plain, other in sorted(pairs):
        if plain in new and new[plain]["median_ms"] > 0:
            ratio = new[other]["median_ms"] / new[plain]["median_ms"]
            print(f"same run: {plain} {new[plain]['median_ms']:.4f} ms vs {other} {new[other]['median_ms']:.4f} ms: "
                  f"{ratio:.2f}x ({percent(new[plain]).strip()} vs {percent(new[other]).strip()} of the ceiling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
