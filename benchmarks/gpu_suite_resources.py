"""GPU suite section ``resources``: registers, spills, stack and shared memory of every prefill kernel variant,
compiled for the device's own architecture with the Triton the suite runs on (``fuxi_linear.kernels.resources``).

The compiles run in a child interpreter without ``TRITON_INTERPRET`` (an interpreted ``@triton.jit`` function
cannot be compiled), importing this checkout (``gpu_suite_paths``). On a CUDA device the target is its compute
capability, one child per kernel name running in parallel (each compile is single-threaded); without one (the
dry run) sm_90, and only the temporal forward in float32, which exercises the subprocess, the JSON hand-over and
the rows in a few seconds. A forward variant that spills fails the section
(the backward's spills are reported, not failed: see ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import torch

from gpu_suite_common import Log, Row, SectionError, time_left
from gpu_suite_paths import BENCH_DIR, REPO_ROOT

#: Code for ``python -c``: import this checkout, then run the resources command with argv.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, {bench!r}); import gpu_suite_paths; gpu_suite_paths.use_source_tree(); "
    "from fuxi_linear.kernels import resources; raise SystemExit(resources.main(sys.argv[1:]))"
).format(bench=str(BENCH_DIR))
DRY_RUN_ARGS = ("--kernels", "fwd", "--channels", "temporal", "--dtypes", "fp32")
#: seconds the compiles may take at most (every variant takes ~1-3 s on a CPU core)
MAX_SECONDS = 240.0


def _arch(device: torch.device) -> int:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90


def _compile_reports(arch: int, jobs: List[List[str]], limit: float) -> List[dict]:
    """Run the resources command once per argument list, all at once; returns their JSON reports."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"resources{i}.json" for i in range(len(jobs))]
        procs = [subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, "--arch", str(arch), "--json", str(out), *args],
                                  cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for out, args in zip(outs, jobs)]
        errors = []
        for proc, args in zip(procs, jobs):
            try:
                _, err = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"the kernel compiles did not finish in {limit:.0f} s") from None
            if proc.returncode != 0:
                errors.append(f"{' '.join(args)} (exit {proc.returncode}):\n{err[-2000:]}")
        if errors:
            raise RuntimeError("the resources command failed: " + "\n".join(errors))
        return [json.loads(out.read_text()) for out in outs]


def run_resources_section(device: torch.device, dry_run: bool, peak_gbs: Optional[float], log: Log) -> List[Row]:
    from fuxi_linear.kernels.resources import KERNELS

    arch = _arch(device)
    limit = max(1.0, min(MAX_SECONDS, time_left()))
    jobs = [list(DRY_RUN_ARGS)] if dry_run else [["--kernels", kernel] for kernel in KERNELS]
    log(f"[resources] compiling for sm_{arch}{' (dry run: temporal forward, fp32)' if dry_run else ''} in "
        f"{len(jobs)} processes, limit {limit:.0f} s")
    rows = [{"arch": f"sm_{report['arch']}", "triton": report["triton"], **r}
            for report in _compile_reports(arch, jobs, limit) for r in report["rows"]]
    spilled = [f"{r['kernel']} {r['channel']} {r['dtype']}{' split' if r['split'] else ''}"
               for r in rows if r["kernel"] == "fwd" and (r["spill_stores"] or r["spill_loads"])]
    log(f"[resources] {len(rows)} variants, {sum(bool(r['spill_stores']) for r in rows)} spill")
    if spilled:
        raise SectionError(f"forward variants spill registers: {', '.join(spilled)}", rows)
    return rows
