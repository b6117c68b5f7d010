"""Counter-based random numbers keyed by a cell's own content.

Every random choice made for a cell (tie-breaks in binning, which genes to keep above
``max_length``, which values to mask) is a pure function of ``seed``, the cell's gene identities
and values, and the gene the choice is about. A cell therefore gets the same tokens whatever
other cells are processed with it, in whatever order, chunk or process (official issues #281, #319).

The generator is SplitMix64 (Steele, Lea & Flood 2014) applied to 64-bit keys, vectorised in numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Distinct streams for distinct decisions about the same (cell, gene).
STREAM_BIN_TIES = 1
STREAM_SAMPLE_GENES = 2
STREAM_MASK = 3
STREAM_SPLIT = 4


def splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """SplitMix64 finaliser of ``x + golden``: a bijective, well-mixed map of uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def gene_keys(names: Iterable[str]) -> np.ndarray:
    """Stable 64-bit key of each gene name (BLAKE2b), the gene's identity in every random choice."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(n).encode(), digest_size=8).digest(), "little") for n in names),
        dtype=np.uint64,
    )


def cell_keys(indptr: np.ndarray, genes: np.ndarray, values: np.ndarray, seed: int) -> np.ndarray:
    """One 64-bit key per cell from ``seed`` and the cell's (gene key, value) pairs.

    Parameters
    ----------
    indptr
        CSR row pointers ``(n_cells + 1,)``.
    genes
        Gene key (from :func:`gene_keys`) of each stored entry.
    values
        Value of each stored entry; compared as float64, so float32 and float64 copies of the
        same counts give the same key.
    seed
        User seed.

    The key does not depend on the order of a cell's entries (it sums per-entry hashes).
    """
    n_cells = len(indptr) - 1
    vbits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    with np.errstate(over="ignore"):
        entry = splitmix64(genes ^ splitmix64(vbits))
        sums = np.zeros(n_cells, dtype=np.uint64)
        lengths = np.diff(indptr)
        nonempty = np.flatnonzero(lengths)
        if len(nonempty):
            sums[nonempty] = np.add.reduceat(entry, indptr[:-1][nonempty])
        return splitmix64(sums ^ splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + lengths.astype(np.uint64)))


def entry_uniform(cell_key: np.ndarray, genes: np.ndarray, stream: int) -> np.ndarray:
    """Uniform float64 in ``[0, 1)`` for each (cell key, gene key) entry and decision stream."""
    bits = entry_bits(cell_key, genes, stream)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def entry_bits(cell_key: np.ndarray, genes: np.ndarray, stream: int) -> np.ndarray:
    """Random uint64 for each (cell key, gene key) entry and decision stream."""
    with np.errstate(over="ignore"):
        return splitmix64(cell_key ^ splitmix64(genes + np.uint64(stream) * _GOLDEN))
