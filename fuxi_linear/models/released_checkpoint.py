"""Loading checkpoints of the authors' released FuXi-Linear implementation (SPEC §8).

The released model stores its parameters under names such as ``_fuxi._attention_layers.{i}._uvqk``; this
module maps them onto :class:`FuXiLinear`, inferring the configuration from the parameter shapes.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import torch

from ..config import FuXiLinearConfig
from ..layers.projection import ProjectionLayout
from ..model import FuXiLinear

_ITEM = "_embedding_module._item_emb.weight"
_POS = "_input_features_preproc._pos_emb.weight"
_LAYER = re.compile(r"_fuxi\._attention_layers\.(\d+)\.(.+)$")


def _unwrap(state_dict: Any) -> Mapping[str, torch.Tensor]:
    """Accept a bare state dict or a training checkpoint holding one, with any key prefix (``module.``...)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    for key in ("state_dict", "model_state_dict", "model"):
        inner = state_dict.get(key)
        if isinstance(inner, Mapping) and any(str(k).endswith(_ITEM) for k in inner):
            state_dict = inner
            break
    prefixes = [k[: -len(_ITEM)] for k in state_dict if isinstance(k, str) and k.endswith(_ITEM)]
    if len(prefixes) != 1:
        raise ValueError(f"not a checkpoint of the released FuXi-Linear model: expected one key ending in {_ITEM!r}")
    prefix = prefixes[0]
    return {k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}


def _require(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"checkpoint is missing {key!r}")
    value = sd[key]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"checkpoint entry {key!r} must be a tensor, got {type(value).__name__}")
    return value


def _has_temporal_skip(sd: Mapping[str, torch.Tensor], num_blocks: int) -> bool:
    """Whether the blocks' temporal channels have the ``alpha``/``beta`` skip parameters (all or none)."""
    present = [all(f"_fuxi._attention_layers.{i}._channel_t.{n}" in sd for n in ("alpha", "beta"))
               for i in range(num_blocks)]
    partial = [any(f"_fuxi._attention_layers.{i}._channel_t.{n}" in sd for n in ("alpha", "beta"))
               for i in range(num_blocks)]
    if any(present) != all(present) or partial != present:
        raise ValueError("checkpoint has the temporal skip parameters _channel_t.alpha/_channel_t.beta in some "
                         "blocks only; expected both in every block (skip on) or in none (skip off)")
    return bool(present and present[0])


def config_from_official_state_dict(state_dict: Any, **overrides: Any) -> FuXiLinearConfig:
    """Infer a :class:`FuXiLinearConfig` from the released model's parameter shapes.

    ``overrides`` set what shapes cannot tell (``dropout``, ``temperature``, ``num_negatives``, ``backend``).
    """
    sd = _unwrap(state_dict)
    num_items = _require(sd, _ITEM).shape[0] - 1
    D = _require(sd, _ITEM).shape[1]
    pos_rows = _require(sd, _POS).shape[0]
    layers = sorted({int(m.group(1)) for k in sd for m in [_LAYER.match(k)] if m})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(f"checkpoint has no contiguous _fuxi._attention_layers.N blocks (found {layers})")
    lp = "_fuxi._attention_layers.0."
    H = _require(sd, lp + "_retention._gamma").shape[0]
    uvqk_layout = ProjectionLayout.of_block_width(_require(sd, lp + "_uvqk").shape[1], D, H)  # ValueError: no fit
    periods = _require(sd, lp + "_channel_t._intervals").to(torch.int64).flatten()
    gamma0 = _require(sd, lp + "_channel_t._gamma")
    learn = gamma0.numel() == periods.numel() and gamma0.numel() > 1
    # the temporal skip connection (alpha o + beta v, the released aug_current) has parameters only when on
    skip = _has_temporal_skip(sd, len(layers))
    emb_p = _require(sd, lp + "_channel_p._emb")
    ffn_hidden = _require(sd, lp + "_mffn.lin1.weight").shape[0]
    if ffn_hidden % D:
        raise ValueError(f"_mffn.lin1 width {ffn_hidden} is not a multiple of D={D}")
    values: Dict[str, Any] = dict(
        num_items=num_items,
        max_seq_len=max(pos_rows - 11, 1),
        embedding_dim=D,
        num_blocks=len(layers),
        num_heads=H,
        qk_dim=uvqk_layout.qk // H,
        ffn_multiply=ffn_hidden // D,
        temporal_periods=tuple(int(p) for p in periods),
        learn_temporal_decay=learn,
        temporal_skip=skip,
        positional_dim=emb_p.shape[1],
        positional_table_size=emb_p.shape[0],
        absolute_position_table_size=pos_rows,
        dropout=0.0,
    )
    values.update(overrides)
    return FuXiLinearConfig(**values)


#: Per-block tensors: the released name (under ``_fuxi._attention_layers.{i}.``) -> ours (under ``blocks.{i}.``).
_BLOCK_NAMES = (
    ("_uvqk", "uvqk"),
    ("_retention._gamma", "retention.decay_logits"),
    ("_channel_t.proj_v.weight", "temporal.proj_v.weight"),
    ("_channel_t.alpha", "temporal.alpha"),
    ("_channel_t.beta", "temporal.beta"),
    ("_channel_p._emb", "positional.table"),
    ("_channel_p._proj_p.weight", "positional.proj_p.weight"),
    ("_channel_p._alpha", "positional.alpha"),
    ("_channel_p._beta", "positional.beta"),
    ("_mffn.lin0.weight", "ffn.lin0.weight"),
    ("_mffn.lin1.weight", "ffn.lin1.weight"),
    ("_mffn.lin2.weight", "ffn.lin2.weight"),
    ("_mffn.lin3.weight", "ffn.lin3.weight"),
)


def released_names(config: FuXiLinearConfig) -> Dict[str, str]:
    """Our ``state_dict`` name -> the released model's name (SPEC §8) for every tensor a released checkpoint
    provides: all of our parameters and the temporal periods. The temporal decay ``b`` and the periods are the
    model's (shared by all blocks), block 0's in the released model; without the temporal skip connection
    there are no ``alpha``/``beta`` entries. The released per-block buffers we derive instead (the later
    blocks' ``_channel_t._gamma``, ``_intervals`` and ``_scale_factor``) are not mapped."""
    names = {"item_embedding.weight": _ITEM, "position_embedding.weight": _POS,
             "temporal.decay_logits": "_fuxi._attention_layers.0._channel_t._gamma",
             "temporal.periods": "_fuxi._attention_layers.0._channel_t._intervals"}
    for i in range(config.num_blocks):
        for theirs, mine in _BLOCK_NAMES:
            if mine in ("temporal.alpha", "temporal.beta") and not config.temporal_skip:
                continue
            names[f"blocks.{i}.{mine}"] = f"_fuxi._attention_layers.{i}.{theirs}"
    return names


def from_official_state_dict(state_dict: Any, config: Optional[FuXiLinearConfig] = None, **overrides: Any) -> FuXiLinear:
    """Build a :class:`FuXiLinear` holding the weights of a released-implementation checkpoint.

    Args:
        state_dict: the released model's ``state_dict()`` (or a checkpoint dict containing it).
        config: the configuration to use; inferred from the shapes when None (``overrides`` apply then).
    Returns:
        the model in eval mode, float32, on the CPU.
    """
    sd = _unwrap(state_dict)
    cfg = config if config is not None else config_from_official_state_dict(sd, **overrides)
    if _has_temporal_skip(sd, cfg.num_blocks) != cfg.temporal_skip:
        raise ValueError(f"config.temporal_skip={cfg.temporal_skip}, but the checkpoint "
                         f"{'has' if not cfg.temporal_skip else 'lacks'} the temporal skip parameters "
                         "_channel_t.alpha/_channel_t.beta")
    model = FuXiLinear(cfg)
    ours: Dict[str, torch.Tensor] = {mine: _require(sd, theirs) for mine, theirs in released_names(cfg).items()}
    # a fixed decay is stored as one zero (b = 0 for every period): broadcast to the model's (Ht,)
    ours["temporal.decay_logits"] = ours["temporal.decay_logits"].float().flatten().expand(
        cfg.temporal_num_periods).clone()
    ours["temporal.periods"] = ours["temporal.periods"].to(torch.int64).flatten()
    expected = model.state_dict()
    for name, value in ours.items():
        if name not in expected:
            raise ValueError(f"internal mapping names an unknown parameter {name!r}")
        want = expected[name]
        value = value.reshape(want.shape) if value.numel() == want.numel() else value
        if value.shape != want.shape:
            raise ValueError(f"checkpoint tensor for {name} has shape {tuple(value.shape)}, expected {tuple(want.shape)}")
        ours[name] = value.to(want.dtype)
    missing = set(expected) - set(ours)
    if missing:
        raise ValueError(f"checkpoint does not provide {sorted(missing)}")
    model.load_state_dict(ours)
    return model.eval()
