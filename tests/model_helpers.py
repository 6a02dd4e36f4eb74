"""Small models and random histories shared by the model tests."""
import torch

from fuxi_linear import FuXiLinear, FuXiLinearConfig


def tiny_model(dtype=torch.float64, **overrides):
    values = dict(num_items=40, max_seq_len=30, embedding_dim=16, num_blocks=2, num_heads=2, qk_dim=4,
                  ffn_multiply=2, temporal_num_periods=2, positional_dim=4, dropout=0.0)
    values.update(overrides)
    torch.manual_seed(0)
    model = FuXiLinear(FuXiLinearConfig(**values)).to(dtype)
    with torch.no_grad():  # move away from the initial values so every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def random_histories(num_items, lengths, T=None, seed=0):
    """Right-padded histories: ids (B, T), ts (B, T) int64 seconds, lengths (B,), and each user's
    timestamps one step further (B, T + 1) so ts_ext[b, lengths[b]] is the request time."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    B, T = len(lengths), T or int(lengths.max())
    ids = torch.randint(1, num_items + 1, (B, T), generator=g)
    ids[torch.arange(T)[None] >= lengths[:, None]] = 0
    ts_ext = 1_700_000_000 + torch.cumsum(torch.randint(0, 30, (B, T + 1), generator=g), 1)
    return ids, ts_ext[:, :T].contiguous(), lengths, ts_ext
