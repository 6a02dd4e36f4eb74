"""A small character-level transformer whose attention is ``fuxi_linear.layers.Retention``.

Where a transformer block has ``x = x + attention(norm(x))``, this one has ``x = x + retention(x)``: the same
``(B, T, D) -> (B, T, D)`` shape (Retention normalises its input itself and needs no position embedding: its
per-head decay orders the tokens). It is trained briefly to predict the next character of a short text, then
generates greedily token by token with ``Retention.step``, whose state is a fixed ``H x dqk x dv`` per layer
and user, where a softmax transformer's KV cache grows by ``2 x D`` numbers per layer and token. Every
generated token's logits are checked against a full forward pass over the whole generated sequence.

    python examples/retention_in_a_transformer.py --threads 1   # about 30 s on one CPU core
    python examples/retention_in_a_transformer.py --smoke    # tiny sizes, a few seconds (run by the tests)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from fuxi_linear.layers import Retention

TEXT = (
    "a recommender reads what a user did and when, and guesses what comes next. attention compares every "
    "event with every other one, so its cost grows with the square of the history, and its cache grows with "
    "every event. retention keeps one small state per head instead: each new event is added to the state, "
    "the old ones fade a little, and the answer is read from the state. the cost of one more event is the "
    "same after ten events and after ten thousand. the state does not grow, so a server can keep it for "
    "millions of users, and a long history costs no more to extend than a short one. "
)


class RetentionTransformer(nn.Module):
    """Token embedding, ``num_layers`` x (retention, MLP) with residuals, a final norm and the output head.

    ``tokens (B, T)`` int64 -> logits ``(B, T, vocab)``.
    """

    def __init__(self, vocab_size: int, dim: int, num_heads: int, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mixers = nn.ModuleList(Retention(dim, num_heads) for _ in range(num_layers))  # was: attention
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                nn.Linear(4 * dim, dim)) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor, return_state: bool = False):
        x = self.embed(tokens)
        states = []
        for mixer, mlp in zip(self.mixers, self.mlps):
            if return_state:
                y, state = mixer(x, return_state=True)
                states.append(state)
            else:
                y = mixer(x)
            x = x + y
            x = x + mlp(x)
        logits = self.head(self.norm(x))
        return (logits, states) if return_state else logits

    def step(self, token: torch.Tensor, states: list):
        """One token per sequence ``(N,)`` -> ``(logits (N, vocab), states)``, O(1) in the tokens so far."""
        x = self.embed(token)
        for i, (mixer, mlp) in enumerate(zip(self.mixers, self.mlps)):
            y, states[i] = mixer.step(x, states[i])
            x = x + y
            x = x + mlp(x)
        return self.head(self.norm(x)), states


def batches(data: torch.Tensor, batch_size: int, length: int, generator: torch.Generator):
    """Endless random windows of ``length + 1`` tokens: inputs and next-token targets ``(B, length)``."""
    while True:
        start = torch.randint(0, len(data) - length - 1, (batch_size,), generator=generator)
        window = torch.stack([data[s:s + length + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and checks (CI)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="tokens per training window")
    parser.add_argument("--generate", type=int, default=120, help="tokens to generate")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 with --smoke, where tensors are tiny)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dim, args.heads, args.layers, args.steps, args.batch_size = 32, 2, 1, 60, 16
        args.length, args.generate = 32, 24
    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)

    chars = sorted(set(TEXT))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in TEXT])
    model = RetentionTransformer(len(chars), args.dim, args.heads, args.layers)
    print(f"{len(TEXT)} characters, vocabulary {len(chars)}; model {sum(p.numel() for p in model.parameters()):,} "
          f"parameters")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses, start = [], time.time()
    stream = batches(data, args.batch_size, args.length, torch.Generator().manual_seed(args.seed))
    for step in range(args.steps):
        inputs, targets = next(stream)
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % max(args.steps // 6, 1) == 0:
            print(f"step {step + 1}/{args.steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
    print(f"trained in {time.time() - start:.1f} s")

    # decode token by token from a prompt: a prefill, then one O(1) step per token
    model.eval()
    prompt = torch.tensor([[index[c] for c in "the state "]])
    with torch.no_grad():
        logits, states = model(prompt, return_state=True)
        tokens, step_logits = prompt[0].tolist(), []
        next_token = logits[:, -1].argmax(-1)
        for _ in range(args.generate):
            tokens.append(int(next_token))
            logits_t, states = model.step(next_token, states)
            step_logits.append(logits_t[0])
            next_token = logits_t.argmax(-1)
        full = model(torch.tensor([tokens]))[0, len(prompt[0]) - 1 + 1:]
    difference = float((torch.stack(step_logits) - full).abs().max())
    print("generated:", repr("".join(chars[t] for t in tokens)))
    print(f"step logits equal the full forward's to {difference:.1e}")

    state_bytes = sum(s.nbytes_per_user() for s in states)
    kv_per_token = 2 * args.layers * args.dim * 4  # keys and values, float32, every layer
    print(f"{'tokens':>8s} {'retention state':>16s} {'KV cache':>12s}   (bytes per sequence)")
    for n in (64, 1024, 16384):
        print(f"{n:8d} {state_bytes:16,d} {n * kv_per_token:12,d}")

    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    if not last < 0.8 * first:
        raise SystemExit(f"the loss did not fall: {first:.3f} -> {last:.3f}")
    if difference > 1e-4:
        raise SystemExit(f"step logits differ from the forward's by {difference:.2e}")
    print("ok")


if __name__ == "__main__":
    main()
