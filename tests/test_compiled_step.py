"""The compiled decode step (``FuXiLinear.compile_step``): one graph, equal to the eager step and to a fresh
prefill of the longer history, shared by batch sizes, pools and the serving loop; the eager fallback when
compiling fails (one warning), and bad inputs still reported.

The compiling tests share one inductor compile of one small float32 model (about 25-40 s on 2 shared cores
with a cold inductor cache, a few seconds with a warm one). Where a C++ compiler exists (the one inductor would
use, looked up before trying), a failed compile FAILS those tests: the model would silently step eagerly, so a
compiler or tracing regression must not pass as a skip. They are skipped only where there is no compiler."""
import copy
import shutil
import warnings

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import fuxi_linear.decoding.compiled_step as compiled_step
from error_bounds import check_errors
from fuxi_linear.serving import Decoder
from model_helpers import random_histories, tiny_model


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def _prefilled(model, lengths, cut, seed=4):
    """A state prefilled with each history but its last ``cut`` events, and what the steps need."""
    ids, ts, _, ts_ext = random_histories(model.config.num_items, torch.tensor(lengths), seed=seed)
    lengths = torch.tensor(lengths)
    prefix = lengths - cut
    pad = torch.where(torch.arange(ids.shape[1])[None] < prefix[:, None], ids, 0)
    with torch.no_grad():
        _, state = model.prefill(pad, ts, prefix, ts_ext[torch.arange(len(lengths)), prefix])
    return state, ids, ts, ts_ext, prefix


def _events(ids, ts, ts_ext, p):
    rows = torch.arange(len(p))
    return ids[rows, p], ts[rows, p], ts_ext[rows, p + 1]


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


class _CountCalls:
    """Counts the calls that reach the compiled graph (so that a test cannot pass on two eager steps)."""

    def __init__(self, step):
        self.step, self.inner, self.calls = step, step._compiled, 0

    def __enter__(self):
        def counted(*args):
            self.calls += 1
            return self.inner(*args)

        self.step._compiled = counted
        return self

    def __exit__(self, *exc):
        self.step._compiled = self.inner
        assert self.step.failure is None


#: Every compiled test uses states of this many rows: the graph has a fixed pool size until it sees a second
#: one (then dynamo compiles it again with a symbolic one), and one compile is all the tests pay for.
POOL = 6
LENGTHS = [9, 5, 7, 6, 8, 4]


def inductor_cxx():
    """The C++ compiler inductor would use (``torch._inductor.config.cpp.cxx``: ``$CXX`` or g++ on Linux, the
    same search order), or None when none of them is on the PATH."""
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    for cxx in candidates:
        if cxx and shutil.which(cxx):
            return shutil.which(cxx)
    return None


@pytest.fixture(scope="module")
def compiled_model():
    """A small float32 model with the compiled step, compiled by one warm-up step. No C++ compiler: skipped
    (the reason says so); a compiler but a failed compile: an error of every test that uses it."""
    cxx = inductor_cxx()
    if cxx is None:
        from torch._inductor import config

        pytest.skip(f"no C++ compiler for inductor on this machine (looked for {config.cpp.cxx})")
    model = tiny_model(dtype=torch.float32).compile_step()
    state, ids, ts, ts_ext, prefix = _prefilled(model, LENGTHS, 2)
    graphs = _graphs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.step(state, *_events(ids, ts, ts_ext, prefix))
    if model._compiled_step.failure is not None:
        pytest.fail(f"compiling the decode step failed although a C++ compiler exists ({cxx}): "
                    f"{model._compiled_step.failure}", pytrace=False)
    assert not [w for w in caught if "compile_step" in str(w.message)]
    assert _graphs() > graphs  # it compiled (so that the tests' "no new graph" checks can fail)
    return model


def test_decode_step_traces_as_one_graph():
    """No graph break anywhere in the step (a break would bring the per-operation overhead back)."""
    model = tiny_model(dtype=torch.float32)
    state, ids, ts, ts_ext, prefix = _prefilled(model, [6, 4], 1)
    events = torch.stack([*_events(ids, ts, ts_ext, prefix), torch.arange(2)])
    with torch.no_grad():
        explanation = torch._dynamo.explain(compiled_step.packed_decode_step)(
            model.step_operands(), events, state.retention, state.temporal, state.positional,
            state.last_timestamp, state.position)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_step_equals_eager_and_a_longer_prefill(compiled_model):
    eager = tiny_model(dtype=torch.float32)
    state, ids, ts, ts_ext, prefix = _prefilled(eager, LENGTHS, 2)
    s_eager, s_compiled = state, state.clone()
    rows = torch.arange(POOL)
    graphs = _graphs()
    errors = {}
    with _CountCalls(compiled_model._compiled_step) as counted, torch.no_grad():
        for j in range(2):
            p = prefix + j
            events = _events(ids, ts, ts_ext, p)
            u_eager, _ = eager.step(s_eager, *events)
            u_compiled, _ = compiled_model.step(s_compiled, *events)
            longer = eager.prefill(torch.where(torch.arange(ids.shape[1])[None] <= p[:, None], ids, 0), ts, p + 1,
                                   ts_ext[rows, p + 1])
            errors[f"step{j}_vs_eager"] = rel(u_compiled, u_eager)
            errors[f"step{j}_vs_longer_prefill"] = rel(u_compiled, longer[0])
    for name, a, b, c in zip(("retention", "temporal", "positional", "last", "position"), s_compiled.tensors(),
                             s_eager.tensors(), longer[1].tensors()):
        if a.dtype == torch.int64:
            assert torch.equal(a, b) and torch.equal(a, c), name
        else:
            errors[f"state_{name}_vs_eager"] = rel(a, b)
            errors[f"state_{name}_vs_longer_prefill"] = rel(a, c)
    check_errors(errors)
    assert counted.calls == 2 and _graphs() == graphs  # both steps ran the warm-up's graph


def test_compiled_pool_steps_touch_only_their_rows_and_share_the_graph(compiled_model):
    """Steps of 3 and 2 users in the pool (other batch sizes than the warm-up's whole state) run in the same
    graph and equal the eager step; the other rows stay bit for bit."""
    eager = tiny_model(dtype=torch.float32)
    pool, ids, ts, ts_ext, prefix = _prefilled(eager, [8, 6, 7, 5, 9, 4], 1, seed=7)
    assert pool.num_users == POOL
    compiled_pool = pool.clone()
    graphs = _graphs()
    errors = {}
    with _CountCalls(compiled_model._compiled_step) as counted:
        for chosen in ([4, 0, 2], [5, 1]):
            rows = torch.tensor(chosen)
            events = tuple(e[rows] for e in _events(ids, ts, ts_ext, prefix))
            before = compiled_pool.clone()
            with torch.no_grad():
                u_eager, _ = eager.step(pool, *events, state_indices=rows)
                u_compiled, _ = compiled_model.step(compiled_pool, *events, state_indices=rows)
            errors[f"{len(chosen)}_users"] = rel(u_compiled, u_eager)
            others = torch.tensor([r for r in range(POOL) if r not in chosen])
            for i, (a, b, c) in enumerate(zip(compiled_pool.tensors(), before.tensors(), pool.tensors())):
                dim = 1 if a.dim() > 1 else 0
                assert torch.equal(a.index_select(dim, others), b.index_select(dim, others))
                if a.dtype == torch.int64:
                    assert torch.equal(a, c)
                else:
                    errors[f"{len(chosen)}_users_state_{i}"] = rel(a.index_select(dim, rows), c.index_select(dim, rows))
    check_errors(errors)
    assert counted.calls == 2 and _graphs() == graphs


def test_compiled_step_serves_the_decoder(compiled_model):
    """The serving loop on a CPU runs the compiled step (rows of its pool) with the same results, in the same
    graph."""
    eager = tiny_model(dtype=torch.float32)
    ids, ts, lengths, ts_ext = random_histories(40, torch.tensor([6, 4, 5]), seed=2)
    rows = torch.arange(3)
    out = {}
    graphs = _graphs()
    with _CountCalls(compiled_model._compiled_step) as counted:
        for name, model in (("eager", eager), ("compiled", compiled_model)):
            decoder = Decoder(model, max_users=POOL, device="cpu")
            decoder.admit(["a", "b", "c"], ids, ts, lengths, ts_ext[rows, lengths])
            out[name] = decoder.step(["c", "a"], torch.tensor([3, 9]), ts_ext[[2, 0], [5, 6]],
                                     ts_ext[[2, 0], [5, 6]] + 30)
    assert counted.calls == 1 and _graphs() == graphs
    check_errors({"decoder_step": rel(out["compiled"], out["eager"])})


def test_compiled_step_still_reports_bad_inputs(compiled_model):
    state, ids, ts, ts_ext, prefix = _prefilled(compiled_model, [6, 4, 5], 1)
    items, times, queries = _events(ids, ts, ts_ext, prefix)
    with pytest.raises(ValueError, match="padding id 0"):
        compiled_model.step(state, torch.zeros_like(items), times, queries)
    with pytest.raises(TypeError, match="timestamps must be int64"):
        compiled_model.step(state, items, times.double(), queries)


def _failing_compile(error):
    def compile_(fn, options):
        def compiled(*args, **kwargs):
            raise error
        return compiled
    return compile_


@pytest.mark.parametrize("how", ["torch.compile raises", "the first call raises"])
def test_a_failed_compile_warns_once_and_steps_eagerly(monkeypatch, how):
    calls = []

    def refuse(fn, options):
        calls.append(1)
        raise RuntimeError("torch.compile is not supported on this platform")

    def fail_at_first_call(fn, options):
        calls.append(1)
        return _failing_compile(torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: no working C++ "
                                                                      "compiler found"))(fn, options)

    monkeypatch.setattr(compiled_step, "_compile", refuse if how == "torch.compile raises" else fail_at_first_call)
    model, eager = tiny_model(dtype=torch.float32).compile_step(), tiny_model(dtype=torch.float32)
    state, ids, ts, ts_ext, prefix = _prefilled(model, [6, 4, 5], 2)
    s_eager = state.clone()
    for j in range(2):
        events = _events(ids, ts, ts_ext, prefix + j)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            u, _ = model.step(state, *events)
        ours = [w for w in caught if "compile_step" in str(w.message)]
        assert len(ours) == (1 if j == 0 else 0)
        if j == 0:
            assert issubclass(ours[0].category, RuntimeWarning) and "decode steps run eagerly" in str(ours[0].message)
        u_eager, _ = eager.step(s_eager, *events)
        assert torch.equal(u, u_eager)  # the very same eager computation
    assert len(calls) == 1 and model._compiled_step.failure is not None
    assert all(torch.equal(a, b) for a, b in zip(state.tensors(), s_eager.tensors()))


def test_bad_input_is_not_taken_for_a_failed_compile(monkeypatch):
    """With a compile failure and inputs the eager step rejects too (unvalidated), the eager error is raised
    and compiling stays on; an error of the compiled step that is not a compile failure is raised as is."""
    model = tiny_model(dtype=torch.float32).compile_step()
    state, ids, ts, ts_ext, prefix = _prefilled(model, [6, 4, 5], 1)
    items, times, queries = _events(ids, ts, ts_ext, prefix)
    monkeypatch.setattr(compiled_step, "_compile",
                        _failing_compile(torch._dynamo.exc.TorchDynamoException("shape mismatch while tracing")))
    with pytest.raises(IndexError):  # the eager step's embedding rejects an item beyond the table
        model.step(state, items + 1000, times, queries, validate=False)
    assert model._compiled_step.failure is None
    monkeypatch.setattr(compiled_step, "_compile", _failing_compile(RuntimeError("index out of bounds: 0 <= tmp2")))
    model.compile_step()
    with pytest.raises(RuntimeError, match="index out of bounds"):
        model.step(state, items, times, queries)
    assert model._compiled_step.failure is None


def test_compile_step_switches_off_and_survives_a_copy():
    model = tiny_model(dtype=torch.float32)
    assert model.compile_step() is model and model._compiled_step is not None
    twin = copy.deepcopy(model)
    assert twin._compiled_step is not None and twin._compiled_step._compiled is None
    assert model.compile_step(False)._compiled_step is None
