"""GPU-suite section "decode" (issue 9): the fused block decode step and the serving step on a CUDA GPU.

Contract (shared by the suite's sections)::

    run_decode_section(device, dry_run, peak_gbs, log) -> list of flat rows (str/int/float/bool/None values)

Rows (``item`` says which):

* ``fused_block_step`` -- one block's three channel states advanced by the fused kernel (one launch), at the
  paper's scale (D=128, H=4, dqk=32, 8 periods, P=32), N = 64, 4096, 32768 users, states addressed
  directly (``layout="rows"``) and through a pool with shuffled ``state_indices`` (``"pool"``): GPU time per
  step (a CUDA graph of the call: no host overhead), eager time per call, GB/s of the bytes the step must
  move (states read and written once, inputs read, outputs written) and % of ``peak_gbs``;
  ``three decay_attention_step`` -- the same work as three single-channel launches, for comparison.
* ``model.step`` -- the Kuai model (4 blocks, D=128) at N = 64 and 4096: eager with ``validate=True`` (the
  CUDA default: device-side asserts), eager with ``validate=False``, and one CUDA graph of the step; with the
  kernel launches (``torch.profiler``: ``cuda_kernels``; ``aten_kernel_ops`` counts the ATen calls that are
  not views, Triton launches not included) and host synchronisations (:class:`fuxi_linear.bench.
  HostSyncCounter`) of one step. A graph replay is one launch and no synchronisation.
* ``Decoder.step`` -- the serving loop's step of 64 users (graph replay, host bookkeeping and the copies of
  the inputs included).
* ``decode vs fuxi-alpha`` -- one decode step of 32 users after 8192 events, FuXi-Linear against FuXi-alpha's
  KV cache (target: >= 50x).

``dry_run=True`` runs everything on tiny shapes on the CPU (the Triton kernels under the interpreter), to test
the section; its times mean nothing (rows say ``dry_run``). Graph rows need CUDA and are skipped elsewhere.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch

import gpu_suite_paths

gpu_suite_paths.use_source_tree()  # this checkout's fuxi_linear, also when imported outside the driver

from gpu_suite_common import Row, nbytes, sync, time_left  # noqa: E402

PAPER = dict(embedding_dim=128, num_heads=4, qk_dim=32, temporal_num_periods=8, positional_dim=32, num_blocks=4)
TINY = dict(embedding_dim=32, num_heads=2, qk_dim=8, temporal_num_periods=2, positional_dim=8, num_blocks=2)
FUSED_USERS = (64, 4096, 32768)
STEP_USERS = (64, 4096)


def _time_eager_us(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median wall time per call in µs (CUDA events around each call, or perf_counter), after a warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _graph(fn: Callable[[], Any], device: torch.device) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def _time_graph_us(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """GPU time per call in µs: the call captured once, the replay timed (median)."""
    graph = _graph(fn, device)
    return _time_eager_us(graph.replay, device, reps)


# ---------------------------------------------------------------------------------------------- fused op
def _block_channels(N: int, shape: dict, device: torch.device, pool: bool):
    """One block's three channels for N users (bf16-free: float32 inputs, as the model in fp32 gives them)."""
    from fuxi_linear.ops import StepChannel

    D, H, dqk, Ht, P = (shape[k] for k in ("embedding_dim", "num_heads", "qk_dim", "temporal_num_periods",
                                           "positional_dim"))
    rows = 2 * N if pool else N
    g = torch.Generator(device="cpu").manual_seed(N)

    def randn(*size):
        return torch.randn(*size, generator=g).to(device)

    proj = randn(N, 2 * H * dqk + D)  # retention q, k, v as column slices of one projection, as in the block
    q, k = proj[:, :H * dqk].view(N, H, dqk), proj[:, H * dqk:2 * H * dqk].view(N, H, dqk)
    v = proj[:, 2 * H * dqk:].view(N, H, D // H)
    e = randn(N, 1, P)
    channels = [
        StepChannel(q, k, v, randn(rows, H, dqk, D // H) * 0.1, g_gamma=-torch.rand(H, generator=g).to(device)),
        StepChannel(randn(N, 2 * Ht, 2), randn(N, 2 * Ht, 2), randn(N, 2 * Ht, D // (2 * Ht)),
                    randn(rows, 2 * Ht, 2, D // (2 * Ht)) * 0.1, g=-torch.rand(N, 2 * Ht, generator=g).to(device)),
        StepChannel(e, e, randn(N, 1, D), randn(rows, 1, P, D) * 0.1, k_scale=2.0 / P),
    ]
    indices = torch.randperm(rows, generator=g)[:N].to(device) if pool else None
    return channels, indices


def _fused_rows(device: torch.device, dry_run: bool, peak_gbs: Optional[float], log) -> List[Row]:
    from fuxi_linear.ops import fused_block_step
    from fuxi_linear.ops.triton_decay_attention import decay_attention_step_triton

    shape = TINY if dry_run else PAPER
    users = (2, 5) if dry_run else FUSED_USERS
    reps = 2 if dry_run else 20
    backend = "triton"
    rows: List[Row] = []
    for N in users:
        for layout in ("rows", "pool"):
            if time_left() < 5:
                log(f"decode: time budget spent; skipping fused N={N} {layout}")
                return rows
            channels, idx = _block_channels(N, shape, device, layout == "pool")
            states = [c.state for c in channels]
            moved = (2 * sum(nbytes(c.state) * N // c.state.shape[0] for c in channels)
                     + nbytes(*(t for c in channels for t in (c.q, c.k, c.v, c.g)))
                     + N * sum(c.v.shape[1] * c.v.shape[2] for c in channels) * channels[0].v.element_size())

            def fused():
                return fused_block_step(channels, idx, backend=backend, validate=False)

            def separate():  # single-channel launches (unvalidated: capturable); the same traffic (k_scale aside)
                return [decay_attention_step_triton(c.q, c.k, c.v, c.state, g=c.g, g_gamma=c.g_gamma, scale=c.scale,
                                                    state_indices=idx)[0] for c in channels]

            for item, fn in (("fused_block_step", fused), ("three decay_attention_step", separate)):
                eager_us = _time_eager_us(fn, device, reps)
                gpu_us = _time_graph_us(fn, device, reps) if device.type == "cuda" else None
                us = gpu_us if gpu_us is not None else eager_us
                gbs = moved / (us * 1e-6) / 1e9
                rows.append(dict(item=item, layout=layout, N=N, launches=1 if item == "fused_block_step" else 3,
                                 gpu_us=gpu_us, eager_us=eager_us, bytes_per_step=moved, gbs=gbs,
                                 pct_of_peak=100.0 * gbs / peak_gbs if peak_gbs else None,
                                 state_mib=sum(nbytes(s) for s in states) / 2 ** 20, dry_run=dry_run))
                log(f"decode: {item} N={N} {layout}: {us:.1f} µs, {gbs:.0f} GB/s")
            del channels, states
    return rows


# ---------------------------------------------------------------------------------------------- model.step
def _model(shape: dict, device: torch.device, max_seq_len: int):
    from fuxi_linear import FuXiLinear, FuXiLinearConfig

    torch.manual_seed(0)
    config = FuXiLinearConfig(num_items=10_000, max_seq_len=max_seq_len, dropout=0.0, backend="auto", **shape)
    return FuXiLinear(config).to(device).eval()


def _step_inputs(N: int, device: torch.device):
    g = torch.Generator().manual_seed(N)
    t = 1_700_000_000 + torch.randint(0, 10 ** 6, (N,), generator=g)
    return (torch.randint(1, 10_001, (N,), generator=g).to(device), t.to(device), (t + 600).to(device))


def _launches_and_syncs(fn: Callable[[], Any], device: torch.device) -> Dict[str, Any]:
    from fuxi_linear.bench import HostSyncCounter, count_cuda_kernel_launches

    with HostSyncCounter() as counter:
        fn()
    out = dict(host_syncs=counter.syncs, aten_ops=counter.aten_ops, aten_kernel_ops=counter.launches)
    out["cuda_kernels"] = count_cuda_kernel_launches(fn, device) if device.type == "cuda" else None
    return out


def _model_step_rows(device: torch.device, dry_run: bool, log) -> List[Row]:
    shape = TINY if dry_run else PAPER
    users = (3,) if dry_run else STEP_USERS
    reps = 2 if dry_run else 30
    model = _model(shape, device, max_seq_len=512)
    rows: List[Row] = []
    with torch.inference_mode():
        for N in users:
            if time_left() < 10:
                log(f"decode: time budget spent; skipping model.step N={N}")
                break
            state = model.empty_state(N, device)
            ids, ts, qts = _step_inputs(N, device)
            rows_idx = torch.arange(N, device=device)

            def reset():
                state.position.fill_(100)

            def eager(validate):
                def fn():
                    reset()
                    model.step(state, ids, ts, qts, validate=validate)
                return fn

            def pooled():
                reset()
                model.step(state, ids, ts, qts, state_indices=rows_idx, validate=False)

            for mode, fn in (("eager, validate=True", eager(True)), ("eager, validate=False", eager(False))):
                us = _time_eager_us(fn, device, reps)
                rows.append(dict(item="model.step", mode=mode, N=N, blocks=shape["num_blocks"],
                                 D=shape["embedding_dim"], us=us, dry_run=dry_run, **_launches_and_syncs(fn, device)))
                log(f"decode: model.step N={N} {mode}: {us:.0f} µs")
            if device.type == "cuda":
                us = _time_graph_us(pooled, device, reps)
                rows.append(dict(item="model.step", mode="CUDA graph (pool rows)", N=N, blocks=shape["num_blocks"],
                                 D=shape["embedding_dim"], us=us, dry_run=dry_run, host_syncs=0, aten_ops=None,
                                 aten_kernel_ops=None, cuda_kernels=1))
                log(f"decode: model.step N={N} graph: {us:.0f} µs")
            else:
                rows.append(dict(item="model.step", mode="CUDA graph (pool rows)", N=N, blocks=shape["num_blocks"],
                                 D=shape["embedding_dim"], us=None, dry_run=dry_run, host_syncs=None, aten_ops=None,
                                 aten_kernel_ops=None, cuda_kernels=None, status="skipped: needs CUDA"))
            del state
    return rows


def _decoder_rows(device: torch.device, dry_run: bool, log) -> List[Row]:
    from fuxi_linear.serving import Decoder

    shape = TINY if dry_run else PAPER
    N = 3 if dry_run else 64
    reps = 2 if dry_run else 30
    model = _model(shape, device, max_seq_len=512)
    decoder = Decoder(model, max_users=N, device=device)
    users = list(range(N))
    g = torch.Generator().manual_seed(1)
    T = 8
    ids = torch.randint(1, 10_001, (N, T), generator=g)
    ts = 1_700_000_000 + torch.cumsum(torch.randint(1, 600, (N, T), generator=g), 1)
    decoder.admit(users, ids, ts, torch.full((N,), T), ts[:, -1] + 60)
    step_ids, step_ts, step_qts = (t.cpu() for t in _step_inputs(N, torch.device("cpu")))
    step_ts = step_ts + 10 ** 7
    step_qts = step_qts + 10 ** 7

    def fn():
        decoder.step(users, step_ids, step_ts, step_qts)

    with torch.inference_mode():
        us = _time_eager_us(fn, device, reps)
    log(f"decode: Decoder.step N={N}: {us:.0f} µs")
    return [dict(item="Decoder.step", mode="CUDA graph" if decoder.use_cuda_graphs else "eager", N=N,
                 blocks=shape["num_blocks"], D=shape["embedding_dim"], us=us, dry_run=dry_run)]


def _versus_fuxi_alpha_rows(device: torch.device, dry_run: bool, log) -> List[Row]:
    from fuxi_linear.bench import BenchSettings, build_bench_models, decode_call, make_inputs, prefill_call

    T, B = (16, 2) if dry_run else (8192, 32)
    if time_left() < 30:
        log("decode: time budget spent; skipping the FuXi-alpha comparison")
        return []
    scale = dict(embedding_dim=32, num_blocks=1, num_heads=2, qk_dim=8) if dry_run else \
        dict(embedding_dim=128, num_blocks=4, num_heads=4, qk_dim=32)
    settings = BenchSettings(device=str(device), seq_lens=[T], batch_size=B, models=["fuxi-linear", "fuxi-alpha"],
                             compile="off", warmup=1, repeats=1, decode_repeats=2 if dry_run else 20, progress=False,
                             **scale).resolve()
    models = build_bench_models(settings)
    inputs = make_inputs(B, T, settings.num_items, 0, device)
    out: Dict[str, float] = {}
    with torch.inference_mode():
        for name, model in models.items():  # steps in place: T grows by ~20 events over the timed steps
            _, state = prefill_call(model, inputs, T + 64)
            out[name] = _time_eager_us(lambda: decode_call(model, state, inputs), device, settings.decode_repeats)
            del state
    ratio = out["fuxi-alpha"] / out["fuxi-linear"]
    log(f"decode: T={T}, {B} users: fuxi-linear {out['fuxi-linear']:.0f} µs, fuxi-alpha {out['fuxi-alpha']:.0f} µs "
        f"({ratio:.1f}x)")
    return [dict(item="decode vs fuxi-alpha", T=T, N=B, fuxi_linear_us=out["fuxi-linear"],
                 fuxi_alpha_us=out["fuxi-alpha"], speedup=ratio, target=50.0, dry_run=dry_run)]


def run_decode_section(device: torch.device, dry_run: bool, peak_gbs: Optional[float],
                       log: Callable[[str], None]) -> List[Row]:
    """All rows of the decode section (see the module docstring)."""
    device = torch.device(device)
    rows: List[Row] = []
    for part in (lambda: _fused_rows(device, dry_run, peak_gbs, log), lambda: _model_step_rows(device, dry_run, log),
                 lambda: _decoder_rows(device, dry_run, log), lambda: _versus_fuxi_alpha_rows(device, dry_run, log)):
        rows += part()
    for r in rows:
        r.setdefault("device", device.type)
        r.setdefault("status", "ok")
    return rows


if __name__ == "__main__":  # pragma: no cover
    import json
    import os

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    print(json.dumps(run_decode_section(dev, dev.type == "cpu", None, lambda m: print(m, file=sys.stderr)), indent=1))
