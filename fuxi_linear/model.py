"""The FuXi-Linear model (SPEC §6): item/position embeddings, L blocks, L2-normalised user vectors,
sampled-softmax training and O(1)-per-event decode."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import FuXiLinearConfig
from .decode_state import DecodeState
from .history_inputs import check_history, check_step_events
from .layers.block import FuXiLinearBlock
from .layers.temporal import TemporalEncoding, TemporalFeatures, temporal_periods
from .retrieval import SequentialRetrievalMixin, l2_normalize


class FuXiLinear(SequentialRetrievalMixin, nn.Module):
    """FuXi-Linear sequential recommender.

    Histories are right-padded: ``item_ids (B, T)`` int64 with 0 after each user's ``lengths[b]`` events,
    ``timestamps (B, T)`` int64 (entries past a length are ignored), ``query_timestamps (B,)`` int64 = the time
    of the request after the last event (the target's time in training and evaluation).
    """

    def __init__(self, config: FuXiLinearConfig):
        super().__init__()
        if not isinstance(config, FuXiLinearConfig):
            raise TypeError(f"config must be a FuXiLinearConfig, got {type(config).__name__}")
        self.config = config
        c = config
        D = c.embedding_dim
        self._init_input_layer(c.num_items, D, c.absolute_position_table_size, c.dropout)
        periods = (torch.tensor(c.temporal_periods, dtype=torch.int64) if c.temporal_periods is not None else
                   temporal_periods(c.temporal_base, c.temporal_start, c.temporal_stride, c.temporal_num_periods))
        self.temporal = TemporalEncoding(periods, c.learn_temporal_decay, c.temporal_max_log_decay)
        self.blocks = nn.ModuleList(
            FuXiLinearBlock(D, c.num_heads, c.qk_dim, c.ffn_hidden_dim, c.temporal_num_periods, c.positional_dim,
                            c.positional_table_size, c.dropout)
            for _ in range(c.num_blocks)
        )

    # ------------------------------------------------------------------ inputs
    def _check(self, item_ids, timestamps, lengths, query_timestamps) -> None:
        check_history(item_ids, timestamps, lengths, query_timestamps, self.config.num_items,
                      self.config.max_positions)

    # ------------------------------------------------------------------ full histories
    def _forward_padded(self, item_ids, timestamps, lengths, query_timestamps) -> torch.Tensor:
        T = item_ids.shape[1]
        positions = torch.arange(T, device=item_ids.device)
        x = self._embed(item_ids, positions[None, :])
        feats = self.temporal(timestamps, lengths, query_timestamps)
        for block in self.blocks:
            x, _ = self._block(block, x, feats, None, None, False)
        return x

    def _forward_packed(self, item_ids, timestamps, lengths, query_timestamps, output_final_state: bool):
        """Runs the valid events only, packed as one sequence with ``cu_seqlens``; returns
        ``(y: (total, D), valid mask (B, T), per-block channel states or None)``."""
        B, T = item_ids.shape
        dev = item_ids.device
        valid = torch.arange(T, device=dev)[None, :] < lengths[:, None]
        positions = torch.arange(T, device=dev)[None, :].expand(B, T)[valid][None, :]  # (1, total)
        cu_seqlens = F.pad(torch.cumsum(lengths.long(), 0), (1, 0))
        x = self._embed(item_ids[valid][None, :], positions)
        feats = self.temporal(timestamps, lengths, query_timestamps)
        feats = TemporalFeatures(q=feats.q[valid][None], k=feats.k[valid][None], g=feats.g[valid][None])
        states = []
        for block in self.blocks:
            x, s = self._block(block, x, feats, positions, cu_seqlens, output_final_state)
            states.append(s)
        return x[0], valid, (states if output_final_state else None)

    def _block(self, block, x, feats, positions, cu_seqlens, output_final_state):
        return block(x, feats if self.config.use_temporal else None, positions=positions, cu_seqlens=cu_seqlens,
                     output_final_state=output_final_state, backend=self.config.backend)

    def encode(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
        packed: bool = False,
    ) -> torch.Tensor:
        """User vectors at every position.

        Args:
            item_ids: ``(B, T)`` int64, 0-padded after each user's ``lengths[b]`` events.
            timestamps: ``(B, T)`` int64; entries past a user's length are ignored. Decreasing times are legal
                (their gaps clamp to 0: no decay).
            lengths: ``(B,)`` int64 in [1, T].
            query_timestamps: ``(B,)`` int64, the time of the request after each user's last event.
            packed: run only the valid events, packed with ``cu_seqlens`` (faster when lengths vary a lot).
        Returns:
            ``(B, T, D)`` L2-normalised user vectors (float32 for a float32 model); zero at padding.
        """
        self._check(item_ids, timestamps, lengths, query_timestamps)
        item_ids, lengths = item_ids.long(), lengths.long()
        T = item_ids.shape[1]
        used = int(lengths.max())  # columns past the longest history are padding everywhere: skip them
        if packed:
            y, valid, _ = self._forward_packed(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps,
                                               False)
            out = y.new_zeros(item_ids.shape[0], used, y.shape[-1])
            out[valid] = y
        else:
            out = self._forward_padded(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps)
            out = out * (item_ids[:, :used] != 0).unsqueeze(-1).to(out.dtype)
        out = l2_normalize(out)
        return F.pad(out, (0, 0, 0, T - used))

    # ------------------------------------------------------------------ serving
    def prefill(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
    ) -> Tuple[torch.Tensor, DecodeState]:
        """Encode whole histories once; returns the user vector at each user's last event ``(B, D)`` and the
        :class:`DecodeState` from which :meth:`step` appends events. Arguments as in :meth:`encode`."""
        self._check(item_ids, timestamps, lengths, query_timestamps)
        item_ids, lengths = item_ids.long(), lengths.long()
        used = int(lengths.max())
        y, _, states = self._forward_packed(item_ids[:, :used], timestamps[:, :used], lengths, query_timestamps,
                                            True)
        last = torch.cumsum(lengths, 0) - 1
        state = DecodeState(
            retention=torch.stack([s[0] for s in states]),
            temporal=torch.stack([s[1] for s in states]),
            positional=torch.stack([s[2] for s in states]),
            last_timestamp=timestamps.gather(1, (lengths - 1)[:, None]).squeeze(1).clone(),
            position=lengths.clone(),
        )
        return l2_normalize(y[last]), state

    def step(
        self,
        state: DecodeState,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        query_timestamps: torch.Tensor,
    ) -> Tuple[torch.Tensor, DecodeState]:
        """Append one event per user in O(1) of the history length.

        Args:
            state: from :meth:`prefill` or an earlier step; it is advanced IN PLACE and returned.
            item_ids: ``(N,)`` int64 ids of the new events (no padding: 1..num_items).
            timestamps: ``(N,)`` int64 times of the new events.
            query_timestamps: ``(N,)`` int64 request times after the new events.
        Returns:
            ``(user vectors (N, D), state)``.
        """
        if not isinstance(state, DecodeState):
            raise TypeError(f"state must be a DecodeState, got {type(state).__name__}")
        N = state.num_users
        check_step_events(item_ids, timestamps, query_timestamps, N, self.config.num_items, "state", state.device)
        if N and int(state.position.max()) >= self.config.max_positions:
            raise ValueError(
                f"a user would reach position {int(state.position.max())}, beyond the model's position tables "
                f"({self.config.max_positions} positions); re-prefill the most recent events instead"
            )
        item_ids = item_ids.long()
        positions = state.position
        x = self._embed(item_ids, positions)
        feats = self.temporal.features(timestamps, query_timestamps, timestamps - state.last_timestamp)
        for i, block in enumerate(self.blocks):
            states = (state.retention[i], state.temporal[i], state.positional[i])
            x = block.step(x, feats if self.config.use_temporal else None, positions, states,
                           backend=self.config.backend)
        state.last_timestamp.copy_(timestamps)
        state.position.add_(1)
        return l2_normalize(x), state
