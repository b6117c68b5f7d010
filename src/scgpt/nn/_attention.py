"""Multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

Parameters are laid out like :class:`torch.nn.MultiheadAttention` (``in_proj_weight`` packs
``[W_q; W_k; W_v]`` along dim 0, heads major), which is also the flash-attn ``Wqkv`` layout of the
released scGPT checkpoints, so official weights load with a rename only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention, ``(B, L, d) -> (B, L, d)``.

    Parameters
    ----------
    d_model
        Embedding width.
    n_heads
        Number of heads; ``d_model`` must be divisible by it.
    dropout
        Dropout on the attention weights (training only).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as :class:`torch.nn.MultiheadAttention` does."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project to per-head queries, keys and values, each ``(B, h, L, d/h)``."""
        B, L, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3d)
        qkv = qkv.view(B, L, 3, self.n_heads, self.d_model // self.n_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, n_queries: int | None = None) -> Tensor:
        """Attend.

        Parameters
        ----------
        x
            ``(B, L, d)`` token states.
        attn_mask
            Boolean, ``True`` where a query may attend to a key; broadcastable to ``(B, h, L, L)``
            (``(B, 1, 1, L)`` for a key-padding mask). ``None``: everything attends to everything.
        n_queries
            Compute outputs for the first ``n_queries`` positions only (keys and values still come
            from all positions); the result is ``(B, n_queries, d)``.
        """
        B, L, _ = x.shape
        if n_queries is None:
            q, k, v = self.qkv(x)
        else:
            d, h = self.d_model, self.n_heads
            q = F.linear(x[:, :n_queries], self.in_proj_weight[:d], self.in_proj_bias[:d])
            q = q.view(B, n_queries, h, d // h).transpose(1, 2)
            kv = F.linear(x, self.in_proj_weight[d:], self.in_proj_bias[d:]).view(B, L, 2, h, d // h)
            k, v = kv.permute(2, 0, 3, 1, 4)
            if attn_mask is not None and attn_mask.shape[-2] != 1:
                attn_mask = attn_mask[..., :n_queries, :]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)  # (B, h, Lq, d/h)
        return self.out_proj(out.transpose(1, 2).reshape(B, q.shape[2], self.d_model))

    def attention_scores(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        *,
        softmax: bool = True,
        queries: slice | None = None,
    ) -> Tensor:
        """Attention weights ``(B, h, Lq, L)``, computed explicitly (the readable reference path).

        With ``softmax=False`` the raw ``q @ k.T`` products are returned, unscaled and unmasked, as
        the official attention-GRN tutorial uses them. ``queries`` restricts the rows to some query
        positions (``Lq`` of them), so a long cell's map can be computed in chunks of bounded memory.
        """
        q, k, _ = self.qkv(x)  # (B, h, L, d/h) each
        if queries is not None:
            q = q[:, :, queries]
            if attn_mask is not None and attn_mask.shape[-2] != 1:
                attn_mask = attn_mask[..., queries, :]
        scores = q @ k.transpose(-2, -1)  # (B, h, Lq, L)
        if not softmax:
            return scores
        scores = scores / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(dim=-1)

    def reference_forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The same computation as :meth:`forward` with an explicit softmax (for tests)."""
        B, L, _ = x.shape
        _, _, v = self.qkv(x)
        out = self.attention_scores(x, attn_mask) @ v
        return self.out_proj(out.transpose(1, 2).reshape(B, L, self.d_model))


def padding_to_attn_mask(padding_mask: Tensor | None) -> Tensor | None:
    """Key-padding mask ``(B, L)``, ``True`` at pads -> SDPA mask ``(B, 1, 1, L)``, ``True`` = attend.

    Returns ``None`` when nothing is padded, so that SDPA can take its fastest unmasked kernel.
    """
    if padding_mask is None or not bool(padding_mask.any()):
        return None
    return ~padding_mask[:, None, None, :]


def generative_attn_mask(gen_mask: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """The scGPT generative-pretraining attention mask, ``(B, 1, L, L)``, ``True`` = may attend.

    Known genes (``gen_mask`` False) attend to every known gene; a gene to predict (``gen_mask``
    True) attends to every known gene and to itself only, so no gene to predict sees another
    one. Padded keys are never attended to.

    Parameters
    ----------
    gen_mask
        ``(B, L)``, ``True`` at genes whose values are to be generated.
    padding_mask
        ``(B, L)``, ``True`` at padded positions.
    """
    known = ~gen_mask if padding_mask is None else ~gen_mask & ~padding_mask  # (B, L) keys anyone may see
    L = gen_mask.shape[1]
    self_only = torch.eye(L, dtype=torch.bool, device=gen_mask.device)[None] & gen_mask[:, :, None]  # (B, L, L)
    return (known[:, None, :] | self_only)[:, None]  # (B, 1, L, L)
