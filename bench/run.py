"""Run every benchmark in bench/ and write JSON + a markdown table.

    python -m bench.run [--quick] [-k EXPR] [--merge] [--out bench/results]

Results go to ``bench/results/<device>/`` (``results.json``: pytest-benchmark's
raw JSON; ``results.md``: one table per group with each member's median time
relative to the group's baseline member, measured side by side in this run).
Ratios use the median time, which one slow round (first-touch page faults,
allocator growth) does not move; mean and standard deviation are shown too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_name() -> str:
    """``cuda-<gpu name>`` or ``cpu-<processor model>-<n>c``, as a folder name."""
    import torch

    if torch.cuda.is_available():
        name = "cuda-" + torch.cuda.get_device_name(0)
    else:
        model = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1]
                    break
        except OSError:
            pass
        name = f"cpu-{model}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(data: dict) -> str:
    """One table per benchmark group; median-time ratios against the member marked ``baseline``."""
    groups: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    info = data.get("machine_info", {})
    lines = [
        f"# gainx benchmarks on {data['device']}",
        "",
        f"python {info.get('python_version', '?')}, {info.get('cpu', {}).get('brand_raw', '')}; "
        f"`python -m bench.run{' --quick' if data['quick'] else ''}`",
        "",
    ]
    for group, members in groups.items():
        base = next((m for m in members if m["extra_info"].get("baseline")), None)
        lines += [
            f"## {group}",
            "",
            *(
                [f"Kept from an earlier run ({kept['datetime']}, `--merge`).", ""]
                if (kept := data.get("merged", {}).get(group))
                else []
            ),
            "| benchmark | median (ms) | mean (ms) | stddev (ms) | rounds | time / baseline | speedup | details |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in members:
            st = m["stats"]
            extra = {k: v for k, v in m["extra_info"].items() if k != "baseline"}
            ratio = st["median"] / base["stats"]["median"] if base else float("nan")
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
            name = m["name"] + (" (baseline)" if m is base else "")
            lines.append(
                f"| {name} | {st['median'] * 1e3:.3f} | {st['mean'] * 1e3:.3f} | {st['stddev'] * 1e3:.3f} "
                f"| {st['rounds']} | {_fmt(ratio)} | {_fmt(1 / ratio if ratio == ratio else ratio)} | {details} |"
            )
        lines.append("")
    return "\n".join(lines)


def merge(old: dict, new: dict) -> dict:
    """``new`` plus the benchmarks of ``old`` whose group ``new`` did not measure (listed first, in their order).

    The kept groups' run (date, commit, quick or not) goes to ``merged[group]``, as the top-level fields
    describe ``new``'s run only.
    """
    measured = {b["group"] for b in new["benchmarks"]}
    kept = [b for b in old["benchmarks"] if b["group"] not in measured]
    merged = {g: v for g, v in old.get("merged", {}).items() if g not in measured}
    run = {"datetime": old.get("datetime"), "commit_info": old.get("commit_info"), "quick": old.get("quick")}
    for b in kept:
        merged.setdefault(b["group"], run)
    return {**new, "benchmarks": kept + new["benchmarks"], "merged": merged}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (GAINX_BENCH_QUICK=1)")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression to run a subset")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the groups of an existing results.json that this run did not measure (with -k)",
    )
    args = parser.parse_args(argv)
    from gainx.ops import extension

    if extension.load() is None:
        print(
            "note: gainx._C is not importable from this checkout, so the extension benchmarks will be skipped; "
            "build it in place first: python setup.py build_ext --inplace",
            file=sys.stderr,
        )
    env = dict(os.environ)
    if args.quick:
        env["GAINX_BENCH_QUICK"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "bench"),
            "-o",
            "python_files=bench_*.py",
            "-p",
            "no:cacheprovider",
            "--benchmark-only",
            "--benchmark-warmup=on",
            "--benchmark-warmup-iterations=1",
            f"--benchmark-json={raw}",
            "-q",
        ]
        if args.select:
            cmd += ["-k", args.select]
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        if not raw.exists():
            print("no benchmark results were produced", file=sys.stderr)
            return code or 1
        data = json.loads(raw.read_text())
    data["device"], data["quick"] = device_name(), args.quick
    from gainx.io import atomic_write_text

    out = Path(args.out) / data["device"]
    if args.merge and (out / "results.json").exists():
        data = merge(json.loads((out / "results.json").read_text()), data)
    atomic_write_text(out / "results.json", json.dumps(data, indent=1))
    atomic_write_text(out / "results.md", markdown(data))
    print(f"wrote {out / 'results.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
