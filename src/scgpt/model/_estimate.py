"""Time estimates before long work: the FLOPs a run needs, and this device's measured matrix-product rate.

Every tool that runs the model over many cells or fine-tunes it logs, before it starts, what it is about to
do and about how long it will take here, with the knob that shortens it. The estimate is arithmetic:

- FLOPs of the transformer per cell (:func:`forward_flops`): per layer and token, the attention projections
  (``8 d^2``), the feed-forward block (``4 d d_hid``) and the attention itself (``4 L d`` for a cell of ``L``
  tokens); a training step costs about three forward passes (forward + backward).
- The rate: one timed matrix product of the model's width on the device, in the run's precision, measured once
  per process (about 50 ms), times the share of it the model reaches (:data:`EFFICIENCY`, measured with
  ``benchmarks/embed.py``; the inference engine reaches 50-90 % of the product rate on CPUs, training less).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import numpy as np

from .._logging import logger

if TYPE_CHECKING:
    import torch

    from ..nn import ScGPTConfig

ANNOUNCE_MIN_CELLS = 200
"""Runs over fewer cells are never announced (they take seconds)."""
EFFICIENCY = {"inference": 0.6, "training": 0.35}
"""Share of the measured matrix-product rate a run reaches (inference engine; Lightning training loop)."""


def forward_flops(config: ScGPTConfig, tokens: np.ndarray | float) -> float:
    """FLOPs of one forward pass of the transformer over cells of ``tokens`` tokens (summed over the cells)."""
    d, h, n = config.d_model, config.d_hid, config.n_layers
    t = np.asarray(tokens, dtype=np.float64)
    return float(n * np.sum(t * (8 * d * d + 4 * d * h) + 4 * d * t * t))


@functools.lru_cache(maxsize=8)
def _measured_rate(device: str, dtype: str, width: int) -> float:
    """FLOP/s of a ``(2048 x width) @ (width x width)`` product on ``device`` in ``dtype`` (best of 5).

    ``width`` is at least 512, so that one product (1 GFLOP) takes long enough to time on any device.
    """
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(2048, width, device=device, dtype=dt)
    b = torch.randn(width, width, device=device, dtype=dt)
    best = float("inf")
    for _ in range(5):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 * width * width / max(best, 1e-9)


def device_rate(device: torch.device, dtype: torch.dtype, width: int) -> float:
    """The measured matrix-product rate (FLOP/s) of ``device`` in ``dtype`` at the model's width."""
    return _measured_rate(str(device), str(dtype).replace("torch.", ""), max(int(width), 512))


def duration_text(seconds: float) -> str:
    """``"about 40 s"``, ``"about 12 min"``, ``"about 2.5 h"``."""
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def estimate(
    config: ScGPTConfig,
    tokens: np.ndarray | float,
    *,
    device: torch.device,
    dtype: torch.dtype,
    kind: str = "inference",
    passes: float = 1.0,
) -> tuple[float, float]:
    """``(FLOPs, seconds)`` of ``passes`` runs over cells of ``tokens`` tokens (training: x3 per pass)."""
    flops = forward_flops(config, tokens) * passes * (3.0 if kind == "training" else 1.0)
    rate = device_rate(device, dtype, config.d_model) * EFFICIENCY[kind]
    return flops, flops / rate


def announce(what: str, flops: float, seconds: float, *, device: torch.device, knobs: str) -> None:
    """Log the work about to start and its estimated duration, with the knobs that shorten it."""
    where = "this CPU" if device.type == "cpu" else f"this {device.type.upper()}"
    amount = f"{flops / 1e12:,.1f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:,.1f} GFLOP"
    logger.info(f"{what}: {amount}, {duration_text(seconds)} on {where} (estimate; shorten with {knobs})")
