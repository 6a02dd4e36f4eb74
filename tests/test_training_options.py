"""`train` options for speed and schedule: bf16 autocast, torch.compile (with the custom ops), learning-rate
warm-up, early stopping, throughput at L = 1024, and the clear errors of bad combinations."""
import json

import pytest
import torch

from fuxi_linear.training import precision_and_compile
from fuxi_linear.models import build_model
from fuxi_linear.cli import main
from fuxi_linear.data import leave_one_out, make_synthetic_log
from fuxi_linear.training.objective import SampledSoftmaxObjective, example_keys
from fuxi_linear.ops import chunk_decay_attention
from fuxi_linear.training.warmup_and_early_stopping import should_stop_early, warmup_lr
from fuxi_linear.training import TrainConfig, load_checkpoint, seed_everything, train

SMALL = dict(dataset="synthetic", synthetic_users=60, synthetic_items=80, synthetic_mean_events=40, max_seq_len=30,
             embedding_dim=16, num_blocks=1, num_heads=2, temporal_num_periods=2, positional_dim=8, batch_size=16,
             num_negatives=16, dropout=0.0, lr=3e-3, seed=3, progress=False)
quiet = lambda s: None  # noqa: E731


def test_bf16_run_lowers_the_loss_like_fp32(tmp_path):
    fp32 = train(TrainConfig(epochs=4, output=str(tmp_path / "fp32"), **SMALL), log=quiet)
    bf16 = train(TrainConfig(epochs=4, precision="bf16", output=str(tmp_path / "bf16"), **SMALL), log=quiet)
    a = [h["train_loss"] for h in fp32["history"]]
    b = [h["train_loss"] for h in bf16["history"]]
    assert b[-1] < 0.75 * b[0] and a[-1] < 0.75 * a[0], (a, b)
    for x, y in zip(a, b):
        assert abs(x - y) < 0.02 * x, (a, b)
    assert a != b  # autocast really ran the encoder in bf16
    assert bf16["config"]["precision"] == "bf16"
    state = load_checkpoint(tmp_path / "bf16" / "last.pt")["model_state"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())  # float32 master weights


def test_operator_states_stay_float32_under_autocast():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 200, 2, 16, generator=gen).bfloat16() for _ in range(3))
    g = -torch.rand(2, 200, 2, generator=gen) * 0.1
    o_ref, s_ref = chunk_decay_attention(q, k, v, g=g, output_final_state=True, backend="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, s = chunk_decay_attention(q, k, v, g=g, output_final_state=True, backend="cpu")
    assert s.dtype == torch.float32 and o.dtype == torch.bfloat16
    assert torch.equal(s, s_ref) and torch.equal(o, o_ref)


def test_bf16_objective_on_the_kernels_matches_the_cpu_path():
    """The GPU path of a bf16 step (Triton custom ops, here in the interpreter) against the CPU path under the
    same autocast: the same loss and gradients, and both within bf16 rounding of the float32 step."""
    ids = torch.randint(1, 51, (3, 10), generator=torch.Generator().manual_seed(1))
    ts = torch.arange(10)[None].repeat(3, 1) * 100 + 1_600_000_000
    args = (ids, ts, torch.tensor([10, 5, 7]), ts[:, -1] + 50, torch.tensor([1, 2, 3]),
            example_keys(0, 0, torch.arange(3)))
    grads = {}
    for backend, dtype in (("cpu", None), ("cpu", torch.bfloat16), ("triton", torch.bfloat16)):
        torch.manual_seed(0)
        model = build_model("fuxi-linear", num_items=50, max_seq_len=20, embedding_dim=16, num_blocks=1,
                            num_heads=2, dropout=0.0, temporal_num_periods=2, positional_dim=8, backend=backend)
        loss, _ = SampledSoftmaxObjective(model, dtype)(*args)
        loss.backward()
        grads[backend, dtype] = torch.cat([p.grad.flatten() for p in model.parameters()])
    fp32, ref16, tri16 = grads["cpu", None], grads["cpu", torch.bfloat16], grads["triton", torch.bfloat16]
    # Both paths round the same bf16 operands; their float32 sums differ in order, which flips a few bf16
    # roundings downstream: measured 2e-7 .. 3.6e-5 relative over seeds 0-2 and FFN widths 1, 2, 4 (2026-12-05),
    # against 1.8e-4 .. 2.5e-4 between bf16 and float32
    assert float((tri16 - ref16).norm()) < 1e-4 * float(ref16.norm())
    assert 0 < float((ref16 - fp32).norm()) < 2e-2 * float(fp32.norm())


def test_bf16_unavailable_fails_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(precision_and_compile, "_bf16_autocast_works", lambda device: False)
    out = tmp_path / "never"
    assert main(["train", "--precision", "bf16", "--output", str(out), "--no-progress"]) == 2
    assert "--precision bf16" in capsys.readouterr().err
    assert not out.exists()


def test_compiled_objective_traces_the_custom_ops_and_matches_eager():
    """torch.compile through the Triton custom ops (in the interpreter here): one graph node per channel and the
    same loss and gradients as eager."""
    torch.manual_seed(0)
    model = build_model("fuxi-linear", num_items=50, max_seq_len=20, embedding_dim=16, num_blocks=1, num_heads=2,
                        dropout=0.0, temporal_num_periods=2, positional_dim=8, backend="triton")
    ids = torch.randint(1, 51, (3, 10))
    ts = torch.arange(10)[None].repeat(3, 1) * 100 + 1_600_000_000
    args = (ids, ts, torch.tensor([10, 5, 7]), ts[:, -1] + 50, torch.tensor([1, 2, 3]),
            example_keys(0, 0, torch.arange(3)))
    objective = SampledSoftmaxObjective(model)

    def loss_and_grads(fn):
        model.zero_grad()
        loss, _ = fn(*args)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager = loss_and_grads(objective)
    traced = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def recording_backend(gm, example_inputs):
        traced.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot_eager(gm, example_inputs)

    try:  # the model's input checks cause (expected) graph breaks: dynamo warns about them
        compiled = loss_and_grads(torch.compile(objective, backend=recording_backend))
    finally:
        torch._dynamo.reset()
    assert traced.count("fuxi_linear.decay_attention_fwd.default") == 3  # retention, temporal, positional
    assert torch.allclose(compiled[0], eager[0], rtol=1e-6)
    for a, b in zip(compiled[1], eager[1]):
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()), float((a - b).norm() / b.norm())


def test_compiled_training_run_matches_eager(tmp_path):
    cfg = dict(SMALL, synthetic_users=12, batch_size=12)  # one step: one compilation
    eager = train(TrainConfig(epochs=1, output=str(tmp_path / "eager"), **cfg), log=quiet)
    try:
        compiled = train(TrainConfig(epochs=1, compile=True, compile_backend="aot_eager",
                                     output=str(tmp_path / "compiled"), **cfg), log=quiet)
    finally:
        torch._dynamo.reset()
    assert compiled["config"]["compile"] and compiled["config"]["compile_backend"] == "aot_eager"
    assert abs(compiled["history"][0]["train_loss"] - eager["history"][0]["train_loss"]) < 1e-5
    assert abs(compiled["test"]["ndcg@10"] - eager["test"]["ndcg@10"]) < 1e-6


def test_bad_compile_backends_fail_before_training(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--compile", "--compile-backend", "no-such-backend", "--output", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--compile-backend 'no-such-backend' is not a torch.compile backend" in err and "aot_eager" in err
    assert main(["train", "--compile-backend", "aot_eager", "--output", str(out), "--no-progress"]) == 2
    assert "--compile-backend needs --compile" in capsys.readouterr().err

    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    torch._dynamo.register_backend(broken, name="broken_for_test")
    with pytest.raises(ValueError, match="--compile-backend broken_for_test cannot compile on cpu here"):
        precision_and_compile.check_compile_backend("broken_for_test", torch.device("cpu"))
    assert not out.exists()


def test_warmup_schedule_is_applied_to_the_optimizer(tmp_path):
    assert [warmup_lr(1.0, s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(2e-3, 0, 0) == 2e-3
    # one AdamW step moves every weight with a clear gradient by exactly lr (m / sqrt(v) = sign(g) at step 1)
    cfg = dict(SMALL, synthetic_users=20, batch_size=20, weight_decay=0.0)
    moves = {}
    for warmup in (0, 4):
        result = train(TrainConfig(epochs=1, warmup_steps=warmup, output=str(tmp_path / f"w{warmup}"), **cfg),
                       log=quiet)
        assert result["history"][0]["steps"] == 1 and result["config"]["warmup_steps"] == warmup
        ckpt = load_checkpoint(tmp_path / f"w{warmup}" / "last.pt")
        seed_everything(cfg["seed"])
        start = build_model("fuxi-linear", **ckpt["model_kwargs"]).state_dict()
        moves[warmup] = max(float((ckpt["model_state"][k] - start[k]).abs().max())
                            for k in start if start[k].is_floating_point())
    assert abs(moves[0] - 3e-3) < 1e-3 * 3e-3 and abs(moves[4] - 0.75e-3) < 1e-3 * 0.75e-3, moves
    history = train(TrainConfig(epochs=3, warmup_steps=5, output=str(tmp_path / "h"), **dict(SMALL, batch_size=30)),
                    log=quiet)["history"]
    assert [h["steps"] for h in history] == [2, 4, 6]
    assert [h["lr"] for h in history] == pytest.approx([3e-3 * 2 / 5, 3e-3 * 4 / 5, 3e-3])


def test_patience_stops_early_and_a_resumed_run_stays_stopped(tmp_path):
    assert not should_stop_early({"epoch": 2}, 3, None)
    assert not should_stop_early({"epoch": 2}, 3, 2) and should_stop_early({"epoch": 2}, 4, 2)
    # a learning rate far below float32 resolution: validation never improves after epoch 1
    cfg = dict(SMALL, lr=1e-12)
    result = train(TrainConfig(epochs=10, patience=2, output=str(tmp_path / "p"), **cfg), log=quiet)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["early_stopping"] == {"patience": 2, "stopped_after_epoch": 3, "best_epoch": 1}
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["config"]["patience"] == 2
    resumed = train(TrainConfig(epochs=10, patience=2, output=str(tmp_path / "p"), **cfg),
                    resume=str(tmp_path / "p" / "last.pt"), log=quiet)
    assert len(resumed["history"]) == 3 and resumed["early_stopping"]["stopped_after_epoch"] == 3
    with pytest.raises(ValueError, match="patience .* needs the validation split"):
        TrainConfig(patience=2, split="2way")


def test_long_histories_run_and_report_throughput(tmp_path):
    """--max-seq-len 1024 on synthetic data (the Kuai presets' length) on a CPU, with events/s and users/s."""
    out = tmp_path / "long"
    assert main(["train", "--max-seq-len", "1024", "--synthetic-users", "6", "--synthetic-items", "100",
                 "--synthetic-mean-events", "1100", "--embedding-dim", "16", "--num-blocks", "1", "--num-heads", "2",
                 "--temporal-num-periods", "2", "--num-negatives", "16", "--batch-size", "3", "--epochs", "1",
                 "--no-progress", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    epoch = metrics["history"][0]
    train_set = leave_one_out(make_synthetic_log(num_users=6, num_items=100, mean_events=1100, seed=42), 1024).train
    assert epoch["events"] == sum(len(train_set[i]["item_ids"]) for i in range(len(train_set)))
    assert epoch["users"] == len(train_set) and epoch["events"] / epoch["users"] > 900
    assert epoch["events_per_s"] == pytest.approx(epoch["events"] / epoch["train_seconds"], rel=0.01)
    assert metrics["throughput"]["events_per_s"] > 0 and metrics["throughput"]["users_per_s"] > 0


def test_batch_flags_conflict_and_world_size_must_divide_the_global_batch(tmp_path, capsys, monkeypatch):
    out = tmp_path / "never"
    assert main(["train", "--batch-size", "8", "--global-batch-size", "16", "--output", str(out),
                 "--no-progress"]) == 2
    assert "not both" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun --nproc_per_node 3 would; fails before joining a group
    assert main(["train", "--global-batch-size", "16", "--output", str(out), "--no-progress"]) == 2
    assert "--global-batch-size 16 is not divisible by the world size 3" in capsys.readouterr().err
    assert not out.exists()
