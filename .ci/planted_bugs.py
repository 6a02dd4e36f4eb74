#!/usr/bin/env python3
"""Planted bugs: evidence that the tests catch real mistakes, run by CI (``.ci/run``).

Each bug below is a small, plausible mistake in the sources (a float32 sum where float64 is needed, a decay
left out, an off-by-one, a block size that depends on T, ...). For each one, the script copies the sources into
a temporary folder, plants that one bug (a text replacement that must match exactly once), runs only the named
tests there with pytest, and requires them to fail. Before that it runs the same tests on the unplanted copy,
which must pass (so a failure is the bug's doing). It prints a table and exits 1 when a bug survives, when a
pattern no longer matches the code (the code changed: re-target the bug here; a planted bug is never skipped
silently), or when the baseline fails.

    python .ci/planted_bugs.py              # every bug, 2 at a time (a few minutes on 2 cores)
    python .ci/planted_bugs.py --list       # the table of bugs, nothing run
    python .ci/planted_bugs.py --only dg-float32-cumsum split-scan-no-decay --jobs 1 --keep

The copy is imported instead of any installed ``fuxi_linear``: the tests run with the copy as working directory
and first on ``PYTHONPATH``, and the copy gets ``fuxi_linear/kernels -> ../kernels`` (what ``setup.py``'s
``package_dir`` does for an install); the script checks where ``fuxi_linear`` and ``fuxi_linear.kernels`` are
imported from before running anything. Without a GPU the kernels run in the Triton interpreter.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
#: seconds one bug's tests may take (the slowest take ~20 s on 2 shared cores)
TEST_TIMEOUT_S = 600


@dataclass(frozen=True)
class Bug:
    name: str
    file: str
    find: str
    replace: str
    tests: Tuple[str, ...]
    what: str


KT, TESTS = "tests/test_kernels.py::", "tests/"
BUGS: List[Bug] = [
    # ---- prefill forward and backward -------------------------------------------------------------------------
    Bug("dg-float32-cumsum", "fuxi_linear/ops/triton_launchers.py",
        "dB = qdq.double().sum(0) - kdk.double().sum(0)",
        "dB = qdq.float().sum(0) - kdk.float().sum(0)",
        (KT + "test_decay_gradient_of_a_sequence_ignores_its_neighbours[packed]",),
        "the decay gradient's reverse cumulative sum of q.dq - k.dk in float32 instead of float64"),
    Bug("chunk-decay-float32-cumsum", "kernels/common.py",
        "b64 = tl.cumsum(b_g.to(tl.float64) * LOG2E, axis=0)",
        "b64 = tl.cumsum(b_g * LOG2E, axis=0).to(tl.float64)",
        (TESTS + "test_kernel_numerics.py::test_strong_decays_keep_float32_accuracy[general]",),
        "the chunk-local cumulative log-decay summed in float32 (strong decays lose exp(b_i - b_j))"),
    Bug("causal-mask-drops-diagonal", "kernels/common.py",
        "o_i[:, None] >= o_i[None, :]",
        "o_i[:, None] > o_i[None, :]",
        (KT + "test_prefill_head_dims[H4K32V32]",),
        "general kernels: a token does not attend to itself inside its chunk"),
    Bug("bwd-state-gradient-not-decayed", "kernels/chunk_bwd.py",
        "b_ds = b_ds * tl.exp2(decay_value(hl, ll, gamma2, DECAY))",
        "b_ds = b_ds * 1.0",
        (KT + "test_prefill_head_dims[H4K32V32]",),
        "dk/dv kernel: the state gradient crosses chunk boundaries without the chunk's decay"),
    Bug("split-scan-no-decay", "kernels/segments.py",
        "b_e = b_e * tl.exp2(b_d) + b_u",
        "b_e = b_e + b_u",
        (TESTS + "test_kernel_split.py::test_split_matches_math[per_token-general]",),
        "split-T: the scan over segments forgets each segment's total decay"),
    Bug("split-plan-short-of-target", "kernels/configs.py",
        "longest = (math.ceil(T / (n_segments - 1)) - 1) // BT * BT",
        "longest = math.ceil(math.ceil(T / n_segments) / BT) * BT",
        (TESTS + "test_kernel_split.py::test_split_plan_worked_examples",),
        "split-T plan: segment lengths rounded up, fewer segments than the 528-program target"),
    Bug("summary-chunk-depends-on-T", "fuxi_linear/ops/triton_launchers.py",
        "BT=configs.summary_chunk(plan.cfg, sum_cfg)",
        "BT=min(sum_cfg.BT, plan.L & -plan.L)",
        (KT + "test_no_new_specialisation_for_new_T[fp32]",),
        "split-T summary's chunk length from the segment length: new T values compile it again"),
    Bug("batch-stride-specialised", "kernels/chunk_fwd.py",
        'do_not_specialize=["sq_b", ',
        "do_not_specialize=[",
        (KT + "test_no_new_specialisation_for_new_T[fp32]",),
        "forward kernel: q's batch stride (T rows) specialised, so new T values recompile"),
    # ---- small-head kernels -----------------------------------------------------------------------------------
    Bug("small-heads-query-undecayed", "kernels/small_heads.py",
        "b_o += tl.sum(b_qs[:, :, :, None] * b_s[None, :, :, :], axis=2)",
        "b_o += tl.sum(b_q[:, :, :, None] * b_s[None, :, :, :], axis=2)",
        (KT + "test_prefill_fwd_bwd[per_token-53-h0on]",),
        "small-head forward: the carried state is read without the decay inside the chunk"),
    Bug("small-heads-dv-state-term-undecayed", "kernels/small_heads.py",
        "b_dv += b_dv_s * b_kd",
        "b_dv += b_dv_s",
        (KT + "test_prefill_varlen[small_heads-h0on-per_token]",),
        "small-head dk/dv kernel: dv's state term without the decay to the chunk's end"),
    # ---- decode step and fused block step ---------------------------------------------------------------------
    Bug("step-reads-state-before-update", "kernels/step.py",
        "    b_s += b_k[:, None] * b_v[None, :]\n    b_o = tl.sum(b_q[:, None] * b_s, axis=0) * scale\n",
        "    b_o = tl.sum(b_q[:, None] * b_s, axis=0) * scale\n    b_s += b_k[:, None] * b_v[None, :]\n",
        (KT + "test_step_matches_float64_step[direct-per_token]",),
        "decode step: the output reads the state before this token's update"),
    Bug("fused-step-ignores-k-scale", "kernels/fused_block_step.py",
        "b_s += (b_k * k_scale)[:, :, None] * b_v[:, None, :]",
        "b_s += b_k[:, :, None] * b_v[:, None, :]",
        (TESTS + "test_fused_block_step.py::test_k_scale_scales_the_update_not_the_state_read",),
        "fused block step: the positional channel's k / (P/2) scale is dropped"),
    # ---- the CPU path (DecayAttentionPlan) --------------------------------------------------------------------
    Bug("cpu-plan-carry-off-by-one", "fuxi_linear/ops/decay_plan.py",
        'out["out_of"] = _decay_exp(gam * (C - steps))',
        'out["out_of"] = _decay_exp(gam * (C + 1 - steps))',
        (TESTS + "test_cpu_prefill.py::test_plan_matches_recurrence_at_chunk_boundaries[65-retention]",),
        "CPU plan, per-head decay: a chunk's keys decayed one step too many into the next chunk"),
    Bug("cpu-plan-float32-decay-difference", "fuxi_linear/ops/decay_plan.py",
        'cast(b[..., :, None] - b[..., None, :], cdt)',
        'cast(b, cdt)[..., :, None] - cast(b, cdt)[..., None, :]',
        (TESTS + "test_cpu_prefill.py::test_float32_strong_decays_keep_float32_accuracy[None]",),
        "CPU plan, per-token decay: exp(b_t - b_s) from a float32 difference of large cumulative decays"),
    # ---- the model's decode path ------------------------------------------------------------------------------
    Bug("prefill-state-misses-last-event", "fuxi_linear/ops/decay_plan.py",
        "keep = (torch.arange(G.shape[-1], device=G.device) <= last.view(-1, 1, 1))",
        "keep = (torch.arange(G.shape[-1], device=G.device) < last.view(-1, 1, 1))",
        (TESTS + "test_decode.py::test_triton_step_equals_cpu_step_and_a_longer_prefill[True]",),
        "prefill hands decode the state at lengths - 2 (ragged rows' last event left out)"),
    Bug("step-without-inclusive-decay", "fuxi_linear/layers/retention.py",
        "return -r, torch.exp(-r)",
        "return -r, torch.ones_like(r)",
        (TESTS + "test_decode.py::test_triton_step_equals_cpu_step_and_a_longer_prefill[True]",),
        "decode step: the retention heads' inclusive decay d_h (q <- d_h q) left out"),
    Bug("step-query-at-event-time", "fuxi_linear/layers/temporal_step.py",
        "theta = torch.remainder(times[:, 1:].unsqueeze(-1), c.periods) * c.omega",
        "theta = torch.remainder(times[:, [1, 1]].unsqueeze(-1), c.periods) * c.omega",
        (TESTS + "test_decode.py::test_step_features_are_the_forward_features_bit_for_bit[seconds]",),
        "decode step: the temporal query's phase at the event's time instead of the request time"),
    Bug("cpu-step-positional-unscaled", "fuxi_linear/layers/block_step.py",
        "s_p, None, 1.0 / (s_p.shape[2] // 2))",
        "s_p, None, 1.0)",
        (TESTS + "test_decode.py::test_cpu_block_step_equals_the_fused_operator[False-True]",),
        "eager CPU decode step: the positional channel's key scale 1/(P/2) left out of the state update"),
    Bug("cpu-step-layout-per-block", "fuxi_linear/decoding/decode_step.py",
        'if resolve_backend(backend, x.device) == "cpu":',
        'if resolve_backend(backend, x.device) == "cpu" and False:',
        (TESTS + "test_decode.py::test_eager_cpu_step_is_a_few_calls_per_block[True]",),
        "eager CPU decode step: the model's step loses its once-per-step layout (the pool's rows gathered and the "
        "temporal operands laid out again in every block; same numbers, more calls per block)"),
    Bug("compiled-step-falls-back-silently", "fuxi_linear/decoding/compiled_step.py",
        "return torch.compile(fn, fullgraph=True, options=options or None)",
        'return torch.compile(fn, fullgraph=True, options={**(options or {}), "no_such_inductor_option": 1})',
        (TESTS + "test_compiled_step.py::test_compiled_step_equals_eager_and_a_longer_prefill",),
        "compiling the decode step fails, the model warns and steps eagerly (must fail CI, not skip)"),
]


# ------------------------------------------------------------------------------------------------ the runner
def source_files() -> List[str]:
    """The checkout's files: tracked ones and untracked ones git does not ignore (CI: a fresh clone)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def make_copy(files: List[str], dest: Path) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    link = dest / "fuxi_linear" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels", target_is_directory=True)


def plant(bug: Bug, copy: Path) -> None:
    path = copy / bug.file
    if not path.exists():
        raise PatternError(f"planted bug {bug.name!r}: {bug.file} does not exist (the code moved: re-target the "
                           f"bug in .ci/planted_bugs.py)")
    text = path.read_text()
    count = text.count(bug.find)
    if count != 1:
        why = "not found" if count == 0 else f"found {count} times"
        raise PatternError(f"planted bug {bug.name!r}: pattern {bug.find!r} {why} in {bug.file} (the code changed: "
                           f"re-target the bug in .ci/planted_bugs.py)")
    path.write_text(text.replace(bug.find, bug.replace))


class PatternError(RuntimeError):
    pass


def environment(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")  # two pytest processes share 2 cores
    for var in ("FUXI_RECORD_ERRORS", "PYTEST_ADDOPTS"):
        env.pop(var, None)
    return env


def check_imports(copy: Path) -> None:
    """``fuxi_linear`` and ``fuxi_linear.kernels`` must come from the copy, or a planted bug would not be run."""
    code = "import fuxi_linear, fuxi_linear.kernels as k; print(fuxi_linear.__file__); print(k.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=environment(copy), capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"importing fuxi_linear in the copy failed:\n{out.stderr}")
    for line in out.stdout.split():
        if not Path(line).resolve().is_relative_to(copy.resolve()):
            raise RuntimeError(f"the copy imports {line}, not its own sources ({copy}): planted bugs would not run")


def run_tests(copy: Path, tests: Tuple[str, ...]) -> Tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-rN", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True, text=True,
                              timeout=TEST_TIMEOUT_S)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return -1, out + f"\n(timed out after {TEST_TIMEOUT_S} s)", time.monotonic() - start


def summary_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else ""


def run_bug(bug: Bug, files: List[str], workdir: Path) -> dict:
    copy = workdir / bug.name
    make_copy(files, copy)
    try:
        plant(bug, copy)
    except PatternError as err:
        return {"bug": bug, "caught": False, "seconds": 0.0, "result": str(err)}
    code, output, seconds = run_tests(copy, bug.tests)
    # caught: pytest ran the tests and some failed or errored in their set-up (exit 1); 0 = they passed with the
    # bug; anything else (a collection error, a test id that no longer exists, a time-out) is not a catch either
    caught = code == 1 and any(word in summary_line(output) for word in (" failed", " error"))
    result = summary_line(output) if code in (0, 1) else f"pytest exit {code}: {summary_line(output)}"
    return {"bug": bug, "caught": caught, "seconds": seconds, "result": result, "output": output}


def print_table(rows: List[dict], baseline: Optional[dict]) -> None:
    print("\n| # | bug | file | test(s) | caught | s | result |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        b = r["bug"]
        tests = ", ".join(t.split("/")[-1] for t in b.tests)
        print(f"| {i} | {b.name} | {b.file} | {tests} | {'yes' if r['caught'] else 'NO'} | {r['seconds']:.0f} | "
              f"{r['result']} |")
    if baseline is not None:
        print(f"\nbaseline (no bug planted, the same tests): {baseline['result']} in {baseline['seconds']:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the bugs and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these bugs")
    parser.add_argument("--jobs", type=int, default=2, help="bugs run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (their path is printed)")
    args = parser.parse_args(argv)
    bugs = BUGS
    if args.only:
        unknown = set(args.only) - {b.name for b in BUGS}
        if unknown:
            parser.error(f"unknown bugs {sorted(unknown)}; --list shows them")
        bugs = [b for b in BUGS if b.name in args.only]
    if args.list:
        print("| bug | file | test(s) | what |\n|---|---|---|---|")
        for b in bugs:
            print(f"| {b.name} | {b.file} | {', '.join(b.tests)} | {b.what} |")
        return 0
    names = [b.name for b in BUGS]
    assert len(set(names)) == len(names), "bug names must be unique"

    started = time.monotonic()
    files = source_files()
    workdir = Path(tempfile.mkdtemp(prefix="planted_bugs_"))
    try:
        base = workdir / "baseline"
        make_copy(files, base)
        check_imports(base)
        baseline_tests = tuple(dict.fromkeys(t for b in bugs for t in b.tests))
        print(f"{len(bugs)} planted bugs, {args.jobs} at a time, in {workdir}", flush=True)

        def baseline_job():
            code, output, seconds = run_tests(base, baseline_tests)
            return {"ok": code == 0, "seconds": seconds, "result": summary_line(output), "output": output}

        def bug_job(bug):
            r = run_bug(bug, files, workdir)
            print(f"  {bug.name}: {'caught' if r['caught'] else 'NOT CAUGHT'} ({r['seconds']:.0f} s) {r['result']}",
                  flush=True)
            return r

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            base_future = pool.submit(baseline_job)
            futures = [pool.submit(bug_job, b) for b in bugs]
            rows = [f.result() for f in futures]
            baseline = base_future.result()
        print_table(rows, baseline)
        failed = [r for r in rows if not r["caught"]]
        for r in failed:
            print(f"\n---- {r['bug'].name}: NOT CAUGHT ({r['result']}) ----\n{r.get('output', '')[-3000:]}")
        if not baseline["ok"]:
            print(f"\n---- baseline FAILED: the named tests fail without any bug ----\n{baseline['output'][-5000:]}")
        print(f"\n{len(rows) - len(failed)} of {len(rows)} planted bugs caught; {time.monotonic() - started:.0f} s "
              f"in all")
        return 0 if not failed and baseline["ok"] else 1
    finally:
        if args.keep:
            print(f"copies kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
