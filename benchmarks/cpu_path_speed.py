"""CPU speed of the operator's CPU path (``chunk_decay_attention_cpu``) against a plain chunk loop.

The comparison point, :func:`chunk_loop_per_head_decay`, is the straightforward chunked retention that
visits 128-token chunks one at a time and builds each chunk's decay matrix from the per-head decay (the
shape of the released FuXi-Linear code, which has no kernels). Both run the retention-like operator
``o_t = sum_{s<=t} exp(g (t - s)) (q_t . k_s) v_s`` on the three FuXi channel shapes.

    python benchmarks/cpu_path_speed.py [--batch 16] [--seq-lens 1024,4096] [--threads N]

Prints the minimum of repeated timings (ms), forward (inference) and forward+backward.
"""
from __future__ import annotations

import argparse
import time

import torch

from fuxi_linear.ops import chunk_decay_attention_cpu

SHAPES = {"retention H=4 K=V=32": (4, 32, 32), "temporal H=16 K=2 V=8": (16, 2, 8),
          "positional H=1 K=32 V=128": (1, 32, 128)}


def chunk_loop_per_head_decay(q, k, v, g_gamma, chunk=128):
    """Per-chunk loop with a per-head log-decay ``g_gamma (H,)``; q, k: (B, T, H, K), v: (B, T, H, V)."""
    B, T, H, K = q.shape
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    S = q.new_zeros(B, H, K, v.shape[-1])
    idx = torch.arange(chunk)
    out = []
    for s in range(0, T, chunk):
        qc, kc, vc = q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk]
        i = idx[: qc.shape[2]]
        c = len(i)
        decay = torch.exp(g_gamma[:, None, None] * (i[:, None] - i[None, :]).clamp(min=0)) * (i[:, None] >= i[None, :])
        o = ((qc @ kc.transpose(-1, -2)) * decay) @ vc + (qc * torch.exp(g_gamma[:, None, None] * (i[:, None] + 1))) @ S
        S = torch.exp(g_gamma * c)[:, None, None] * S + (
            kc * torch.exp(g_gamma[:, None, None] * (c - 1 - i[:, None]))).transpose(-1, -2) @ vc
        out.append(o)
    return torch.cat(out, 2).transpose(1, 2)


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-lens", default="1024,4096")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU | torch {torch.__version__} | {torch.get_num_threads()} threads | batch {args.batch} | fp32 | "
          f"min of {args.repeats} after a warm-up")
    print("| shape | T | CPU path fwd ms | chunk loop fwd ms | CPU path fwd+bwd ms | chunk loop fwd+bwd ms |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    for T in (int(t) for t in args.seq_lens.split(",")):
        for name, (H, K, V) in SHAPES.items():
            q, k = torch.randn(2, args.batch, T, H, K)
            v = torch.randn(args.batch, T, H, V)
            gg = -torch.rand(H)
            ours = lambda: chunk_decay_attention_cpu(q, k, v, g_gamma=gg)[0]  # noqa: E731
            loop = lambda: chunk_loop_per_head_decay(q, k, v, gg)  # noqa: E731
            with torch.no_grad():
                fwd = [best_ms(f, args.repeats) for f in (ours, loop)]
            for t in (q, k, v, gg):
                t.requires_grad_(True)
            bwd = [best_ms(lambda f=f: f().sum().backward(), args.repeats) for f in (ours, loop)]
            for t in (q, k, v, gg):
                t.requires_grad_(False)
            print(f"| {name} | {T} | {fwd[0]:.1f} | {fwd[1]:.1f} | {bwd[0]:.1f} | {bwd[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
