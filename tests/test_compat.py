"""Released-checkpoint import: our model equals the SPEC transcription on the released parameter names."""
import pytest
import torch

from fuxi_linear import FuXiLinear
from fuxi_linear.models.released_checkpoint import config_from_official_state_dict, from_official_state_dict
from spec_oracle import encode_one_user, random_official_state_dict


def _histories(num_items, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 9
    lengths = torch.tensor([9, 5, 1])
    ids = torch.randint(1, num_items + 1, (B, T), generator=g)
    ids[torch.arange(T)[None] >= lengths[:, None]] = 0
    gaps = torch.randint(0, 40, (B, T + 1), generator=g)
    gaps[0, 3] = -7  # a decreasing timestamp: legal, its gap clamps at 0
    ts = 1_700_000_000 + torch.cumsum(gaps, 1)
    query = ts[torch.arange(B), lengths]
    return ids, ts[:, :T].contiguous(), lengths, query


# (learnable gamma, temporal skip connection, chunked positional table): the released Kuai configuration, the
# released ML-20M one (fixed gamma, no skip, table L + 11, F = D), and the two mixed ones
RELEASED_VARIANTS = [(True, True, True), (False, False, False), (False, True, True), (True, False, True)]


@pytest.mark.parametrize("learn_gamma,temporal_skip,chunked", RELEASED_VARIANTS)
def test_encode_matches_spec_transcription(learn_gamma, temporal_skip, chunked):
    sd = random_official_state_dict(learn_gamma=learn_gamma, temporal_skip=temporal_skip, chunked=chunked,
                                    ffn_mult=1 if not temporal_skip else 2, seed=1 if learn_gamma else 2)
    model = from_official_state_dict(sd)
    assert model.config.learn_temporal_decay == learn_gamma
    assert model.config.temporal_skip == temporal_skip
    assert model.config.positional_table_size == (128 if chunked else 31)
    assert ("blocks.0.temporal.alpha" in model.state_dict()) == temporal_skip
    ids, ts, lengths, query = _histories(model.config.num_items)
    with torch.no_grad():
        y32 = model.encode(ids, ts, lengths, query)
        y64 = model.double().encode(ids, ts, lengths, query)
    for b in range(ids.shape[0]):
        n = int(lengths[b])
        want = encode_one_user(sd, ids[b, :n].tolist(), ts[b, :n].tolist(), int(query[b]))
        assert (y64[b, :n] - want).abs().max() < 1e-6
        assert (y32[b, :n].double() - want).abs().max() < 1e-4
        assert torch.all(y32[b, n:] == 0)


def test_config_inferred_from_shapes():
    sd = random_official_state_dict(D=48, H=3, dqk=4, num_layers=3, Ht=3, P=6, L=150, ffn_mult=3,
                                    periods=[1024, 8192, 65536])
    cfg = config_from_official_state_dict(sd)
    assert (cfg.embedding_dim, cfg.num_heads, cfg.qk_dim, cfg.num_blocks) == (48, 3, 4, 3)
    assert cfg.temporal_periods == (1024, 8192, 65536) and cfg.positional_dim == 6
    assert cfg.positional_table_size == 256 and cfg.absolute_position_table_size == 161
    assert cfg.ffn_multiply == 3 and cfg.num_items == 30


def test_wrapped_and_prefixed_checkpoints_load():
    sd = random_official_state_dict()
    wrapped = {"model_state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}
    a, b = from_official_state_dict(sd), from_official_state_dict(wrapped)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_released_ml20m_style_checkpoint_imports_and_matches_the_loops():
    """SPEC §10's ML-20M shape: no temporal skip, fixed gamma (a (1) zero buffer), F = D, table L + 11, and
    second timestamps with the 16^m periods; float64 to 1e-6 against the loop transcription, and decode."""
    sd = random_official_state_dict(D=32, H=4, dqk=8, num_layers=2, Ht=4, P=8, L=20, ffn_mult=1,
                                    learn_gamma=False, temporal_skip=False, chunked=False,
                                    periods=[16 ** m for m in range(4)], seed=11)
    assert "_fuxi._attention_layers.0._channel_t.alpha" not in sd
    model = from_official_state_dict(sd).double()
    c = model.config
    assert (c.ffn_hidden_dim, c.temporal_skip, c.learn_temporal_decay, c.positional_table_size) == (32, False, False, 31)
    ids, ts, lengths, query = _histories(c.num_items, seed=12)
    with torch.no_grad():
        y = model.encode(ids, ts, lengths, query)
        for b in range(ids.shape[0]):
            n = int(lengths[b])
            want = encode_one_user(sd, ids[b, :n].tolist(), ts[b, :n].tolist(), int(query[b]))
            assert (y[b, :n] - want).abs().max() < 1e-6
        # decode after import: prefill 5 events of user 0 and step through the rest
        _, state = model.prefill(ids[:1, :5], ts[:1, :5], torch.tensor([5]), ts[:1, 5])
        for t in range(5, 9):
            nxt = ts[:1, t + 1] if t + 1 < 9 else query[:1]
            user, state = model.step(state, ids[:1, t], ts[:1, t], nxt)
        want = encode_one_user(sd, ids[0].tolist(), ts[0].tolist(), int(query[0]))[-1]
        assert (user[0] - want).abs().max() < 1e-6


def test_skip_connection_must_match_the_config():
    with_skip = random_official_state_dict(seed=6)
    no_skip = random_official_state_dict(seed=6, temporal_skip=False)
    with pytest.raises(ValueError, match="temporal_skip"):
        from_official_state_dict(with_skip, config=config_from_official_state_dict(no_skip))
    with pytest.raises(ValueError, match="temporal_skip"):
        from_official_state_dict(no_skip, config=config_from_official_state_dict(with_skip))
    partial = dict(with_skip)
    del partial["_fuxi._attention_layers.1._channel_t.alpha"], partial["_fuxi._attention_layers.1._channel_t.beta"]
    with pytest.raises(ValueError, match="some blocks only"):
        from_official_state_dict(partial)


def test_prefill_step_after_import_matches_encode():
    sd = random_official_state_dict(seed=3)
    model = from_official_state_dict(sd).double()
    ids, ts, lengths, query = _histories(model.config.num_items, seed=4)
    full = torch.tensor([9, 9, 9])
    ids = torch.randint(1, model.config.num_items + 1, ids.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model.encode(ids, ts, full, query)
        _, state = model.prefill(ids, ts, torch.tensor([6, 6, 6]), ts[:, 6])
        for t in range(6, 9):
            nxt = ts[:, t + 1] if t + 1 < 9 else query
            user, state = model.step(state, ids[:, t], ts[:, t], nxt)
            assert (user - ref[:, t]).abs().max() < 1e-9


def test_bad_checkpoints():
    with pytest.raises(TypeError, match="state_dict"):
        from_official_state_dict([1, 2])
    with pytest.raises(ValueError, match="_item_emb"):
        from_official_state_dict({"foo": torch.zeros(1)})
    sd = random_official_state_dict()
    del sd["_fuxi._attention_layers.1._mffn.lin2.weight"]
    with pytest.raises(ValueError, match="lin2"):
        from_official_state_dict(sd)
    assert isinstance(from_official_state_dict(random_official_state_dict()), FuXiLinear)
