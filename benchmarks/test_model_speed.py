"""Model-level benchmarks: prefill (encode a whole history of T events for B users, building the decode
state / KV cache) and decode (one ``step``: append one event per user and produce its user vector, from a
state prefilled at length T) of FuXi-Linear, HSTU, FuXi-alpha and SASRec on the same random inputs.

Each decode round gets a fresh ``state.clone()`` made outside the timed region (``benchmark.pedantic``'s
``setup``), so every timed step runs at exactly length T. Every model runs in the regime of
``FUXI_BENCH_COMPILE`` (compiled on a CPU by default: prefill through
:class:`fuxi_linear.bench.CompiledPrefill`, decode through each model's ``compile_step``), compiled by an
untimed call before its benchmark. ``fuxi-linear bench`` runs the same grid and prints the speed-up table.
"""
from __future__ import annotations

import pytest
import torch

from fuxi_linear.bench import (BENCH_MODELS, BenchSettings, CompiledPrefill, build_bench_models, decode_call,
                               make_inputs, prefill_call, state_bytes_per_user)
from fuxi_linear.bench.compile import compile_config, step_compile_failure

DECODE_ROUNDS = {"cuda": 50, "cpu": 15}


@pytest.fixture(scope="session")
def settings(bench_env) -> BenchSettings:
    return BenchSettings(device=str(bench_env.device), seq_lens=list(bench_env.seq_lens),
                         batch_size=bench_env.batch_size, dtype=bench_env.dtype, warmup=1,
                         decode_repeats=DECODE_ROUNDS[bench_env.device.type], progress=False,
                         compile=bench_env.compile, **bench_env.model).resolve()


@pytest.fixture(scope="session")
def models(settings):
    with compile_config(settings.compiled):  # dynamo's limits of a compiled run, for the whole session
        yield build_bench_models(settings)


@pytest.fixture(scope="session")
def prefills(settings, models):
    """Each model's prefill callable: compiled in the compiled regime."""
    return {name: CompiledPrefill(m) if settings.compiled else m.prefill for name, m in models.items()}


@pytest.fixture(scope="session")
def inputs_cache():
    return {}


def _inputs(cache, settings, T):
    if T not in cache:
        cache[T] = make_inputs(settings.batch_size, T, settings.num_items, settings.seed, settings.torch_device)
    return cache[T]


@pytest.mark.parametrize("model_name", BENCH_MODELS)
def test_prefill(benchmark, bench_env, settings, models, prefills, inputs_cache, model_name, seq_len):
    model, inputs = models[model_name], _inputs(inputs_cache, settings, seq_len)
    capacity = seq_len + settings.steps_per_state + 1
    benchmark.group = f"prefill T={seq_len} B={settings.batch_size}"
    benchmark.extra_info.update(model=model_name, stage="prefill", seq_len=seq_len, batch_size=settings.batch_size,
                                compiled=settings.compiled)

    @bench_env.synced
    def run():
        with torch.inference_mode():
            return prefill_call(model, inputs, capacity, prefills[model_name])

    if settings.compiled:
        run()  # compiles the graph of this length, untimed
    user, state = benchmark(run)
    benchmark.extra_info["state_bytes_per_user"] = state_bytes_per_user(state, seq_len)
    assert user.shape == (settings.batch_size, settings.embedding_dim)


@pytest.mark.parametrize("model_name", BENCH_MODELS)
def test_decode(benchmark, bench_env, settings, models, inputs_cache, model_name, seq_len):
    model, inputs = models[model_name], _inputs(inputs_cache, settings, seq_len)
    with torch.inference_mode():
        _, state = prefill_call(model, inputs, seq_len + settings.steps_per_state + 1)
    benchmark.group = f"decode T={seq_len} B={settings.batch_size}"
    benchmark.extra_info.update(model=model_name, stage="decode", seq_len=seq_len, batch_size=settings.batch_size,
                                state_bytes_per_user=state_bytes_per_user(state, seq_len), compiled=settings.compiled)

    def fresh_state():
        with torch.inference_mode():
            s = state.clone()
        if bench_env.gpu:
            torch.cuda.synchronize(bench_env.device)
        return (s,), {}

    @bench_env.synced
    def run(s):
        with torch.inference_mode():
            return decode_call(model, s, inputs)

    if settings.compiled:
        run(*fresh_state()[0])  # compiles the step (at the first length; later ones reuse its graph), untimed
    user, _ = benchmark.pedantic(run, setup=fresh_state, rounds=settings.decode_repeats, warmup_rounds=1,
                                 iterations=1)
    assert user.shape == (settings.batch_size, settings.embedding_dim)
    failure = step_compile_failure(model)
    assert failure is None, f"{model_name}'s compiled step fell back to eager steps: {failure}"
