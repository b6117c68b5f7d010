"""Device and precision choices for inference."""

from __future__ import annotations

import torch

from .._settings import settings

_DTYPES = {
    None: torch.float32,
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, else ``scgpt.settings.device``, else the best available: CUDA, then MPS, then CPU."""
    device = device if device is not None else settings.device
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device PyTorch knows ('cpu', 'cuda', 'cuda:1', 'mps').") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but PyTorch sees no CUDA device (torch.cuda.is_available() is "
            "False)."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r}: PyTorch sees {torch.cuda.device_count()} CUDA device(s).")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError("device='mps' was requested but this PyTorch has no MPS (Apple GPU) support here.")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Inference precision; ``float16`` only on CUDA/MPS."""
    if isinstance(dtype, torch.dtype):
        out = dtype
    else:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of 'float32', 'bfloat16', 'float16' or None, got {dtype!r}.")
        out = _DTYPES[dtype]
    if out == torch.float16 and device.type == "cpu":
        raise ValueError("dtype='float16' is not supported on CPU; use 'bfloat16'.")
    return out
