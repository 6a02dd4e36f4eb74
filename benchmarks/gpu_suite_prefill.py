"""GPU suite section ``prefill``: operator timings, forward and forward+backward, per channel shape, for the
Triton kernels and, when ``fla`` imports, flash-linear-attention's ``chunk_simple_gla`` on the same shapes.

Calls:

* ``fwd``: ``chunk_decay_attention(q, k, v, g | g_gamma, output_final_state=True)`` (prefill builds the
  decode state);
* ``fwd+bwd``: the forward without the final state, then ``torch.autograd.grad(o, (q, k, v[, g]), do)``
  (training; ``g_gamma`` is a constant here, as it is to ``chunk_simple_gla``).

Timing: ``ms`` is the median per call seen from Python (CUDA events around each call, so host launch overhead
counts where the GPU is faster than the launch); ``gpu_ms`` is the median per call of a CUDA graph replaying
the call over every input set (GPU time alone; empty when the call cannot be captured, with the reason in
``graph_error``). Warm-up and the first call (compilation, fla's autotuning: ``first_call_s``) are excluded;
the inputs are random and rotated over enough sets (``sets``) that no call finds its data in L2.

Bytes (``bytes``, the same count for both implementations): each input read once and each output written
once, with q/k at their shared size (batch 1) for the positional channel. ``fwd``: q, k, v, g (or g_gamma),
o and the float32 final state; ``fwd+bwd``: q, k, v, g / g_gamma and do read, o, dq, dk, dv (and dg) written.
``GBps`` = bytes / time (``gpu_ms`` when there is one), ``pct_peak`` against the device's peak (datasheet),
``pct_copy`` against the measured copy bandwidth. ``vs_fla`` = fla's time / the kernels' time (> 1: faster).
``target`` / ``meets_target``: issue 8's goals, ``vs_fla >= 1`` at B = 64 and ``pct_peak >= 25`` at B = 1.

fla has no shared q/k: they are expanded to the batch beforehand (outside the timing), so fla reads B times
more q/k than counted. An fla call that fails (e.g. K = 2 rejected) records its error in the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from fuxi_linear.ops import chunk_decay_attention
from gpu_suite_common import (
    CHANNELS,
    DTYPES,
    SETTINGS,
    Log,
    Row,
    SectionError,
    make_channel_inputs,
    progress,
    rel_rms,
    rotation_count,
    sync,
    time_eager,
    time_graph,
    time_left,
)

SIZES = ((64, 1024), (64, 8192), (1, 8192))
DRY_RUN_SIZES = ((1, 40),)  # B > 1 with shared q/k: tests/test_gpu_suite.py
PASSES = ("fwd", "fwd+bwd")
#: cases fla gets in a dry run: under the interpreter one tiny case shows whether its kernels run there at all
DRY_RUN_FLA_CASES = 1
KERNELS = "fuxi-triton"
FLA = "fla chunk_simple_gla"
Op = Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]


def load_fla() -> Op:
    """``fla.ops.simple_gla.chunk_simple_gla`` (raises ImportError, or what fla raises, when unavailable)."""
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla


def fla_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("fla-core")
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Implementation:
    name: str
    op: Op  # (q, k, v, g=..., g_gamma=..., scale=..., output_final_state=...) -> (o, final state)
    expands_shared_qk: bool  # q/k of batch 1 must be materialised at batch B


def kernels_implementation() -> Implementation:
    def op(**kw):
        return chunk_decay_attention(**kw, backend="triton")

    return Implementation(KERNELS, op, expands_shared_qk=False)


def fla_implementation() -> Implementation:
    return Implementation(FLA, load_fla(), expands_shared_qk=True)


def problem_bytes(channel: str, B: int, T: int, dtype: torch.dtype, pass_: str) -> int:
    """Minimal traffic of one call (module docstring): each input read once, each output written once."""
    s = CHANNELS[channel]
    e = torch.empty((), dtype=dtype).element_size()
    qk = (1 if s.shared_qk else B) * T * s.heads * s.k * e
    v = B * T * s.heads * s.v * e
    decay = {"g": B * T * s.heads * 4, "g_gamma": s.heads * 4, None: 0}[s.decay]
    if pass_ == "fwd":
        return 2 * qk + v + decay + v + B * s.heads * s.k * s.v * 4
    grads = 2 * qk + v + (decay if s.decay == "g" else 0)
    return (2 * qk + v + decay + v) + (v + grads)  # read q, k, v, decay, do; write o and the gradients


def _input_sets(impl: Implementation, channel: str, B: int, T: int, dtype: torch.dtype, pass_: str,
                device: torch.device, dry_run: bool) -> List[Dict[str, torch.Tensor]]:
    def one(seed: int) -> Dict[str, torch.Tensor]:
        x = make_channel_inputs(channel, B, T, dtype, device, seed)
        if impl.expands_shared_qk and x["q"].shape[0] != B:
            x["q"] = x["q"].expand(B, -1, -1, -1).contiguous()
            x["k"] = x["k"].expand(B, -1, -1, -1).contiguous()
        if pass_ == "fwd+bwd":
            for name in ("q", "k", "v", "g"):
                if name in x:
                    x[name].requires_grad_(True)
            x["do"] = torch.randn_like(x["v"])
        return x

    first = one(0)
    set_bytes = sum(t.numel() * t.element_size() for t in first.values()) * 2  # inputs + outputs, roughly
    return [first] + [one(seed) for seed in range(1, rotation_count(set_bytes, device, dry_run))]


def _call(impl: Implementation, pass_: str) -> Callable[[Dict[str, torch.Tensor]], Any]:
    def fwd(x):
        kw = {n: t for n, t in x.items() if n != "do"}
        return impl.op(**kw, scale=1.0, output_final_state=True)

    def fwd_bwd(x):
        kw = {n: t for n, t in x.items() if n != "do"}
        o, _ = impl.op(**kw, scale=1.0, output_final_state=False)
        leaves = [t for n, t in kw.items() if t.requires_grad]
        return torch.autograd.grad(o, leaves, x["do"])

    return fwd if pass_ == "fwd" else fwd_bwd


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def measure(impl: Implementation, channel: str, B: int, T: int, dtype: str, pass_: str, device: torch.device,
            dry_run: bool, peak_gbs: Optional[float]) -> Row:
    """Timing columns of one (implementation, shape, dtype, pass); raises what the call raises."""
    torch_dtype = DTYPES[dtype]
    sets = _input_sets(impl, channel, B, T, torch_dtype, pass_, device, dry_run)
    call = _call(impl, pass_)
    target_s = 0.0 if dry_run else (0.1 if SETTINGS.quick else 0.25)
    timing = time_eager(lambda i: call(sets[i]), len(sets), device, target_s, warmup=0 if dry_run else 3,
                        min_reps=1 if dry_run else 5)
    gpu_ms, graph_error = None, None
    if device.type == "cuda":
        try:
            gpu_ms = time_graph(lambda i: call(sets[i]), len(sets), target_s)
        except Exception as err:  # a host synchronisation or an allocation the capture refuses
            graph_error = _short(err, 200)
            sync(device)
    nbytes = problem_bytes(channel, B, T, torch_dtype, pass_)
    best_ms = gpu_ms if gpu_ms is not None else timing.median_ms
    gbps = nbytes / (best_ms * 1e-3) / 1e9
    return {
        "ms": timing.median_ms,
        "ms_p20": timing.p20_ms,
        "ms_p80": timing.p80_ms,
        "gpu_ms": gpu_ms,
        "reps": timing.reps,
        "sets": len(sets),
        "first_call_s": round(timing.first_call_s, 2),
        "bytes": nbytes,
        "GBps": gbps,
        "pct_peak": 100 * gbps / peak_gbs if peak_gbs else None,
        "pct_copy": 100 * gbps / SETTINGS.copy_gbs if SETTINGS.copy_gbs else None,
        "graph_error": graph_error,
    }


def output_difference(impl: Implementation, channel: str, B: int, T: int, dtype: str,
                      device: torch.device) -> float:
    """Relative RMS between ``impl``'s forward output and the kernels' on the same random inputs."""
    mine = make_channel_inputs(channel, B, T, DTYPES[dtype], device, seed=123)
    theirs = dict(mine)
    if impl.expands_shared_qk and mine["q"].shape[0] != B:
        theirs["q"], theirs["k"] = (mine[n].expand(B, -1, -1, -1).contiguous() for n in ("q", "k"))
    with torch.no_grad():
        expected, _ = kernels_implementation().op(**mine, scale=1.0)
        actual, _ = impl.op(**theirs, scale=1.0)
    return rel_rms(actual, expected)


def _cases(dry_run: bool) -> List[Tuple[str, int, int, str]]:
    dtypes = ("fp32",) if dry_run else (("bf16",) if SETTINGS.quick else ("bf16", "fp32"))
    return [(channel, B, T, dtype) for dtype in dtypes for B, T in (DRY_RUN_SIZES if dry_run else SIZES)
            for channel in CHANNELS]


def _blank(impl: str, channel: str, B: int, T: int, dtype: str, pass_: str) -> Row:
    s = CHANNELS[channel]
    keys = ("status", "ms", "ms_p20", "ms_p80", "gpu_ms", "reps", "sets", "first_call_s", "bytes", "GBps",
            "pct_peak", "pct_copy", "vs_fla", "target", "meets_target", "rel_diff_vs_kernels", "graph_error",
            "error")
    return {"impl": impl, "channel": channel, "B": B, "T": T, "H": s.heads, "K": s.k, "V": s.v, "dtype": dtype,
            "pass": pass_, **dict.fromkeys(keys)}


def _run_impl(impl: Implementation, cases, device, dry_run, peak_gbs, log) -> List[Row]:
    rows = []
    work = [(c, p) for c in cases for p in PASSES]
    if impl.name != KERNELS:  # the temporal shape (K = 2) last: if fla breaks the CUDA context, the rest is done
        work.sort(key=lambda cp: cp[0][0] == "temporal")
    for (channel, B, T, dtype), pass_ in progress(work, impl.name):
        row = _blank(impl.name, channel, B, T, dtype, pass_)
        if time_left() < 10:
            row["status"] = "skipped: time budget"
            rows.append(row)
            continue
        try:
            row.update(measure(impl, channel, B, T, dtype, pass_, device, dry_run, peak_gbs))
            if impl.name != KERNELS and pass_ == "fwd":
                row["rel_diff_vs_kernels"] = output_difference(impl, channel, B, T, dtype, device)
            row["status"] = "ok"
            log(f"[prefill] {impl.name} {channel} B={B} T={T} {dtype} {pass_}: {row['ms']:.4g} ms, "
                f"GPU {row['gpu_ms'] if row['gpu_ms'] is None else format(row['gpu_ms'], '.4g')} ms, "
                f"{row['GBps']:.4g} GB/s")
        except Exception as err:
            row["status"], row["error"] = "error", _short(err)
            log(f"[prefill] {impl.name} {channel} B={B} T={T} {dtype} {pass_}: {row['error']}")
            if device.type == "cuda":
                try:
                    torch.cuda.synchronize(device)
                except Exception as sticky:  # the CUDA context is broken: nothing after this can run
                    row["error"] += f" | CUDA context lost: {_short(sticky, 120)}"
                    rows.append(row)
                    raise SectionError(f"{impl.name} left the CUDA context unusable", rows) from sticky
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


#: issue 8's targets: at B = 1 a share of the datasheet bandwidth, else at least fla's speed
TARGET_PCT_PEAK_B1 = 25.0
TARGET_VS_FLA = 1.0


def _speed_ratios(rows: List[Row]) -> None:
    """On the kernels' rows: ``vs_fla`` = fla's time over the kernels' (GPU time when both have one), and
    whether issue 8's target is met (None when it cannot be judged: no fla, no peak)."""
    def key(r: Row):
        return r["channel"], r["B"], r["T"], r["dtype"], r["pass"]

    fla = {key(r): r for r in rows if r["impl"] == FLA and r["status"] == "ok"}
    for r in rows:
        if r["impl"] != KERNELS or r["status"] != "ok" or key(r) not in fla:
            continue
        other = fla[key(r)]
        column = "gpu_ms" if r["gpu_ms"] is not None and other["gpu_ms"] is not None else "ms"
        r["vs_fla"] = other[column] / r[column]
    for r in rows:
        if r["impl"] != KERNELS or r["status"] != "ok":
            continue
        if r["B"] == 1:
            r["target"] = f"pct_peak >= {TARGET_PCT_PEAK_B1:g}"
            r["meets_target"] = None if r["pct_peak"] is None else r["pct_peak"] >= TARGET_PCT_PEAK_B1
        else:
            r["target"] = f"vs_fla >= {TARGET_VS_FLA:g}"
            r["meets_target"] = None if r["vs_fla"] is None else r["vs_fla"] >= TARGET_VS_FLA


def run_prefill_section(device: torch.device, dry_run: bool, peak_gbs: Optional[float], log: Log) -> List[Row]:
    cases = _cases(dry_run)
    kernels = kernels_implementation()
    fla: Optional[Implementation] = None
    try:
        fla = fla_implementation()
        log(f"[prefill] comparing with fla-core {fla_version()}")
    except Exception as err:
        fla_error = _short(err)
        log(f"[prefill] fla not compared: {fla_error}")
    rows: List[Row] = []
    # per dtype, the kernels then fla: a budget that runs out leaves whole dtypes, not all of fla, unmeasured
    for dtype in dict.fromkeys(c[3] for c in cases):
        group = [c for c in cases if c[3] == dtype]
        rows += _run_impl(kernels, group, device, dry_run, peak_gbs, log)
        if fla is not None:
            try:
                rows += _run_impl(fla, group[:DRY_RUN_FLA_CASES] if dry_run else group, device, dry_run,
                                  peak_gbs, log)
            except SectionError as err:  # fla broke the CUDA context: keep every row so far
                err.rows = rows + err.rows
                _speed_ratios(err.rows)
                raise
    if fla is None:
        rows.append({**dict.fromkeys(rows[0]), "impl": FLA, "status": "not run",
                     "error": f"fla does not import: {fla_error}"})
    _speed_ratios(rows)
    failed = [r for r in rows if r["impl"] == KERNELS and r["status"] == "error"]
    if failed:
        raise SectionError(f"{len(failed)} kernel timing(s) failed: {failed[0]['error']}", rows)
    return rows
