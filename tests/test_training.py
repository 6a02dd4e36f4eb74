"""A tiny model trained on a synthetic periodic sequence learns it (the loss falls clearly)."""
import torch

from fuxi_linear import FuXiLinear, FuXiLinearConfig


def periodic_batch(B, T, num_items, gen):
    """Hourly events whose item is the hour of day (1..24) — predictable from time and from the last item."""
    start = torch.randint(0, 24 * 30, (B, 1), generator=gen)
    hours = start + torch.arange(T + 1)[None]
    ts = 1_600_000_000 - 1_600_000_000 % 86400 + hours * 3600 + torch.randint(0, 600, (B, T + 1), generator=gen)
    ids = (hours % 24) + 1
    return ids[:, :T], ts[:, :T], torch.full((B,), T), ts[:, T], ids[:, T]


def test_short_training_lowers_loss():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = FuXiLinearConfig(num_items=24, max_seq_len=24, embedding_dim=16, num_blocks=1, num_heads=2,
                           ffn_multiply=2, temporal_num_periods=2, positional_dim=8, dropout=0.0, num_negatives=16)
    model = FuXiLinear(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    eval_batch = periodic_batch(32, 24, 24, torch.Generator().manual_seed(99))
    eval_gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731 - same negatives before and after
    with torch.no_grad():
        before = model.loss(*eval_batch[:4], target_ids=eval_batch[4], generator=eval_gen()).item()
    for _ in range(150):
        loss = model.loss(*periodic_batch(16, 24, 24, gen)[:4], target_ids=None, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model.loss(*eval_batch[:4], target_ids=eval_batch[4], generator=eval_gen()).item()
        user = model.encode(*eval_batch[:4])[:, -1]
        top1 = model.score(user)[:, 1:].argmax(-1) + 1
    assert after < 0.3 * before, (before, after)
    assert (top1 == eval_batch[4]).float().mean() > 0.9
