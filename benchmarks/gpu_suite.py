#!/usr/bin/env python3
"""One command that checks the kernels on a CUDA GPU and records what it finds (issue 8, item 7)::

    python benchmarks/gpu_suite.py --out DIR              # on one CUDA GPU, under 8 minutes
    python benchmarks/gpu_suite.py --quick --out DIR      # fewer cases, about half the time
    python benchmarks/gpu_suite.py --sections accuracy,prefill --out DIR
    python benchmarks/gpu_suite.py --dry-run --out DIR    # CPU, Triton interpreter, tiny shapes, seconds

It runs a list of sections (:data:`SECTION_MODULES`; each a ``run_<name>_section`` function, contract in
``gpu_suite_common.py``), writes every section's rows to ``DIR/gpu_suite.json`` and renders each as a markdown
table in ``DIR/gpu_suite.md`` (both rewritten after every section, so a run cut short keeps what finished),
under a header with the device, its SM count, the torch/triton versions, the date, the git commit, the
measured copy bandwidth and the datasheet peak. A section that raises becomes a failure row and the suite goes
on; the exit code is 1 when any section failed. Progress goes to stderr, the final tables to stdout.

Runs from a plain checkout (no install needed: ``gpu_suite_paths.py``); needs torch, triton, numpy, einops,
tqdm and pytest, and uses fla-core when it imports.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_suite_paths import REPO_ROOT, use_source_tree  # noqa: E402

use_source_tree()

#: (name, module, function, share of the time budget in seconds on a GPU, what it measures), in run order
SECTION_MODULES = (
    ("tests", "gpu_suite_tests", "run_tests_section", 210.0,
     "kernel and model-through-Triton test files, pytest in a subprocess (GPU-only tests included)"),
    ("accuracy", "gpu_suite_accuracy", "run_accuracy_section", 60.0,
     "kernels vs float64 at production shapes, fp32 and bf16, outputs, states and gradients"),
    ("prefill", "gpu_suite_prefill", "run_prefill_section", 180.0,
     "operator timings forward and forward+backward per channel shape, vs fla chunk_simple_gla"),
    ("decode", "gpu_suite_decode", "run_decode_section", 90.0,
     "fused decode step per-op µs and GB/s, model.step eager vs graph, launches and host syncs per step"),
    ("resources", "gpu_suite_resources", "run_resources_section", 60.0,
     "registers, spills and shared memory of every prefill kernel variant for the device's architecture"),
)
DEFAULT_BUDGET_S = 450.0  # 7.5 minutes: the 8-minute target less start-up and the header
QUICK_BUDGET_S = 240.0
JSON_NAME = "gpu_suite.json"
MARKDOWN_NAME = "gpu_suite.md"


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[..., List[Dict[str, Any]]]
    budget_s: float
    about: str = ""


def default_sections() -> List[Section]:
    """Import the section modules (after the environment is set: TRITON_INTERPRET must precede triton)."""
    out = []
    for name, module, function, budget, about in SECTION_MODULES:
        out.append(Section(name, getattr(importlib.import_module(module), function), budget, about))
    return out


# ------------------------------------------------------------------------------------------------ header
def git_commit() -> Optional[str]:
    """Short commit of the checkout (+ " + local changes" when tracked files differ), None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + (" + local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_header(device, dry_run: bool, quick: bool, budget_s: float, commit: Optional[str]) -> Dict[str, Any]:
    import torch

    from gpu_suite_common import datasheet_bandwidth_gbs, l2_cache_bytes, measure_copy_bandwidth

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, sm_count = props.name, props.multi_processor_count
        memory_gb = round(props.total_memory / 1e9, 1)
    else:
        name, sm_count, memory_gb = f"CPU ({platform.processor() or platform.machine()})", None, None
    copy_gbs = measure_copy_bandwidth(device, dry_run)
    datasheet = datasheet_bandwidth_gbs(name) if device.type == "cuda" else None
    return {
        "device": name,
        "sm_count": sm_count,
        "memory_GB": memory_gb,
        "L2_MB": round(l2_cache_bytes(device) / 2 ** 20, 1) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "fla_core": _version("fla-core"),
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "commit": commit if commit is not None else git_commit(),
        "copy_GBps_measured": round(copy_gbs, 1),
        "datasheet_GBps": datasheet,
        "peak_GBps_used": datasheet if datasheet is not None else round(copy_gbs, 1),
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "dry_run": dry_run,
        "quick": quick,
        "budget_s": budget_s,
    }


# ------------------------------------------------------------------------------------------------ output
def _scalar(value: Any) -> Any:
    """Rows hold JSON scalars: tensors/numpy scalars become Python numbers, non-finite floats strings."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def clean_rows(rows: Any) -> List[Dict[str, Any]]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"a section must return a list of dicts, got {type(rows).__name__}")
    return [{str(k): _scalar(v) for k, v in row.items()} for row in rows]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Columns = the rows' keys in first-seen order; a row without a key leaves the cell empty."""
    if not rows:
        return "(no rows)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(report: Dict[str, Any]) -> str:
    header = report["header"]
    parts = ["# fuxi-linear GPU suite\n", markdown_table([{"": k, "value": v} for k, v in header.items()])]
    for sec in report["sections"]:
        status = sec["status"] + (f", {sec['seconds']:.0f} s" if sec.get("seconds") is not None else "")
        parts.append(f"\n## {sec['name']} ({status})\n")
        if sec.get("about"):
            parts.append(f"\n{sec['about']}\n")
        parts.append("\n" + markdown_table(sec["rows"]))
    if report["failed"]:
        parts.append(f"\n**Failed sections: {', '.join(report['failed'])}**\n")
    return "".join(parts)


def write_report(report: Dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_NAME).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out_dir / MARKDOWN_NAME).write_text(render_markdown(report))


# ------------------------------------------------------------------------------------------------- suite
def _failure_row(err: BaseException) -> Dict[str, Any]:
    frames = traceback.extract_tb(err.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else None
    return {"status": "failed", "error": f"{type(err).__name__}: {err}"[:1000], "where": where}


def run_suite(sections: Sequence[Section], out_dir: Path, device, dry_run: bool, quick: bool = False,
              budget_s: float = DEFAULT_BUDGET_S, commit: Optional[str] = None,
              log: Optional[Callable[[str], None]] = None) -> int:
    """Run ``sections`` in order on ``device``, writing the report after each; returns the exit code."""
    from tqdm.auto import tqdm

    import gpu_suite_common as common

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    start = time.monotonic()
    header = device_header(device, dry_run, quick, budget_s, commit)
    log(f"[suite] {header['device']} | SMs {header['sm_count']} | torch {header['torch']} | triton "
        f"{header['triton']} | copy {header['copy_GBps_measured']} GB/s | datasheet {header['datasheet_GBps']}")
    report: Dict[str, Any] = {"header": header, "sections": [], "failed": []}
    # Each section gets its share of the budget; time one leaves unused goes to the next.
    scale = min(1.0, budget_s / max(sum(s.budget_s for s in sections), 1e-9))
    planned_end = start
    bar = tqdm(sections, desc="gpu suite", file=sys.stderr, disable=None, dynamic_ncols=True)
    try:
        for section in bar:
            bar.set_postfix_str(section.name)
            planned_end += section.budget_s * scale
            # updated in place: the section modules hold a reference to this object
            common.SETTINGS.__dict__.update(quick=quick, section_deadline=min(planned_end, start + budget_s),
                                            copy_gbs=header["copy_GBps_measured"],
                                            datasheet_gbs=header["datasheet_GBps"])
            log(f"[suite] section {section.name}: {common.time_left():.0f} s")
            t0 = time.monotonic()
            entry: Dict[str, Any] = {"name": section.name, "about": section.about}
            try:
                rows = clean_rows(section.run(device, dry_run, header["peak_GBps_used"], log))
                if not rows:
                    raise RuntimeError(f"section {section.name} returned no rows")
                entry.update(status="ok", rows=rows)
            except Exception as err:
                kept = clean_rows(getattr(err, "rows", None) or [])
                entry.update(status="failed", rows=kept + [_failure_row(err)],
                             traceback="".join(traceback.format_exception(type(err), err, err.__traceback__)))
                report["failed"].append(section.name)
                log(f"[suite] section {section.name} FAILED: {type(err).__name__}: {err}")
            entry["seconds"] = round(time.monotonic() - t0, 1)
            report["sections"].append(entry)
            write_report(report, out_dir)
    finally:
        bar.close()
        common.SETTINGS.__dict__.update(vars(common.SuiteSettings()))  # no deadline left behind
    report["total_seconds"] = round(time.monotonic() - start, 1)
    write_report(report, out_dir)
    print(render_markdown(report))
    print(f"wrote {out_dir / JSON_NAME} and {out_dir / MARKDOWN_NAME} in {report['total_seconds']:.0f} s"
          + (f"; FAILED: {', '.join(report['failed'])}" if report["failed"] else ""))
    return 1 if report["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    names = [s[0] for s in SECTION_MODULES]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gpu-suite",
                   help=f"output folder for {JSON_NAME} and {MARKDOWN_NAME} (default: runs/gpu-suite)")
    p.add_argument("--sections", default=",".join(names), help=f"comma list, a subset of {','.join(names)}")
    p.add_argument("--quick", action="store_true", help="fewer cases (bf16 timings only), shorter timings")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"time budget in seconds shared by the sections (default {DEFAULT_BUDGET_S:.0f}, "
                        f"--quick {QUICK_BUDGET_S:.0f})")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, Triton interpreter, tiny shapes: checks the suite itself, measures nothing useful")
    p.add_argument("--device", default="cuda", help="CUDA device (default cuda); ignored by --dry-run")
    p.add_argument("--commit", default=None, help="commit to record when the checkout has no git metadata")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    known = [s[0] for s in SECTION_MODULES]
    unknown = [s for s in wanted if s not in known]
    if unknown or not wanted:
        parser.error(f"--sections: unknown {unknown or 'empty list'}; choose from {','.join(known)}")
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported (the sections import it)
    elif os.environ.pop("TRITON_INTERPRET", None) == "1":
        print("[suite] TRITON_INTERPRET=1 unset: a GPU run compiles the kernels", file=sys.stderr)
    import torch

    if args.dry_run:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device here (use --dry-run to check the suite on a CPU)", file=sys.stderr)
            return 2
        device = torch.device(args.device)
        if device.type != "cuda":
            parser.error(f"--device must be a CUDA device, got {args.device!r} (use --dry-run for the CPU)")
        if device.index is None:  # set_device and the report want an index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    sections = [s for s in default_sections() if s.name in wanted]
    budget = args.budget_s if args.budget_s is not None else (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
    return run_suite(sections, args.out, device, args.dry_run, args.quick, budget, args.commit or None)


if __name__ == "__main__":
    sys.exit(main())
