"""Domain-specific batch normalisation (DSBN)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DomainSpecificBatchNorm1d(nn.Module):
    """One :class:`torch.nn.BatchNorm1d` per domain (batch label), over token embeddings.

    The official code applies the BatchNorm of the minibatch's *first* cell to the whole
    minibatch. Here every cell goes through its own domain's BatchNorm, which gives the same
    result on single-domain minibatches and a correct one on mixed minibatches, so that results
    never depend on how cells are batched. In training, each domain's statistics come from the
    tokens of that domain's cells (padded positions included, as in the official code).
    """

    def __init__(self, d_model: int, n_domains: int, eps: float = 6.1e-5, affine: bool = False) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm1d(d_model, eps=eps, affine=affine) for _ in range(n_domains))

    def forward(self, x: Tensor, domains: Tensor) -> Tensor:
        """``x``: ``(B, L, d)``; ``domains``: ``(B,)`` integer labels."""
        if domains.numel() and bool((domains == domains[0]).all()):  # common case: one domain
            return self.bns[int(domains[0])](x.transpose(1, 2)).transpose(1, 2)
        out = torch.empty_like(x)
        for dom in torch.unique(domains).tolist():
            rows = domains == dom
            out[rows] = self.bns[int(dom)](x[rows].transpose(1, 2)).transpose(1, 2)
        return out
