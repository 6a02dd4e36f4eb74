"""Data-parallel training: sharding, the per-example negatives, the global loss normalisation, and two real
gloo processes under torchrun whose parameters match a single process stepping on the same global batches."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fuxi_linear.models import build_model
from fuxi_linear.training.checkpoint import check_resume_scale
from fuxi_linear.data import leave_one_out, make_synthetic_log
from fuxi_linear.training.distributed import combine_metrics, global_batches, rank_share, shard_range
from fuxi_linear.evaluation import ranking_metrics
from fuxi_linear.training.objective import SampledSoftmaxObjective, example_keys, hashed_negatives
from distributed_entry import threads_at_exit
from fuxi_linear.training import TrainConfig, evaluate_checkpoint, train

REPO = Path(__file__).resolve().parents[1]


def test_global_batches_are_a_seeded_permutation_per_epoch():
    batches = global_batches(23, 5, seed=11, epoch=3)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(23))
    assert np.array_equal(np.concatenate(batches), torch.randperm(23, generator=torch.Generator().manual_seed(14)))
    assert not np.array_equal(np.concatenate(batches), np.concatenate(global_batches(23, 5, seed=11, epoch=4)))


def test_rank_shares_and_eval_shards_partition_the_examples():
    batch = np.arange(10, 21)
    for world in (1, 2, 3, 4, 11, 13):
        shares = [rank_share(batch, r, world) for r in range(world)]
        assert np.array_equal(np.concatenate(shares), batch)
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
        bounds = [shard_range(11, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == 11
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_combined_shard_metrics_equal_the_whole_set():
    ranks = torch.randint(1, 300, (101,), generator=torch.Generator().manual_seed(0))
    whole = ranking_metrics(ranks, mrr_cap=50)
    parts = []
    for lo, hi in (shard_range(101, r, 3) for r in range(3)):
        part = ranking_metrics(ranks[lo:hi], mrr_cap=50)
        part["num_examples"] = float(hi - lo)
        parts.append(part)
    combined = combine_metrics(parts + [None])  # a rank with no examples contributes nothing
    assert combined["num_examples"] == 101.0
    for key, value in whole.items():
        assert abs(combined[key] - value) < 1e-12, key


def test_hashed_negatives_are_uniform_and_keyed_by_example_position_and_epoch():
    keys = example_keys(7, 0, torch.arange(2000))
    positions = torch.arange(2000) % 37
    neg = hashed_negatives(keys, positions, 50, 10)
    assert neg.shape == (2000, 50) and neg.dtype == torch.int64
    assert int(neg.min()) >= 1 and int(neg.max()) <= 10
    counts = torch.bincount(neg.flatten(), minlength=11)[1:].double()
    expected = neg.numel() / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40, counts  # 9 degrees of freedom: P(chi2 > 40) < 1e-5 for uniform draws
    assert torch.equal(neg, hashed_negatives(example_keys(7, 0, torch.arange(2000)), positions, 50, 10))
    # changing any key changes the draws (collisions of a whole 50-vector over 10 items are ~impossible)
    for other in (hashed_negatives(example_keys(7, 1, torch.arange(2000)), positions, 50, 10),
                  hashed_negatives(example_keys(8, 0, torch.arange(2000)), positions, 50, 10),
                  hashed_negatives(keys, positions + 1, 50, 10),
                  hashed_negatives(example_keys(7, 0, torch.arange(1, 2001)), positions, 50, 10)):
        assert (other != neg).any(dim=1).all()
    # columns are not copies of each other
    assert (neg[:, 0] != neg[:, 1]).float().mean() > 0.8


def _batch(B, T, num_items, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    ids = torch.randint(1, num_items + 1, (B, T), generator=gen) * (torch.arange(T)[None] < lengths[:, None])
    ts = 1_600_000_000 + torch.cumsum(torch.randint(1, 5000, (B, T), generator=gen), 1)
    query = ts.gather(1, (lengths - 1)[:, None]).squeeze(1) + 100
    return ids, ts, lengths, query, torch.randint(1, num_items + 1, (B,), generator=gen)


def test_objective_sums_add_up_over_any_split_of_the_batch():
    """The identity a data-parallel step rests on: the loss sums and counts of the ranks' shares add up to those
    of the whole batch, and so do their gradients."""
    torch.manual_seed(0)
    model = build_model("fuxi-linear", num_items=40, max_seq_len=12, embedding_dim=16, num_blocks=1, num_heads=2,
                        temporal_num_periods=2, positional_dim=8, dropout=0.0, num_negatives=8).double()
    objective = SampledSoftmaxObjective(model)
    ids, ts, lengths, query, target = _batch(6, 12, 40, 1)
    keys = example_keys(3, 2, torch.tensor([5, 9, 0, 14, 2, 7]))

    def run(rows):
        model.zero_grad()
        loss, count = objective(ids[rows], ts[rows], lengths[rows], query[rows], target[rows], keys[rows])
        loss.backward()
        return loss.detach(), int(count), [p.grad.clone() for p in model.parameters()]

    whole = run(slice(0, 6))
    first, second = run(slice(0, 2)), run(slice(2, 6))
    assert whole[1] == int(lengths.sum()) == first[1] + second[1]
    assert first[1] != second[1] * 2 / 4  # the shares hold different numbers of positions per example
    assert abs(float(whole[0] - first[0] - second[0])) < 1e-10 * float(whole[0])
    for g, a, b in zip(whole[2], first[2], second[2]):
        assert torch.allclose(g, a + b, rtol=1e-9, atol=1e-12)


def test_resume_scale_and_batch_divisibility_checks():
    cfg = TrainConfig(global_batch_size=12)
    assert cfg.batch_sizes(3) == (4, 12)
    with pytest.raises(ValueError, match="--global-batch-size 12 is not divisible by the world size 5"):
        cfg.batch_sizes(5)
    assert TrainConfig(batch_size=8).batch_sizes(4) == (8, 32)
    ckpt = {"world_size": 2, "global_batch_size": 16, "train_config": {"batch_size": 8}}
    check_resume_scale(ckpt, "x.pt", 4, 16)  # other world size, same global batch: fine
    check_resume_scale(ckpt, "x.pt", 2, 32)  # same world size, another batch: allowed as for one process
    with pytest.raises(ValueError, match="pass --global-batch-size 16"):
        check_resume_scale(ckpt, "x.pt", 1, 8)
    legacy = {"train_config": {"batch_size": 8}}  # checkpoints from before: one process
    with pytest.raises(ValueError, match="1 process"):
        check_resume_scale(legacy, "x.pt", 2, 16)


# ---------------------------------------------------------------------------------------------------- processes

TINY = dict(dataset="synthetic", synthetic_users=25, synthetic_items=60, synthetic_mean_events=20, max_seq_len=16,
            embedding_dim=16, num_blocks=1, num_heads=2, temporal_num_periods=2, num_negatives=8,
            dropout=0.0, lr=3e-3, seed=5, eval_batch_size=7, progress=False)
FLAGS = ["--synthetic-users", "25", "--synthetic-items", "60", "--synthetic-mean-events", "20", "--max-seq-len", "16",
         "--embedding-dim", "16", "--num-blocks", "1", "--num-heads", "2", "--temporal-num-periods", "2",
         "--num-negatives", "8", "--dropout", "0", "--lr", "3e-3", "--seed", "5", "--eval-batch-size", "7",
         "--no-progress"]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def test_two_gloo_processes_match_one_process(tmp_path):
    """torchrun, 2 CPU processes, resuming a single-process epoch-1 checkpoint (another world size with the same
    global batch of 8): epoch 2 (25 examples = 8 + 8 + 8 + 1, so rank 1 holds nothing in the last step) must
    give the parameters of one process running epoch 2 on the same global batches, write metrics.json once, and
    its sharded evaluation must equal a single-process evaluation of its checkpoint."""
    log = make_synthetic_log(num_users=25, num_items=60, mean_events=20, seed=5)
    assert len(leave_one_out(log, 16).train) == 25
    single = train(TrainConfig(epochs=1, batch_size=8, output=str(tmp_path / "one"), **TINY), log=lambda s: None)
    assert single["distributed"] == {"world_size": 1, "backend": None, "per_rank_batch_size": 8,
                                     "global_batch_size": 8}
    epoch1 = tmp_path / "one" / "last.pt"
    reference = train(TrainConfig(epochs=2, batch_size=8, output=str(tmp_path / "ref"), **TINY),
                      resume=str(epoch1), log=lambda s: None)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tests" / "distributed_entry.py"), "train", *FLAGS, "--epochs", "2", "--global-batch-size", "8",
         "--resume", str(epoch1), "--output", str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # each rank left its process group completely before exiting: no gloo thread runs into interpreter shutdown
    # (they used to, and a rank then sometimes died at exit with "terminate called without an active exception")
    exits = threads_at_exit(run.stderr)
    assert len(exits) == 2 and not any("gloo" in names for names in exits.values()), exits
    assert run.stdout.count("wrote ") == 1 and run.stdout.count("epoch 2: train loss") == 1, run.stdout
    assert "2 processes (gloo), batch 4 per process = 8 global" in run.stdout
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and metrics["history"][-1]["steps"] == 8
    assert not list((tmp_path / "ddp").glob("*.tmp"))

    start = torch.load(epoch1, weights_only=True)["model_state"]
    ours = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    theirs = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    assert ours["world_size"] == 2 and ours["global_batch_size"] == 8
    for name, p in theirs["model_state"].items():
        if not p.is_floating_point():
            continue
        assert _relative(ours["model_state"][name], p) < 1e-6, name
        update = p.double() - start[name].double()
        if update.norm() > 0:  # the two epochs' updates themselves agree (a far stricter check than the weights)
            assert _relative(ours["model_state"][name].double() - start[name].double(), update) < 1e-4, name
    assert abs(metrics["history"][-1]["train_loss"] - reference["history"][-1]["train_loss"]) < 1e-6
    # the sharded validation and test equal one process ranking the same checkpoints
    rescored = evaluate_checkpoint(str(tmp_path / "ddp" / "checkpoint.pt"), log=lambda s: None)
    for key in ("ndcg@10", "hr@50", "mrr", "num_examples"):
        assert abs(rescored["test"][key] - metrics["test"][key]) < 1e-12, key
    last = evaluate_checkpoint(str(tmp_path / "ddp" / "last.pt"), log=lambda s: None)
    for key in ("ndcg@10", "hr@10", "mrr"):
        assert abs(last["validation"][key] - metrics["history"][-1]["validation"][key]) < 1e-12, key
