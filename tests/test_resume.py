"""Exact resume: training processes killed with SIGKILL right after (or in the middle of) a checkpoint write, at
an epoch's end and inside an epoch, resume from ``last.pt`` and end bit for bit where the uninterrupted run ends
-- weights, optimizer state and every metric -- with dropout on.

The kills are real: ``FUXI_LINEAR_CRASH_AT`` (``fuxi_linear.fault_injection``) makes the training process send
itself SIGKILL at a named point of the N-th checkpoint write, so no Python cleanup runs. Each run is a
subprocess with one torch thread (the CPU reductions then do not depend on the machine's core count)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fuxi_linear.training.checkpoint import (CHECKPOINT_FORMAT, check_resume_scale, load_checkpoint,
                                    remove_stale_temporaries, save_checkpoint)
from fuxi_linear.fault_injection import CRASH_ENV
from fuxi_linear.training.random_streams import seed_step, step_seed
from distributed_entry import threads_at_exit
from fuxi_linear.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
# 25 training examples in batches of 4: 7 optimizer steps per epoch (the last batch holds one example)
FLAGS = ["--synthetic-users", "25", "--synthetic-items", "60", "--synthetic-mean-events", "20", "--max-seq-len", "16",
         "--embedding-dim", "16", "--num-blocks", "1", "--num-heads", "2", "--temporal-num-periods", "2",
         "--num-negatives", "8", "--dropout", "0.3", "--lr", "3e-3", "--seed", "5", "--eval-batch-size", "32",
         "--no-progress", "--device", "cpu"]  # the CPU: bit for bit needs deterministic kernels
ONE = ["--epochs", "3", "--batch-size", "4"]  # one process
TIMING = {"train_seconds", "events_per_s", "users_per_s"}


def _train(output, *extra, crash=None, resume=None, world=1, expect_kill=False, one_process_flags=True):
    extra = (*ONE, *extra) if world == 1 and one_process_flags else extra
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # what a killed run printed is kept
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    args = [*FLAGS, *extra, "--output", str(output)] + (["--resume", str(resume)] if resume else [])
    if world == 1:
        cmd = [sys.executable, "-m", "fuxi_linear", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
               str(REPO / "tests" / "distributed_entry.py"), "train", *args]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if expect_kill:
        killed = run.returncode == -signal.SIGKILL if world == 1 else run.returncode != 0
        assert killed, f"expected a SIGKILL, got rc {run.returncode}\n{run.stdout[-2000:]}{run.stderr[-3000:]}"
        assert "test:" not in run.stdout  # it died before finishing
    else:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        if world > 1:  # every rank left its process group before exiting (tests/distributed_entry.py)
            exits = threads_at_exit(run.stderr)
            assert len(exits) == world and not any("gloo" in names for names in exits.values()), exits
    return run


def _assert_same_run(ours: Path, theirs: Path):
    """Bit for bit: the final weights and AdamW state, every validation and test metric, every epoch's loss."""
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (ours, theirs))
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] and a["position"] is None
    assert a["model_state"].keys() == b["model_state"].keys()
    for name, t in b["model_state"].items():
        assert torch.equal(a["model_state"][name], t), name
    for (ka, sa), (kb, sb) in zip(a["optimizer_state"]["state"].items(), b["optimizer_state"]["state"].items()):
        for key in sb:
            assert torch.equal(sa[key], sb[key]), (kb, key)
    best_a, best_b = (torch.load(d / "checkpoint.pt", weights_only=True)["model_state"] for d in (ours, theirs))
    for name, t in best_b.items():
        assert torch.equal(best_a[name], t), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ours, theirs))
    assert ma["test"] == mb["test"] and ma["validation"] == mb["validation"]
    assert len(ma["history"]) == len(mb["history"])
    for ea, eb in zip(ma["history"], mb["history"]):
        assert {k: v for k, v in ea.items() if k not in TIMING} == {k: v for k, v in eb.items() if k not in TIMING}
    assert not list(ours.glob(".*.tmp"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 3 epochs, no interruption, no step checkpoints (checkpointing draws no randomness)."""
    out = tmp_path_factory.mktemp("resume") / "whole"
    _train(out)
    return out


def test_killed_after_an_epoch_checkpoint_resumes_bit_for_bit(uninterrupted, tmp_path):
    out = tmp_path / "run"
    _train(out, crash="checkpoint.saved:1", expect_kill=True)  # dies right after epoch 1's last.pt
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["position"] is None and ckpt["step"] == 7
    assert not (out / "metrics.json").exists()
    resumed = _train(out, resume=out / "last.pt")
    assert "resumed from" in resumed.stdout and "at the start of epoch 2 (step 7)" in resumed.stdout
    _assert_same_run(out, uninterrupted)


def test_killed_after_a_step_checkpoint_resumes_mid_epoch_bit_for_bit(uninterrupted, tmp_path):
    """--checkpoint-every 3: last.pt at steps 3, 6, 7 (epoch 1's end), 9, ...; killed after the 4th write, inside
    epoch 2 (2 of its 7 batches done), then resumed twice more after later kills."""
    out = tmp_path / "run"
    killed = _train(out, "--checkpoint-every", "3", crash="checkpoint.saved:4", expect_kill=True)
    # the cost of each step checkpoint is logged (the 4th write's line never came: the kill is inside the write)
    assert killed.stdout.count("checkpoint: step") == 2
    assert "checkpoint: step 6 (epoch 1, batch 6/7) ->" in killed.stdout and " MB in " in killed.stdout
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 9 and ckpt["epoch"] == 0 and len(ckpt["history"]) == 1
    assert ckpt["position"]["epoch"] == 1 and ckpt["position"]["batches_done"] == 2
    assert ckpt["position"]["num_batches"] == 7 and ckpt["format"] == CHECKPOINT_FORMAT
    # resumed and killed again at the next step checkpoint (step 12: epoch 2, batch 5)
    again = _train(out, "--checkpoint-every", "3", crash="checkpoint.saved:1", resume=out / "last.pt",
                   expect_kill=True)
    assert "at epoch 2, batch 2/7 (step 9)" in again.stdout
    assert load_checkpoint(out / "last.pt")["position"]["batches_done"] == 5
    _train(out, "--checkpoint-every", "3", resume=out / "last.pt")
    _assert_same_run(out, uninterrupted)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoints"]["writes"] >= 1 and metrics["checkpoints"]["bytes"] > 0


def test_killed_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(uninterrupted, tmp_path):
    """SIGKILL after the new checkpoint is written to its temporary file, before the rename: last.pt is still the
    previous (complete) checkpoint, the resumed run removes the stale temporary file and ends bit for bit."""
    out = tmp_path / "run"
    _train(out, "--checkpoint-every", "5", crash="checkpoint.tmp_written:3", expect_kill=True)
    stale = list(out.glob(".last.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0
    ckpt = load_checkpoint(out / "last.pt")  # writes: step 5, epoch 1's end (7), step 10 (killed before rename)
    assert ckpt["step"] == 7 and ckpt["position"] is None
    resumed = _train(out, "--checkpoint-every", "5", resume=out / "last.pt")
    assert "removed 1 temporary file(s) of an interrupted write" in resumed.stdout
    _assert_same_run(out, uninterrupted)


def test_two_gloo_processes_killed_mid_epoch_resume_bit_for_bit(tmp_path):
    """torchrun, 2 CPU processes, dropout on (each rank its own masks): rank 0 is killed right after a step
    checkpoint inside epoch 2 (torchrun then stops rank 1); the job resumed under torchrun ends bit for bit where
    the uninterrupted 2-process job ends."""
    flags = ["--epochs", "2", "--global-batch-size", "8", "--checkpoint-every", "2"]  # 4 steps per epoch
    whole = tmp_path / "whole"
    _train(whole, *flags, world=2)
    out = tmp_path / "run"
    _train(out, *flags, crash="checkpoint.saved:4", world=2, expect_kill=True)  # steps 2, 4, epoch end, 6
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 6 and ckpt["position"]["batches_done"] == 2 and ckpt["world_size"] == 2
    _train(out, *flags, resume=out / "last.pt", world=2)
    _assert_same_run(out, whole)


def test_one_process_killed_mid_epoch_resumes_on_two(tmp_path):
    """Another number of processes, same global batch (dropout 0, where the runs can agree): one process killed
    after a step checkpoint inside epoch 2, resumed by 2 gloo processes from that step, ends where one process
    running without interruption ends (to float rounding: the sums are split over the ranks)."""
    flags = ["--epochs", "2", "--global-batch-size", "8", "--checkpoint-every", "3", "--dropout", "0"]
    whole, out = tmp_path / "whole", tmp_path / "run"
    _train(whole, *flags, one_process_flags=False)
    _train(out, *flags, one_process_flags=False, crash="checkpoint.saved:3", expect_kill=True)  # steps 3, 4, 6
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 6 and ckpt["position"]["batches_done"] == 2 and ckpt["world_size"] == 1
    resumed = _train(out, *flags, resume=out / "last.pt", world=2)
    assert "at epoch 2, batch 2/4 (step 6)" in resumed.stdout
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (out, whole))
    assert a["step"] == b["step"] == 8 and a["world_size"] == 2
    for name, t in b["model_state"].items():
        if t.is_floating_point():
            err = float((a["model_state"][name].double() - t.double()).norm() / t.double().norm().clamp(min=1e-30))
            assert err < 1e-6, (name, err)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (out, whole))
    assert abs(ma["history"][-1]["train_loss"] - mb["history"][-1]["train_loss"]) < 1e-6
    assert abs(ma["test"]["ndcg@10"] - mb["test"]["ndcg@10"]) < 1e-6


# ------------------------------------------------------------------------------------------------ in process

def test_step_seeds_depend_on_every_coordinate():
    base = step_seed(5, 1, 10, 0)
    others = {step_seed(6, 1, 10, 0), step_seed(5, 2, 10, 0), step_seed(5, 1, 11, 0), step_seed(5, 1, 10, 1)}
    assert base not in others and len(others) == 4
    assert 0 <= base < 2 ** 63 and base == step_seed(5, 1, 10, 0)
    seed_step(5, 1, 10, 0)
    a = torch.rand(3)
    torch.rand(100)
    seed_step(5, 1, 10, 0)  # the stream restarts: what came before does not matter
    assert torch.equal(torch.rand(3), a)


def test_resume_checks(tmp_path):
    mid = {"world_size": 2, "global_batch_size": 8, "train_config": {"batch_size": 4},
           "position": {"epoch": 1, "batches_done": 3}}
    check_resume_scale(mid, "x.pt", 1, 8)  # another world size, same global batch: fine inside an epoch too
    with pytest.raises(ValueError, match="inside epoch 2 with a global batch of 8.*--global-batch-size 8"):
        check_resume_scale(mid, "x.pt", 2, 16)
    # a truncated checkpoint: a clear error naming the file
    save_checkpoint({"format": CHECKPOINT_FORMAT, "model_state": {"w": torch.ones(1000)}}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is not a fuxi-linear training checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    save_checkpoint({"format": 99, "model_state": {}}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="format 99"):
        load_checkpoint(tmp_path / "new.pt")
    (tmp_path / ".last.pt.123.tmp").write_bytes(b"x")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".last.pt.123.tmp"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_position_that_does_not_fit_the_data_fails(tmp_path):
    cfg = dict(dataset="synthetic", synthetic_users=25, synthetic_items=60, synthetic_mean_events=20, max_seq_len=16,
               embedding_dim=16, num_blocks=1, num_heads=2, temporal_num_periods=2, num_negatives=8, dropout=0.0,
               seed=5, batch_size=8, progress=False, epochs=1, checkpoint_every=2)
    train(TrainConfig(output=str(tmp_path / "a"), **cfg), log=lambda s: None)
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    ckpt["position"] = {"epoch": 0, "batches_done": 2, "num_batches": 3, "num_examples": 24, "loss_sum": 1.0,
                        "events": 1.0, "users": 1.0, "seconds": 1.0}
    save_checkpoint(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit this data"):
        train(TrainConfig(output=str(tmp_path / "b"), **dict(cfg, epochs=2)), resume=str(tmp_path / "bad.pt"),
              log=lambda s: None)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive int"):
        TrainConfig(checkpoint_every=0)
