"""The paper's presets build the paper's models (SPEC §10): parameter counts of the authors' released
configurations, and our parameters mapped one-to-one onto the released names and shapes (SPEC §8)."""
import argparse

import pytest
import torch

from fuxi_linear.cli import _add_train_arguments, config_from_args
from fuxi_linear.models.released_checkpoint import released_names
from fuxi_linear.evaluation import evaluate_full_ranking
from fuxi_linear.models.registry import build_model
from fuxi_linear.training.train_config import PRESETS, TrainConfig, model_kwargs

#: Parameters without the item table, counted from the authors' released configuration files (SPEC §10).
RELEASED_COUNTS = {"kuairand": 1_197_600, "kuairec": 1_197_600, "ml-20m": 7_448_144}


def released_shapes(L, D, blocks, H, dqk, F, Ht, P, Nmax, skip, learn_gamma, num_items=10):
    """The released model's parameters and their shapes, written out from SPEC §8 (not from our code)."""
    shapes = {"_embedding_module._item_emb.weight": (num_items + 1, D),
              "_input_features_preproc._pos_emb.weight": (L + 11, D)}
    for i in range(blocks):
        p = f"_fuxi._attention_layers.{i}."
        shapes[p + "_uvqk"] = (D, 4 * D + 2 * H * dqk)
        shapes[p + "_retention._gamma"] = (H,)
        if learn_gamma and i == 0:  # block 0's learnable b, shared by every block
            shapes[p + "_channel_t._gamma"] = (Ht,)
        shapes[p + "_channel_t.proj_v.weight"] = (D, D)
        if skip:
            shapes[p + "_channel_t.alpha"] = (2 * Ht,)
            shapes[p + "_channel_t.beta"] = (2 * Ht,)
        shapes[p + "_channel_p._emb"] = (Nmax, P)
        shapes[p + "_channel_p._proj_p.weight"] = (D, D)
        shapes[p + "_channel_p._alpha"] = (1,)
        shapes[p + "_channel_p._beta"] = (1,)
        shapes[p + "_mffn.lin0.weight"] = (D, 3 * D)
        shapes[p + "_mffn.lin1.weight"] = (F, D)
        shapes[p + "_mffn.lin2.weight"] = (D, F)
        shapes[p + "_mffn.lin3.weight"] = (F, D)
    return shapes


RELEASED = {
    "kuairand": released_shapes(L=1024, D=128, blocks=4, H=4, dqk=32, F=128, Ht=8, P=32, Nmax=1152, skip=True,
                                learn_gamma=True),
    "ml-20m": released_shapes(L=200, D=256, blocks=8, H=8, dqk=32, F=256, Ht=8, P=32, Nmax=211, skip=False,
                              learn_gamma=False),
}
RELEASED["kuairec"] = RELEASED["kuairand"]


def preset_model(name):
    cfg = TrainConfig(**{**PRESETS[name], "dataset": "synthetic"})  # the preset's model, without its data
    unit = "s" if name == "ml-20m" else "ms"
    return build_model("fuxi-linear", **model_kwargs(cfg, 10, unit))


@pytest.mark.parametrize("name", sorted(RELEASED_COUNTS))
def test_preset_parameter_count_is_the_released_one(name):
    model = preset_model(name)
    count = sum(p.numel() for n, p in model.named_parameters() if n != "item_embedding.weight")
    assert count == RELEASED_COUNTS[name]
    # the hand-written released shapes give the same count (so the shape table itself is right)
    released = sum(torch.Size(s).numel() for k, s in RELEASED[name].items() if "_item_emb" not in k)
    assert released == RELEASED_COUNTS[name]


@pytest.mark.parametrize("name", sorted(RELEASED_COUNTS))
def test_preset_parameters_map_one_to_one_onto_released_names(name):
    model = preset_model(name)
    mapping = released_names(model.config)
    params = dict(model.named_parameters())
    mapped = {ours: theirs for ours, theirs in mapping.items() if ours in params}
    assert set(mapped) == set(params), "every parameter has exactly one released name"
    assert len(set(mapped.values())) == len(mapped), "no two parameters share a released name"
    assert set(mapped.values()) == set(RELEASED[name]), "and every released parameter is one of ours"
    for ours, theirs in mapped.items():
        want = RELEASED[name][theirs]
        got = tuple(params[ours].shape)  # (_uvqk is stored (in, out) in both; the linear weights (out, in))
        assert got == want, (ours, got, want)


def test_presets_state_the_released_values():
    kuai, ml = PRESETS["kuairand"], PRESETS["ml-20m"]
    assert PRESETS["kuairec"] == dict(kuai, dataset="kuairec")
    for preset in (kuai, ml):
        assert preset["ffn_multiply"] == 1 and preset["epochs"] == 101 and preset["num_negatives"] == 128
        assert preset["temperature"] == 0.05 and preset["exclude_history"] == "all"
        assert "batch_size" not in preset  # global batches only: the same training on any number of processes
    assert (kuai["global_batch_size"], kuai["lr"], kuai["dropout"]) == (128, 1e-3, 0.5)
    assert kuai["temporal_skip"] and kuai["learn_temporal_decay"] and kuai["positional_table_multiple"] == 128
    assert (ml["global_batch_size"], ml["lr"], ml["dropout"]) == (1024, 4e-3, 0.2)
    assert not ml["temporal_skip"] and not ml["learn_temporal_decay"] and ml["positional_table_multiple"] == 1
    cfg = preset_model("ml-20m").config
    assert (cfg.positional_table_size, cfg.absolute_position_table_size, cfg.ffn_hidden_dim) == (211, 211, 256)
    assert preset_model("kuairand").config.positional_table_size == 1152


def test_preset_global_batch_splits_over_processes():
    cfg = TrainConfig(**{**PRESETS["ml-20m"], "dataset": "synthetic"})
    assert cfg.batch_sizes(1) == (1024, 1024) and cfg.batch_sizes(4) == (256, 1024)
    assert TrainConfig(**{**PRESETS["kuairand"], "dataset": "synthetic"}).batch_sizes(2) == (64, 128)


def _train_args(*flags):
    p = argparse.ArgumentParser()
    _add_train_arguments(p)
    return p.parse_args(list(flags))


def test_cli_flags_over_a_preset():
    cfg = config_from_args(_train_args("--preset", "ml-20m", "--data-path", "x"))
    assert (cfg.global_batch_size, cfg.temporal_skip, cfg.ffn_multiply) == (1024, False, 1)
    cfg = config_from_args(_train_args("--preset", "ml-20m", "--data-path", "x", "--batch-size", "32",
                                       "--ffn-multiply", "2", "--exclude-history", "window"))
    assert (cfg.global_batch_size, cfg.batch_size, cfg.ffn_multiply, cfg.exclude_history) == (None, 32, 2, "window")
    cfg = config_from_args(_train_args("--no-temporal-skip", "--positional-table-multiple", "1", "--keep-history"))
    assert (cfg.temporal_skip, cfg.positional_table_multiple, cfg.exclude_history) == (False, 1, "none")
    kwargs = model_kwargs(cfg, 10, "s")
    assert kwargs["temporal_skip"] is False and kwargs["positional_table_multiple"] == 1
    assert kwargs["ffn_multiply"] == 1  # written out: a checkpoint rebuilds the same model whatever the default
    # a preset's FFN width does not reach HSTU (no FFN); an explicit one is an error
    assert "ffn_multiply" not in model_kwargs(config_from_args(_train_args(
        "--preset", "kuairand", "--data-path", "x", "--model", "hstu")), 10, "ms")
    with pytest.raises(ValueError, match="ffn_multiply"):
        config_from_args(_train_args("--model", "hstu", "--ffn-multiply", "2"))
    with pytest.raises(ValueError, match="keep-history"):
        config_from_args(_train_args("--keep-history", "--exclude-history", "window"))
    with pytest.raises(ValueError, match="exclude_history"):
        TrainConfig(exclude_history="some")
    assert TrainConfig(exclude_history=False).exclude_history == "none"  # older checkpoints stored a bool


def test_exclude_history_window_excludes_only_the_input_window():
    """Hand case: 6 items with scores 6..1 (item 1 best); the target is item 4 (score 3). The user's history
    holds items 1, 2, 3 but the input window (the last L events) only item 2, so the target ranks 4th with
    nothing excluded, 1st with the whole history excluded and 3rd with the window excluded."""
    items = torch.zeros(7, 6)
    items[1:, 0] = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    batch = {"user_vec": torch.tensor([[1.0, 0, 0, 0, 0, 0]]), "target_ids": torch.tensor([4]),
             "history_ids": torch.tensor([[1, 2, 3]]), "item_ids": torch.tensor([[2, 0]])}

    def ranks(mode):
        m = evaluate_full_ranking(lambda b: b["user_vec"], items, [batch], ks=(1, 3), exclude_history=mode)
        return m["hr@1"], m["hr@3"], m["mrr"]

    assert ranks("none") == (0.0, 0.0, 0.25)
    assert ranks("all") == (1.0, 1.0, 1.0)
    assert ranks("window") == (0.0, 1.0, pytest.approx(1 / 3))
    assert ranks(True) == ranks("all") and ranks(False) == ranks("none")
    with pytest.raises(ValueError, match="exclude_history"):
        evaluate_full_ranking(lambda b: b["user_vec"], items, [batch], exclude_history="recent")


def test_item_embedding_truncated_at_two_standard_deviations():
    torch.manual_seed(0)
    w = build_model("fuxi-linear", num_items=20000, embedding_dim=64).item_embedding.weight
    assert w.abs().max() <= 0.04 + 1e-7
    # a normal truncated at +-2 sigma has std 0.02 * 0.8796 (not 0.02: untruncated, or truncated at +-100 sigma)
    assert abs(w.std().item() - 0.02 * 0.8796) < 2e-4
