"""The benchmark run: prefill and decode of every model at every length, timed round-robin over the models,
into rows (one per model, stage and length) of a :class:`BenchResult`; :func:`run_bench` also prints the
report and writes the JSON rows and the plot."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from ..utils import progress
from .inputs import build_bench_models, decode_call, decode_step_kind, make_inputs, prefill_call
from .machine import machine_info, nominal_peak_gbs
from .plot import plot_results, require_matplotlib
from .report import format_report, write_json
from .settings import STAGES, THROUGHPUT_POSITION, BenchSettings
from .sizes import decode_bytes_per_user, state_bytes_per_user
from .timing import free_memory, is_out_of_memory, quantile, time_interleaved


@dataclass
class BenchResult:
    settings: BenchSettings
    machine: Dict[str, Any]
    rows: List[Dict[str, Any]]
    notes: List[str]
    peak_gbs: Optional[float] = None

    def ms(self, model: str, stage: str, seq_len: int) -> Optional[float]:
        for r in self.rows:
            if (r["model"], r["stage"], r["seq_len"]) == (model, stage, seq_len):
                return r["ms"]
        return None

    def row(self, model: str, stage: str, seq_len: int) -> Optional[Dict[str, Any]]:
        for r in self.rows:
            if (r["model"], r["stage"], r["seq_len"]) == (model, stage, seq_len):
                return r
        return None


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = print) -> BenchResult:
    """Time prefill and decode of every model at every length (see the module docstring)."""
    s = settings.resolve()
    device = s.torch_device
    threads_before = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        return _run(s, device, log)
    finally:
        torch.set_num_threads(threads_before)


def _run(s: BenchSettings, device: torch.device, log: Callable[[str], None]) -> BenchResult:
    machine = machine_info(device, s.dtype)
    notes = list(s.notes)
    models = build_bench_models(s)
    base = dict(batch_size=s.batch_size, device=device.type, device_name=machine["device_name"], dtype=s.dtype,
                embedding_dim=s.embedding_dim, num_blocks=s.num_blocks, num_heads=s.num_heads, qk_dim=s.qk_dim,
                torch=machine["torch"], triton=machine["triton"], threads=machine["threads"])
    rows: List[Dict[str, Any]] = []
    out_of_memory_at: Dict[str, int] = {}
    bar = progress(None, s.progress, total=len(s.seq_lens) * len(s.models) * len(STAGES), desc="bench", unit="run",
                   leave=False)
    say = (lambda msg: bar.write(msg)) if bar is not None else log
    peak = s.peak_gbs if s.peak_gbs is not None else (
        nominal_peak_gbs(machine["device_name"]) if device.type == "cuda" else None)
    throughput: List[Dict[str, Any]] = []
    try:
        with torch.inference_mode():
            for T in s.seq_lens:
                rows += _measure_length(T, models, s, device, base, say, out_of_memory_at, bar)
            for N in s.decode_users:
                throughput.append(_measure_throughput(N, models["fuxi-linear"], s, device, base, peak, say))
    finally:
        if bar is not None:
            bar.close()
    compiled = models["fuxi-linear"].compiled_step if "fuxi-linear" in models else None
    if compiled is not None and not compiled.active:
        notes.append(f"compiling FuXi-Linear's decode step failed ({compiled.failure[:300]}): its decode rows are "
                     f"the eager step")
    order = {m: i for i, m in enumerate(s.models)}
    rows.sort(key=lambda r: (order[r["model"]], STAGES.index(r["stage"]), r["seq_len"]))
    for r in rows:
        if r["stage"] == "decode" and r["ms"] is not None:
            _add_rates(r, peak, device)
    if peak is not None:
        notes.append(f"% of peak: against {peak:.0f} GB/s ("
                     + ("--peak-gbs" if s.peak_gbs is not None else "the nominal datasheet bandwidth of this GPU")
                     + "); bytes per step = the minimum a step must move (2x the state per user for FuXi-Linear, "
                       "the KV cache read for the baselines, plus inputs and outputs)")
    return BenchResult(settings=s, machine=machine, rows=rows + throughput, notes=notes, peak_gbs=peak)


def _add_rates(row: Dict[str, Any], peak: Optional[float], device: torch.device) -> None:
    """users/s of a decode row; on CUDA also GB/s of its minimum traffic and % of ``peak``."""
    seconds = row["ms"] / 1e3
    row["users_per_s"] = row["batch_size"] / seconds
    if device.type == "cuda" and row.get("bytes_per_step"):
        row["gbs"] = row["bytes_per_step"] / seconds / 1e9
        row["pct_of_peak"] = 100.0 * row["gbs"] / peak if peak else None


def _measure_throughput(N: int, model, s: BenchSettings, device, base, peak, say) -> Dict[str, Any]:
    """FuXi-Linear decode steps of N users at once (an all-zero state at position ``THROUGHPUT_POSITION``:
    a step's work does not depend on the values or the history length), stepped in place."""
    row = dict(model="fuxi-linear", stage="decode-throughput", seq_len=THROUGHPUT_POSITION, **{**base, "batch_size": N})
    try:
        state = model.empty_state(N, device)
        state.position.fill_(THROUGHPUT_POSITION)
        inputs = make_inputs(N, 1, s.num_items, s.seed, device)
        _prime_compiled_step(model, state.clone(), inputs)
        timed, failed = time_interleaved({"step": (lambda: decode_call(model, state, inputs), None)}, device,
                                         s.decode_warmup, s.decode_repeats, burst=s.decode_burst)
        times = timed["step"]
    except Exception as err:  # noqa: BLE001
        if not is_out_of_memory(err):
            raise
        failed = {"step": "setup"}
    if failed:
        say(f"fuxi-linear decode of {N} users: out of memory; skipped")
        free_memory(device)
        return dict(row, ms=None, status="out of memory")
    nbytes = state_bytes_per_user(state, THROUGHPUT_POSITION)
    row.update(ms=statistics.median(times), ms_q25=quantile(times, 0.25), ms_q75=quantile(times, 0.75),
               repeats=len(times), state_bytes_per_user=nbytes, status="ok", decode_step=decode_step_kind(model),
               bytes_per_step=N * decode_bytes_per_user(state, THROUGHPUT_POSITION, s.embedding_dim, s.torch_dtype))
    del state
    free_memory(device)
    _add_rates(row, peak, device)
    return row


def _measure_length(T, models, s: BenchSettings, device, base, say, out_of_memory_at, bar) -> List[Dict[str, Any]]:
    """Prefill, then decode, of every model at length T, each stage timed round-robin over the models."""
    inputs = make_inputs(s.batch_size, T, s.num_items, s.seed, device)
    capacity = T + s.steps_per_state + 1
    rows: List[Dict[str, Any]] = []

    def skip(name, stages, status):
        rows.extend(dict(model=name, stage=st, seq_len=T, ms=None, status=status, **base) for st in stages)

    def out_of_memory(name, stage):
        out_of_memory_at[name] = T
        say(f"{name} T={T}: out of memory in {stage}; skipped (and the longer lengths of {name})")
        skip(name, STAGES[STAGES.index(stage):], "out of memory")

    alive = []
    for name in s.models:
        if name in out_of_memory_at:
            skip(name, STAGES, f"skipped: out of memory at T={out_of_memory_at[name]}")
        else:
            alive.append(name)
    if bar is not None:
        bar.set_description(f"prefill T={T}")
    times, failed = time_interleaved(
        {name: ((lambda m=models[name]: prefill_call(m, inputs, capacity)), None) for name in alive},
        device, s.warmup, s.repeats)
    states, nbytes = {}, {}
    for name in alive:
        if name in failed:
            out_of_memory(name, "prefill")
            continue
        try:
            _, states[name] = prefill_call(models[name], inputs, capacity)
        except Exception as err:  # noqa: BLE001
            if not is_out_of_memory(err):
                raise
            free_memory(device)
            out_of_memory(name, "prefill")
            continue
        nbytes[name] = state_bytes_per_user(states[name], T)
        rows.append(_row(name, "prefill", T, times[name], nbytes[name], base))
    if bar is not None:
        bar.update(len(s.models))
        bar.set_description(f"decode T={T}")
    if "fuxi-linear" in states:
        _prime_compiled_step(models["fuxi-linear"], states["fuxi-linear"].clone(), inputs)
    times, failed = time_interleaved(
        {name: ((lambda st, m=models[name]: decode_call(m, st, inputs)), (lambda st=states[name]: (st.clone(),)))
         for name in states},
        device, s.decode_warmup, s.decode_repeats, burst=s.decode_burst)
    for name in states:
        if name in failed:
            out_of_memory(name, "decode")
        else:
            row = _row(name, "decode", T, times[name], nbytes[name], base)
            row["bytes_per_step"] = s.batch_size * decode_bytes_per_user(states[name], T, s.embedding_dim,
                                                                         s.torch_dtype)
            kind = decode_step_kind(models[name])
            if kind is not None:
                row["decode_step"] = kind
            rows.append(row)
    states.clear()
    free_memory(device)
    if bar is not None:
        bar.update(len(s.models))
    return rows


def _prime_compiled_step(model, state, inputs) -> None:
    """One untimed step of a compiled step (on a throwaway state): the first call of a new batch or pool size
    compiles, which takes seconds and is not what a decode step costs."""
    if decode_step_kind(model) == "compiled":
        decode_call(model, state, inputs)


def _row(name, stage, T, times, nbytes, base) -> Dict[str, Any]:
    return dict(model=name, stage=stage, seq_len=T, ms=statistics.median(times), ms_q25=quantile(times, 0.25),
                ms_q75=quantile(times, 0.75), repeats=len(times), state_bytes_per_user=nbytes, status="ok",
                **base)


def run_bench(settings: BenchSettings, json_path: Optional[str] = None, plot_path: Optional[str] = None,
              log: Callable[[str], None] = print) -> BenchResult:
    """Run, print the report, write the JSON rows and the plot."""
    if plot_path:
        require_matplotlib()  # fail before spending minutes measuring
    result = run_benchmark(settings, log=log)
    log(format_report(result))
    if json_path:
        log(f"wrote {write_json(result, json_path)}")
    if plot_path:
        log(f"wrote {plot_results(result, plot_path)}")
    return result
