"""Multi-head self-attention through ``torch.nn.functional.scaled_dot_product_attention``.

Parameters are laid out like :class:`torch.nn.MultiheadAttention` (``in_proj_weight`` packs
``[W_q; W_k; W_v]`` along dim 0, heads major), which is also the flash-attn ``Wqkv`` layout of the
released scGPT checkpoints, so official weights load with a rename only.

Both projections are :class:`~torch.nn.Linear` modules, always called as modules (never through
their weights with ``F.linear``), so that adapter libraries such as ``peft`` that wrap ``nn.Linear``
modules change what the attention computes: a projection applied functionally would be skipped by
the wrapper and its adapter would silently never train. The input projection's weight and bias are
also registered on the attention itself under the names of :class:`torch.nn.MultiheadAttention`
(``in_proj_weight``, ``in_proj_bias``; the same tensors, counted once), so parameter names, their order
and the state-dict keys are those of the official model; a state-dict hook leaves out the module's copy.
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
        # no random draws here (reset_parameters initialises it), so a seed gives the weights it always gave
        self.in_proj = nn.utils.skip_init(nn.Linear, d_model, 3 * d_model, device=torch.get_default_device())
        # the same tensors under the official names: named_parameters() lists these (first, once), as before
        self.in_proj_weight = self.in_proj.weight  # [W_q; W_k; W_v], (3d, d)
        self.in_proj_bias = self.in_proj.bias  # (3d,)
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()
        self.register_state_dict_post_hook(_packed_names)
        _register_load_pre_hook(self, _module_names)

    def reset_parameters(self) -> None:
        """Initialise as :class:`torch.nn.MultiheadAttention` does."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project to per-head queries, keys and values, each ``(B, h, L, d/h)``."""
        B, L, _ = x.shape
        qkv = self.in_proj(x)  # (B, L, 3d)
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
        q, k, v = self.qkv(x)  # the module (never slices of its weight), so an adapter on it is applied
        if n_queries is not None:
            q = q[:, :, :n_queries]
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


def _packed_names(module: SelfAttention, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook: the ``in_proj`` module's copy of ``in_proj_weight``/``in_proj_bias`` is left out.

    Also under an adapter (``peft`` keeps the original layer as ``in_proj.base_layer``). The keys and their
    order are then those of the attention before the projection became a module, so a saved file is
    byte-identical to one saved before.
    """
    meta = getattr(state_dict, "_metadata", {})
    for inner in _INNER:
        meta.pop(prefix + inner, None)  # as before: no entry of its own
        for name in ("weight", "bias"):
            state_dict.pop(f"{prefix}{inner}.{name}", None)


def _module_names(module: SelfAttention, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: ``in_proj_weight``/``in_proj_bias`` also fill the ``in_proj`` module's keys.

    They are the same tensors; the module's keys are expected by ``load_state_dict``. When an adapter wraps
    ``in_proj`` (``peft`` keeps the original as ``in_proj.base_layer``), the wrapped layer's keys.
    """
    inner = _INNER[1] if hasattr(module.in_proj, "base_layer") else _INNER[0]
    for name in ("weight", "bias"):
        if prefix + f"in_proj_{name}" in state_dict:
            state_dict[f"{prefix}{inner}.{name}"] = state_dict[prefix + f"in_proj_{name}"]


_INNER = ("in_proj", "in_proj.base_layer")


def _register_load_pre_hook(module: nn.Module, hook) -> None:
    """``module.register_load_state_dict_pre_hook`` (public from torch 2.5; the private form before)."""
    if hasattr(module, "register_load_state_dict_pre_hook"):
        module.register_load_state_dict_pre_hook(hook)
    else:  # pragma: no cover - torch < 2.5
        module._register_load_state_dict_pre_hook(hook, with_module=True)


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
