#!/usr/bin/env python3
"""Measure the errors of the numerical tests and write ``tests/measured_errors.json`` (their bounds' basis).

    python tests/measure_errors.py                     # every test file that calls check_errors (a few minutes)
    python tests/measure_errors.py --files tests/test_kernels.py   # only these; other files' entries are kept
    python tests/measure_errors.py --compare           # measure, print the ratios to the recorded values, write nothing

It runs the files with pytest and ``FUXI_RECORD_ERRORS`` set (:mod:`error_bounds`: every ``check_errors`` call
appends what it measured and applies no bound), keeps the largest value per test and quantity, writes the file
with the date, commit, versions and command, and prints the summary of the kernel comparisons per dtype and decay
mode as a markdown table (the table in ``benchmarks/RESULTS.md`` and ``tests/measured_errors.json``'s
``summary``). On a machine without a GPU the kernels run in the Triton interpreter (``tests/conftest.py``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from error_bounds import MEASURED_FILE, RECORD_ENV, bound_from  # noqa: E402

#: the columns of the summary table: quantity names of ``kernel_helpers.check_against_math``
COLUMNS = (("o", ("o",)), ("final state", ("final_state",)), ("dq", ("dq",)), ("dk", ("dk",)), ("dv", ("dv",)),
           ("dg", ("dg", "dg_gamma")), ("d initial state", ("dinitial_state",)))


def files_with_checks() -> list:
    """Test files that call ``check_errors`` (directly or through ``check_against_math``)."""
    return sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("test_*.py")
                  if "check_errors(" in p.read_text() or "check_against_math(" in p.read_text())


def run(files: list) -> list:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as tmp:
        path = tmp.name
    env = dict(os.environ, **{RECORD_ENV: path})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    print("$", " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    os.unlink(path)
    if proc.returncode != 0:
        sys.exit(f"pytest failed (exit {proc.returncode}): the errors of failing tests are not recorded")
    return records


def aggregate(records: list) -> tuple:
    errors = defaultdict(dict)
    tags = {}
    for r in records:
        prev = errors[r["test"]].get(r["name"], 0.0)
        errors[r["test"]][r["name"]] = max(prev, r["error"])
        if r["tags"]:
            tags[r["test"]] = r["tags"]
    return {t: dict(sorted(v.items())) for t, v in sorted(errors.items())}, tags


def summary(errors: dict, tags: dict) -> list:
    """Per (dtype, decay mode) of the kernel-vs-float64 comparisons: the smallest and largest error of each
    quantity over the tests, and the test count."""
    groups = defaultdict(list)
    for test, tg in tags.items():
        if tg.get("kind") == "kernel":
            groups[(tg["dtype"], tg["decay"])].append(errors[test])
    rows = []
    order = {"fp64": 0, "fp32": 1, "bf16": 2, "fp16": 3}
    for (dtype, decay), tests in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        row = {"dtype": dtype, "decay": decay, "tests": len(tests)}
        for column, names in COLUMNS:
            values = [e[n] for e in tests for n in names if n in e]
            row[column] = [min(values), max(values)] if values else None
        rows.append(row)
    return rows


def markdown(rows: list) -> str:
    head = ["dtype", "decay", "tests"] + [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dtype"], r["decay"], str(r["tests"])]
        for c, _ in COLUMNS:
            v = r[c]
            cells.append("" if v is None else f"{v[0]:.1e} – {v[1]:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":!tests/{MEASURED_FILE.name}"],  # the file itself is what this run changes
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head.stdout.strip() + (" + local changes" if dirty else "")
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", help="test files to measure (default: every file with checks)")
    parser.add_argument("--compare", action="store_true", help="print new / recorded ratios, write nothing")
    args = parser.parse_args(argv)
    files = args.files or files_with_checks()
    # the GPU suite's dry run (tests/test_gpu_suite.py) runs the kernel tests WITH their bounds in a child
    # process: it is measured after the others, once their bounds exist
    suite = [f for f in files if Path(f).name == "test_gpu_suite.py"]
    records = run([f for f in files if f not in suite]) if len(suite) < len(files) else []
    if suite and records and not args.compare:
        write(files, args, *aggregate(records), partial=True)
    errors, tags = aggregate(records + (run(suite) if suite else []))
    old = json.loads(MEASURED_FILE.read_text()) if MEASURED_FILE.exists() else {"errors": {}, "tags": {}}
    if args.compare:
        for test, values in errors.items():
            for name, e in values.items():
                before = old["errors"].get(test, {}).get(name)
                ratio = "new" if before is None else f"{e / before:.2f}x" if before else "0 -> %.2g" % e
                flag = "  ABOVE BOUND" if before is not None and e > bound_from(before) else ""
                print(f"{test} {name}: {e:.3g} ({ratio}){flag}")
        return 0
    rows = write(files, args, errors, tags)
    print(markdown(rows))
    return 0


def write(files: list, args, errors: dict, tags: dict, partial: bool = False) -> list:
    """Merge the new entries into the file (entries of files not measured now are kept) and write it; returns
    the summary rows."""
    import torch
    import triton

    old = json.loads(MEASURED_FILE.read_text()) if MEASURED_FILE.exists() else {"errors": {}, "tags": {}}
    measured_files = {Path(f).name for f in files}
    kept = {t: v for t, v in old["errors"].items() if t.split("::")[0] not in measured_files or partial}
    kept_tags = {t: v for t, v in old.get("tags", {}).items() if t.split("::")[0] not in measured_files or partial}
    errors, tags = dict(sorted({**kept, **errors}.items())), dict(sorted({**kept_tags, **tags}.items()))
    rows = summary(errors, tags)
    data = {
        "about": "Errors measured by the numerical tests (tests/error_bounds.py): each test's bound is "
                 "BOUND_FACTOR x its entry here. Written by tests/measure_errors.py.",
        "measured_with": {
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "commit": git_commit(),
            "command": "python tests/measure_errors.py" + (" --files " + " ".join(args.files) if args.files else ""),
            "files": files,
            "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available()
            else f"CPU ({platform.machine()}), Triton interpreter",
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        },
        "summary": rows,
        "tags": tags,
        "errors": errors,
    }
    MEASURED_FILE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {MEASURED_FILE} ({sum(len(v) for v in errors.values())} errors of {len(errors)} tests)",
          file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(main())
