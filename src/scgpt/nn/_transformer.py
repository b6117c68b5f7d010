"""The transformer encoder: a stack of self-attention + feed-forward layers.

There is no positional encoding: scGPT treats a cell as a set of genes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._attention import SelfAttention


class TransformerLayer(nn.Module):
    """One encoder layer (ReLU feed-forward, LayerNorm eps 1e-5).

    Post-norm (the default, as in every released model and :class:`torch.nn.TransformerEncoderLayer`)::

        x = norm1(x + attn(x));  x = norm2(x + ff(x))

    Pre-norm follows the official scGPT flash layer, which normalises the stream itself::

        x = norm1(x);  x = x + attn(x);  x = norm2(x);  x = x + ff(x)
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_hid: int,
        dropout: float = 0.1,
        pre_norm: bool = False,
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads, dropout if attn_dropout is None else attn_dropout)
        self.linear1 = nn.Linear(d_model, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, n_queries: int | None = None) -> Tensor:
        """``(B, L, d) -> (B, L, d)``; with ``n_queries`` only the first positions are computed."""
        if self.pre_norm:
            x = self.norm1(x)
            x = x[:, :n_queries] + self.dropout1(self.self_attn(x, attn_mask, n_queries))
            x = self.norm2(x)
            return x + self.dropout2(self.feed_forward(x))
        x = self.norm1(x[:, :n_queries] + self.dropout1(self.self_attn(x, attn_mask, n_queries)))
        return self.norm2(x + self.dropout2(self.feed_forward(x)))


class TransformerEncoder(nn.Module):
    """``n_layers`` :class:`TransformerLayer` in sequence: ``(B, L, d) -> (B, L, d)``.

    Set ``gradient_checkpointing = True`` to trade compute for memory in training: each layer then
    keeps only its input for the backward pass and recomputes its activations there
    (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant, dropout masks replayed), so the
    activations held at once are those of one layer instead of all ``n_layers``. Same loss and
    gradients; about one more forward pass of compute. It acts in training mode with gradients on only.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_hid: int,
        n_layers: int,
        dropout: float = 0.1,
        pre_norm: bool = False,
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, d_hid, dropout, pre_norm, attn_dropout) for _ in range(n_layers)
        )
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, last_queries: int | None = None) -> Tensor:
        """``(B, L, d) -> (B, L, d)``.

        ``last_queries``: the last layer computes only the first ``last_queries`` positions
        (``(B, last_queries, d)`` out), e.g. 1 when only ``<cls>`` is read. Same numbers, less work.
        """
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            n_queries = last_queries if i == len(self.layers) - 1 else None
            if recompute:
                x = checkpoint(layer, x, attn_mask, n_queries, use_reentrant=False)
            else:
                x = layer(x, attn_mask, n_queries)
        return x
