"""The benchmark run: at every length the prefill stage, then the decode stage, of every model; then the
decode-throughput sweep. Each stage is one function that reads as the protocol of its rows, from the set-up
to the row (:func:`prefill_stage`, :func:`decode_stage`, :func:`throughput_stage`); :func:`run_benchmark`
only loops over the lengths, and :func:`run_bench` also prints the report and writes the JSON rows and the
plot.

Every timed row carries the spread of its repeats (:func:`fuxi_linear.bench.timing.spread`: min, median,
interquartile range, ``noisy``) and ``compiled`` (the run's regime: every model compiled, or every model
eager). In the compiled regime a model's graphs are compiled by untimed calls before any timing
(:mod:`fuxi_linear.bench.compile`); a model whose compile fails gets rows with status ``compile failed`` and
no time, and is not timed eagerly instead.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..utils import progress
from .compile import (CompiledPrefill, compile_config, disagreement, graphs_compiled, prime,
                      step_compile_failure)
from .host_memory import steady_host_memory
from .inputs import BenchInputs, build_bench_models, decode_call, make_inputs, prefill_call
from .machine import load_snapshot, machine_info, nominal_peak_gbs
from .plot import plot_results, require_matplotlib
from .report import format_report, write_json
from .result import BenchResult, Row
from .settings import STAGES, THROUGHPUT_POSITION, BenchSettings
from .sizes import decode_bytes_per_user, state_bytes_per_user
from .timing import Clock, free_memory, is_out_of_memory, spread, time_interleaved

@dataclass
class _Run:
    """What the stages of one run share: the settings, the models (and each one's prefill callable: the
    compiled one in the compiled regime), the fields every row carries, the clock, and which models have left
    which stage (out of memory, failed compile) and why."""

    s: BenchSettings
    models: Dict[str, torch.nn.Module]
    prefills: Dict[str, Callable]
    base: Row
    clock: Clock
    say: Callable[[str], None]
    gone: Dict[Tuple[str, str], str] = field(default_factory=dict)  # (model, stage) -> status of its later rows
    compiles: List[Dict[str, Any]] = field(default_factory=list)
    _eager: Dict[str, torch.nn.Module] = field(default_factory=dict)

    def eager_model(self, name: str) -> torch.nn.Module:
        """A copy of model ``name`` that steps eagerly (the reference a compiled step is checked against)."""
        if name not in self._eager:
            self._eager[name] = copy.deepcopy(self.models[name]).compile_step(False)
        return self._eager[name]

    @property
    def device(self) -> torch.device:
        return self.s.torch_device

    def timed_models(self, stage: str, T: int, rows: List[Row]) -> List[str]:
        """The models still timed in ``stage``; a row saying why for each of the others."""
        names = []
        for name in self.s.models:
            status = self.gone.get((name, stage))
            if status is None:
                names.append(name)
            else:
                rows.append(self.untimed_row(name, stage, T, status))
        return names

    def untimed_row(self, name: str, stage: str, T: int, status: str) -> Row:
        return dict(model=name, stage=stage, seq_len=T, ms=None, status=status, **{**self.base, "compiled": False})

    def out_of_memory(self, name: str, stage: str, T: int) -> Row:
        """The row of a model that ran out of memory in ``stage`` at T; it leaves this and every later stage."""
        self.say(f"{name} T={T}: out of memory in {stage}; skipped (and the longer lengths of {name})")
        for st in STAGES:
            self.gone.setdefault((name, st), f"skipped: out of memory at T={T}")
        free_memory(self.device)
        return self.untimed_row(name, stage, T, "out of memory")

    def compile_first(self, names: List[str], stage: str, T: int, call: Callable[[str], Any],
                      eager_call: Callable[[str], Any], rows: List[Row]) -> Tuple[List[str], Dict[str, Row]]:
        """Compiled regime: one untimed ``call(name)`` per model compiles what the timed calls will run, and
        its output is compared with ``eager_call(name)``'s (the same call, uncompiled). Returns the models
        that compiled and, per model, the fields its row gets (``compile_s``, ``graphs_compiled``); a failure
        (a compile error, a compiled call that computes something else, out of memory) gets its row here and
        the model leaves the stage."""
        if not self.s.compiled:
            return names, {name: {} for name in names}
        ok, fields = [], {}
        for name in names:
            out: Dict[str, Any] = {}
            try:
                record = prime(lambda: out.setdefault("compiled", call(name)),
                               self.models[name] if stage != "prefill" else None)
                if record.failure is None:
                    record.failure = disagreement(out["compiled"], eager_call(name))
            except Exception as err:  # noqa: BLE001 - only out-of-memory is caught
                if not is_out_of_memory(err):
                    raise
                rows.append(self.out_of_memory(name, stage, T))
                continue
            finally:
                out.clear()
            self.compiles.append(dict(model=name, stage=stage, seq_len=T, seconds=round(record.seconds, 2),
                                      graphs=record.graphs, failure=record.failure))
            if record.failure is not None:
                self.failed_compile(name, stage, T, record.failure, rows)
                continue
            ok.append(name)
            fields[name] = dict(compile_s=round(record.seconds, 3), graphs_compiled=record.graphs)
        return ok, fields

    def failed_compile(self, name: str, stage: str, T: int, failure: str, rows: List[Row]) -> None:
        self.say(f"{name} {stage} T={T}: compiling failed ({failure}); not timed (and not at the longer lengths)")
        rows.append(self.untimed_row(name, stage, T, f"compile failed: {failure}"))
        self.gone[(name, stage)] = f"skipped: compile failed at T={T}"

    def timed_row(self, name: str, stage: str, T: int, times: List[float], recompiled: int, **extra: Any) -> Row:
        """A row of ``times`` (ms): the spread of the repeats, the regime, the run's fields and ``extra``. Graphs
        compiled while the stage was timed (``recompiled``) make every row of the stage noisy: a compile
        inside a timed call is not what a call costs."""
        row = dict(model=name, stage=stage, seq_len=T, **spread(times), status="ok", **self.base, **extra)
        if recompiled:
            row["noisy"] = True
            row["noise"] = "; ".join(filter(None, [row.get("noise"),
                                                   f"{recompiled} graph(s) compiled while this stage was timed"]))
        return row


def time_until_steady(run: _Run, calls: Dict[str, Tuple[Callable, Optional[Callable]]], warmup: int, repeats: int,
                      burst: int = 1) -> Tuple[Dict[str, List[float]], Dict[str, str], Dict[str, int]]:
    """:func:`~fuxi_linear.bench.timing.time_interleaved` of ``calls``, then each model whose repeats came out
    noisy (:func:`~fuxi_linear.bench.timing.spread`) timed again on its own, warm-up included, up to
    ``noisy_retries`` more times: a slow spell of the machine (which on a small VM can outlast a whole stage and
    hit every model at once) passes, and the row is the attempt without it. The last attempt's times are kept,
    noisy or not. Returns ``(times, failed, attempts)``: ms per name, ``name -> stage`` of the ones out of
    memory, and how many times each name was timed."""
    times, failed = time_interleaved(calls, run.device, warmup, repeats, burst=burst, clock=run.clock)
    attempts = {name: 1 for name in calls}
    for _ in range(run.s.noisy_retries):
        noisy = [name for name in calls if name not in failed and spread(times[name])["noisy"]]
        if not noisy:
            break
        again, again_failed = time_interleaved({name: calls[name] for name in noisy}, run.device, warmup, repeats,
                                               burst=burst, clock=run.clock)
        for name in noisy:
            attempts[name] += 1
            if name in again_failed:
                failed[name] = again_failed[name]
            else:
                times[name] = again[name]
    return times, failed, attempts


def prefill_stage(run: _Run, T: int, inputs: BenchInputs) -> Tuple[List[Row], Dict[str, Any]]:
    """Prefill at length T: ``model.prefill`` of B users with full histories of T events (encode every event,
    build the decode state / KV cache). Returns the rows and each model's prefilled state (for the decode
    stage).

    1. Set-up: the same ``inputs`` for every model; the KV caches preallocate room for every decode step that
       follows (``capacity``).
    2. Compiled regime: one untimed call per model compiles its graph for length T; its output must agree
       with an eager call's.
    3. Timing: ``warmup`` rounds, then ``repeats`` calls per model, the models round-robin; the output of the
       previous call is dropped before each call, outside the timed region.
    4. Rows: the spread of the repeats, and the decode memory per user of the state the last call built.
    """
    s, rows = run.s, []
    capacity = T + s.steps_per_state + 1
    outputs: Dict[str, Any] = {}

    def call(name: str) -> Any:
        outputs[name] = prefill_call(run.models[name], inputs, capacity, run.prefills[name])
        return outputs[name]

    def drop_previous(name: str) -> tuple:
        outputs.pop(name, None)
        return ()

    names, compiled = run.compile_first(run.timed_models("prefill", T, rows), "prefill", T, call,
                                        lambda name: prefill_call(run.models[name], inputs, capacity), rows)
    graphs = graphs_compiled()
    times, failed, attempts = time_until_steady(
        run, {name: ((lambda name=name: call(name)), (lambda name=name: drop_previous(name))) for name in names},
        s.warmup, s.repeats)
    recompiled = graphs_compiled() - graphs if s.compiled else 0
    states = {}
    for name in names:
        if name in failed:
            outputs.pop(name, None)
            rows.append(run.out_of_memory(name, "prefill", T))
            continue
        states[name] = outputs.pop(name)[1]
        rows.append(run.timed_row(name, "prefill", T, times[name], recompiled, **compiled[name],
                                  attempts=attempts[name], state_bytes_per_user=state_bytes_per_user(states[name], T)))
    for name in s.models:  # a model whose prefill failed to compile still decodes: its state, eager and untimed
        if name not in states and (name, "decode") not in run.gone and \
                "compile failed" in run.gone.get((name, "prefill"), ""):
            states[name] = prefill_call(run.models[name], inputs, capacity)[1]
    return rows, states


def decode_stage(run: _Run, T: int, inputs: BenchInputs, states: Dict[str, Any]) -> List[Row]:
    """Decode at length T: one ``model.step`` (one new event per user, user vectors out) from each model's
    state prefilled at T.

    1. Set-up: every step (warm-up, compile and timed ones) gets a fresh clone of the prefilled state, cloned
       outside the timed region, so that each timed step is a step at exactly length T.
    2. Compiled regime: one untimed step per model compiles its graph (at the first length; later lengths
       reuse it: ``graphs_compiled`` 0); its user vectors and advanced state must agree with an eager step's.
    3. Timing: at least one warm-up round, then ``decode_repeats`` steps per model in bursts of
       ``decode_burst`` steps per model and round, the first of each burst untimed, the models round-robin.
    4. Rows: the spread of the repeats; the decode memory per user; the bytes a step must move at least
       (2x the state for FuXi-Linear, the cache read for a KV cache, plus inputs and outputs) and users per
       second (on CUDA also GB/s and % of the peak bandwidth).
    """
    s, rows = run.s, []
    names = [n for n in run.timed_models("decode", T, rows) if n in states]

    def step(name: str, state) -> Any:
        return decode_call(run.models[name], state, inputs)

    names, compiled = run.compile_first(
        names, "decode", T, lambda name: step(name, states[name].clone()),
        lambda name: run.eager_model(name).step(states[name].clone(), *inputs.step), rows)
    graphs = graphs_compiled()
    times, failed, attempts = time_until_steady(
        run, {name: ((lambda state, name=name: step(name, state)), (lambda name=name: (states[name].clone(),)))
              for name in names},
        s.decode_warmup, s.decode_repeats, burst=s.decode_burst)
    recompiled = graphs_compiled() - graphs if s.compiled else 0
    for name in names:
        if name in failed:
            rows.append(run.out_of_memory(name, "decode", T))
            continue
        failure = step_compile_failure(run.models[name]) if s.compiled else None
        if failure is not None:  # the step fell back to eager code while being timed: not a compiled time
            run.failed_compile(name, "decode", T, failure, rows)
            continue
        row = run.timed_row(name, "decode", T, times[name], recompiled, **compiled[name], attempts=attempts[name],
                            state_bytes_per_user=state_bytes_per_user(states[name], T),
                            bytes_per_step=s.batch_size * decode_bytes_per_user(states[name], T, s.embedding_dim,
                                                                                s.torch_dtype))
        rows.append(_add_rates(row, run))
    return rows


def throughput_stage(run: _Run, N: int) -> Row:
    """FuXi-Linear decode steps of N users at once (GPU default: 64, 4096, 32768 users).

    1. Set-up: an all-zero state of N users at position :data:`THROUGHPUT_POSITION` (a step's work does not
       depend on the values or the history length), stepped in place.
    2. Compiled regime: one untimed step compiles the batch size.
    3. Timing: as the decode stage, FuXi-Linear alone.
    4. Row: the spread, the state per user, bytes per step, users/s (GB/s and % of peak on CUDA).
    """
    s, model, T = run.s, run.models["fuxi-linear"], THROUGHPUT_POSITION
    if ("fuxi-linear", "decode") in run.gone:
        return dict(run.untimed_row("fuxi-linear", "decode-throughput", T, run.gone[("fuxi-linear", "decode")]),
                    batch_size=N)
    rows: List[Row] = []
    try:
        state = model.empty_state(N, run.device)
        state.position.fill_(T)
        inputs = make_inputs(N, 1, s.num_items, s.seed, run.device)
        ok, compiled = run.compile_first(["fuxi-linear"], "decode", T,
                                         lambda name: decode_call(model, state.clone(), inputs),
                                         lambda name: run.eager_model(name).step(state.clone(), *inputs.step),
                                         rows)
        if not ok:
            return dict(rows[-1], stage="decode-throughput", batch_size=N)
        graphs = graphs_compiled()
        timed, failed, attempts = time_until_steady(run, {"step": (lambda: decode_call(model, state, inputs), None)},
                                                    s.decode_warmup, s.decode_repeats, burst=s.decode_burst)
    except Exception as err:  # noqa: BLE001
        if not is_out_of_memory(err):
            raise
        failed = {"step": "setup"}
    if failed:
        run.say(f"fuxi-linear decode of {N} users: out of memory; skipped")
        free_memory(run.device)
        return dict(run.untimed_row("fuxi-linear", "decode-throughput", T, "out of memory"), batch_size=N)
    recompiled = graphs_compiled() - graphs if s.compiled else 0
    row = run.timed_row("fuxi-linear", "decode-throughput", T, timed["step"], recompiled, **compiled["fuxi-linear"],
                        attempts=attempts["step"], state_bytes_per_user=state_bytes_per_user(state, T),
                        bytes_per_step=N * decode_bytes_per_user(state, T, s.embedding_dim, s.torch_dtype))
    row["batch_size"] = N
    del state
    free_memory(run.device)
    return _add_rates(row, run)


def _add_rates(row: Row, run: _Run) -> Row:
    """users/s of a decode row; on CUDA also GB/s of its minimum traffic and % of the peak bandwidth."""
    seconds = row["ms"] / 1e3
    row["users_per_s"] = row["batch_size"] / seconds
    if run.device.type == "cuda" and row.get("bytes_per_step"):
        row["gbs"] = row["bytes_per_step"] / seconds / 1e9
        row["pct_of_peak"] = 100.0 * row["gbs"] / run.base["peak_gbs"] if run.base.get("peak_gbs") else None
    return row


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = print,
                  clock: Clock = time.perf_counter) -> BenchResult:
    """Time prefill and decode of every model at every length (see the module docstring). ``clock``: the host
    clock of CPU timings (a test passes a stub)."""
    s = settings.resolve()
    threads_before = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        return _run(s, log, clock)
    finally:
        torch.set_num_threads(threads_before)


def _run(s: BenchSettings, log: Callable[[str], None], clock: Clock) -> BenchResult:
    device = s.torch_device
    load_before = load_snapshot()
    machine = machine_info(device, s.dtype)
    notes = list(s.notes)
    models = build_bench_models(s)
    peak = s.peak_gbs if s.peak_gbs is not None else (
        nominal_peak_gbs(machine["device_name"]) if device.type == "cuda" else None)
    base = dict(batch_size=s.batch_size, device=device.type, device_name=machine["device_name"], dtype=s.dtype,
                embedding_dim=s.embedding_dim, num_blocks=s.num_blocks, num_heads=s.num_heads, qk_dim=s.qk_dim,
                torch=machine["torch"], triton=machine["triton"], threads=machine["threads"], compiled=s.compiled)
    if peak is not None:
        base["peak_gbs"] = peak
    bar = progress(None, s.progress, total=len(s.seq_lens) * len(STAGES), desc="bench", unit="stage", leave=False)
    run = _Run(s=s, models=models, base=base, clock=clock,
               prefills={name: CompiledPrefill(m) if s.compiled else m.prefill for name, m in models.items()},
               say=(lambda msg: bar.write(msg)) if bar is not None else log)
    rows: List[Row] = []
    try:
        with compile_config(s.compiled), torch.inference_mode(), \
                steady_host_memory(device.type == "cpu") as host_memory:
            if host_memory is not None:
                notes.append(host_memory)
            for T in s.seq_lens:
                inputs = make_inputs(s.batch_size, T, s.num_items, s.seed, device)
                if bar is not None:
                    bar.set_description(f"prefill T={T}" + (" (compiling first)" if s.compiled else ""))
                stage_rows, states = prefill_stage(run, T, inputs)
                rows += stage_rows
                if bar is not None:
                    bar.update(1)
                    bar.set_description(f"decode T={T}")
                rows += decode_stage(run, T, inputs, states)
                del states
                free_memory(device)
                if bar is not None:
                    bar.update(1)
            sweep = [throughput_stage(run, N) for N in s.decode_users]
    finally:
        if bar is not None:
            bar.close()
    load_after = load_snapshot()
    order = {m: i for i, m in enumerate(s.models)}
    rows.sort(key=lambda r: (order[r["model"]], STAGES.index(r["stage"]), r["seq_len"]))
    rows += sweep
    for r in rows:  # the run's load, on every row (the JSON is a list of rows)
        r.update(load_average_before=(load_before["load_average"] or [None])[0],
                 busy_cpus_before=load_before["busy_cpus"],
                 load_average_after=(load_after["load_average"] or [None])[0], busy_cpus_after=load_after["busy_cpus"])
    retried = [r for r in rows if r.get("attempts", 1) > 1]
    if retried:
        notes.append("timed again after noisy repeats (--noisy-retries; the row is the last attempt): " + ", ".join(
            f"{r['model']} {r['stage']} T={r['seq_len']} ({r['attempts']} attempts"
            f"{', still noisy' if r['noisy'] else ''})" for r in retried))
    if peak is not None:
        notes.append(f"% of peak: against {peak:.0f} GB/s ("
                     + ("--peak-gbs" if s.peak_gbs is not None else "the nominal datasheet bandwidth of this GPU")
                     + "); bytes per step = the minimum a step must move (2x the state per user for FuXi-Linear, "
                       "the KV cache read for the baselines, plus inputs and outputs)")
    return BenchResult(settings=s, machine=machine, rows=rows, notes=notes, peak_gbs=peak, load_before=load_before,
                       load_after=load_after, compiles=run.compiles)


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
