"""Seeded train/validation splits of cell indices."""

from __future__ import annotations

import numpy as np


def random_split(
    n: int, train_size: float, validation_size: float | None = None, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` indices of ``n`` cells.

    A seeded ``train_size`` share trains; the rest (or ``validation_size`` of all cells) validates.
    """
    if not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    if validation_size is not None and not 0 <= validation_size <= 1:
        raise ValueError(f"validation_size must be in [0, 1], got {validation_size}.")
    val = 1 - train_size if validation_size is None else validation_size
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(n * train_size))
    n_val = min(n - n_train, int(round(n * val)))
    return np.sort(perm[:n_train]), np.sort(perm[n_train : n_train + n_val])


def stratified_split(codes: np.ndarray, validation_size: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` indices: per class, a seeded ``validation_size`` share of its cells validates.

    Classes of a single cell stay in training.
    """
    if not 0 <= validation_size < 1:
        raise ValueError(f"validation_size must be in [0, 1), got {validation_size}.")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(codes):
        idx = rng.permutation(np.flatnonzero(codes == c))
        n_val = int(round(len(idx) * validation_size)) if len(idx) > 1 else 0
        n_val = min(n_val, len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
