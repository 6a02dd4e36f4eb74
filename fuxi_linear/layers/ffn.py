"""Multi-stage feed-forward network of the FuXi block (SPEC §5, step 5)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norms import rms_norm


class MultiStageFFN(nn.Module):
    """``h = W0 dropout(a) + x``; ``z = dropout(RMSNorm(h))``; ``out = W2 (SiLU(W1 z) * W3 z) + h``.

    Args:
        dim: model width D. hidden_dim: F. dropout: rate of both dropouts. No biases; weights N(0, 0.02).
    Shapes: ``a: (..., 3D)``, ``x: (..., D)`` -> ``(..., D)``.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.lin0 = nn.Linear(3 * dim, dim, bias=False)
        self.lin1 = nn.Linear(dim, hidden_dim, bias=False)
        self.lin2 = nn.Linear(hidden_dim, dim, bias=False)
        self.lin3 = nn.Linear(dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        for lin in (self.lin0, self.lin1, self.lin2, self.lin3):
            nn.init.normal_(lin.weight, std=0.02)

    def forward(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.lin0(self.dropout(a)) + x
        z = self.dropout(rms_norm(h))
        return self.lin2(F.silu(self.lin1(z)) * self.lin3(z)) + h
