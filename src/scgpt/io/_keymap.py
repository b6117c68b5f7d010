"""Key names: official scGPT checkpoints <-> :class:`scgpt.nn.ScGPTNet`.

The network keeps the official sub-module names, so the only differences are the attention
projection names (flash-attn ``Wqkv`` vs PyTorch ``in_proj_*``), wrapper prefixes and keys that
exist only during pretraining.
"""

from __future__ import annotations

import re

# official name -> ours; applied in order
_TO_OURS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^module\."), ""),  # saved from a DDP-wrapped model
    (re.compile(r"self_attn\._impl\.Wqkv\.(weight|bias)$"), r"self_attn.in_proj_\1"),  # FlashMHA wrapper (v0.2.5)
    (re.compile(r"self_attn\.Wqkv\.(weight|bias)$"), r"self_attn.in_proj_\1"),  # flash-attn v1 / released weights
    (re.compile(r"self_attn\._impl\.out_proj\."), "self_attn.out_proj."),
]
_TO_FLASH = (re.compile(r"self_attn\.in_proj_(weight|bias)$"), r"self_attn.Wqkv.\1")

#: Keys of released checkpoints that only the generative pretraining uses.
PRETRAINING_ONLY_KEYS = frozenset({"flag_encoder.weight"})


def to_ours(key: str) -> str:
    """Official state-dict key -> :class:`~scgpt.nn.ScGPTNet` key."""
    for pattern, repl in _TO_OURS:
        key = pattern.sub(repl, key)
    return key


def to_official(key: str, *, attention_layout: str = "torch") -> str:
    """:class:`~scgpt.nn.ScGPTNet` key -> official key (``attention_layout`` ``"torch"`` or ``"flash"``)."""
    if attention_layout == "flash":
        return _TO_FLASH[0].sub(_TO_FLASH[1], key)
    if attention_layout != "torch":
        raise ValueError(f"attention_layout must be 'torch' or 'flash', got {attention_layout!r}")
    return key
