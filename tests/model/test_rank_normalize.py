"""The CPU rank normalisation of the attention network (numpy, int16 radix column step) against the tensor version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scgpt.model import rank_normalize
from scgpt.model._engine import _rank_normalize_tensor


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("L", [17, 90])
def test_cpu_rank_normalize_equals_tensor_version(L, ties):
    """Catches a fast path that breaks ties differently (rows: numpy's default sort of the same rows; columns: by
    row index), mishandles non-gene tokens (<cls>, padding, a cell without genes) or divides by the wrong n."""
    g = torch.Generator().manual_seed(L + ties)
    B, H = 4, 3
    maps = torch.randint(0, 3, (B, H, L, L), generator=g).float() if ties else torch.randn(B, H, L, L, generator=g)
    is_gene = torch.rand(B, L, generator=g) > 0.25
    is_gene[:, 0] = False  # <cls>
    is_gene[1, L - 5 :] = False  # padding
    is_gene[3] = False  # no genes at all
    fast = rank_normalize(maps, is_gene)
    assert torch.equal(fast, _rank_normalize_tensor(maps, is_gene))
    assert fast.dtype == maps.dtype and fast.shape == maps.shape
    assert (fast[3] == 0).all()


def test_cpu_rank_normalize_is_the_official_double_argsort():
    """Catches a departure from the official semantics on tie-free maps: ranks within each row over the gene
    submatrix, divided by n, then the same within each column of the result."""
    g = torch.Generator().manual_seed(0)
    L = 30
    maps = torch.randn(1, 2, L, L, generator=g)
    is_gene = torch.ones(1, L, dtype=torch.bool)
    is_gene[0, 0] = False
    idx = np.flatnonzero(is_gene[0].numpy())
    sub = maps[0][:, idx][:, :, idx].numpy()
    n = len(idx)
    rows = np.argsort(np.argsort(sub, -1), -1)
    expected = np.argsort(np.argsort(rows, -2, kind="stable"), -2) / n
    got = rank_normalize(maps, is_gene)[0][:, idx][:, :, idx].numpy()
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=0, atol=0)
