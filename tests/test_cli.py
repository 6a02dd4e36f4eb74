"""`fuxi-linear train` / `eval` end to end on tiny synthetic data."""
import json

import pytest
import torch

from fuxi_linear.cli import main
from fuxi_linear.data import leave_one_out, make_synthetic_log
from fuxi_linear.evaluation import most_popular_metrics
from fuxi_linear.training import TrainConfig, evaluate_checkpoint, train

TINY = ["--synthetic-users", "120", "--synthetic-items", "150", "--synthetic-mean-events", "60",
        "--max-seq-len", "40", "--embedding-dim", "32", "--num-blocks", "1", "--num-heads", "2",
        "--temporal-num-periods", "4", "--batch-size", "32", "--num-negatives", "32", "--dropout", "0.1",
        "--lr", "3e-3", "--seed", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--epochs", "6", "--output", str(out)]) == 0
    return out


def test_train_writes_metrics_and_checkpoint(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"ndcg@10", "ndcg@50", "hr@10", "hr@50", "mrr"}
    assert set(metrics["validation"]) >= {"ndcg@10", "epoch"}
    assert metrics["config"]["model"] == "fuxi-linear" and metrics["config"]["max_seq_len"] == 40
    assert (trained / "checkpoint.pt").is_file() and (trained / "last.pt").is_file()
    assert not list(trained.glob("*.tmp"))


def test_short_training_beats_most_popular(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    log = make_synthetic_log(num_users=120, num_items=150, mean_events=60, seed=1)
    pop = most_popular_metrics(leave_one_out(log, 40))
    assert metrics["test"]["ndcg@10"] > pop["ndcg@10"] + 0.02, (metrics["test"], pop)


def test_eval_rescoring_matches_training_run(trained, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(trained / "checkpoint.pt"), "--json", str(out), "--no-progress"]) == 0
    rescored = json.loads(out.read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("ndcg@10", "hr@50", "mrr"):
        assert abs(rescored["test"][key] - metrics["test"][key]) < 1e-9


def test_resume_continues_and_rejects_other_configs(trained, tmp_path):
    cfg = dict(dataset="synthetic", synthetic_users=120, synthetic_items=150, synthetic_mean_events=60,
               max_seq_len=40, embedding_dim=32, num_blocks=1, num_heads=2, temporal_num_periods=4, batch_size=32,
               num_negatives=32, dropout=0.1, lr=3e-3, seed=1, progress=False, output=str(tmp_path / "r"))
    result = train(TrainConfig(epochs=7, **cfg), resume=str(trained / "last.pt"), log=lambda s: None)
    assert [h["epoch"] for h in result["history"]] == list(range(1, 8))
    with pytest.raises(ValueError, match="another configuration"):
        train(TrainConfig(epochs=7, **dict(cfg, embedding_dim=16)), resume=str(trained / "last.pt"),
              log=lambda s: None)


def test_bad_arguments_fail_cleanly(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--dataset", "ml-1m", "--output", str(out), "--no-progress"]) == 2
    assert "needs --data-path" in capsys.readouterr().err
    assert main(["train", "--dataset", "ml-1m", "--data-path", str(tmp_path / "missing"), "--output", str(out),
                 "--no-progress"]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["train", "--model", "gpt"])
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="gpt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a fuxi-linear training checkpoint"):
        evaluate_checkpoint(str(tmp_path / "junk.pt"))
    assert main(["eval", "--checkpoint", str(tmp_path / "junk.pt"), "--no-progress"]) == 2
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fuxi-linear training checkpoint"):
        evaluate_checkpoint(str(tmp_path / "other.pt"))
