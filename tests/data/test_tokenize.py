from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scgpt.data._random import gene_keys
from scgpt.data._tokenize import pad_batch, tokenize


def _matrix(rng, n_cells=40, n_genes=300, density=0.3):
    X = sp.random(n_cells, n_genes, density=density, format="csr", random_state=1, dtype=np.float32)
    X.data = np.ceil(X.data * 20).astype(np.float32)
    return X


def _cells(tok, i):
    s, e = tok.indptr[i], tok.indptr[i + 1]
    return tok.genes[s:e], tok.values[s:e]


def test_sampling_binning_and_order(rng):
    X = _matrix(rng)
    ids = np.arange(300) + 10
    ids[:5] = -1  # not in the vocabulary
    keys = gene_keys([f"g{i}" for i in range(300)])
    tok = tokenize(X, ids, keys, max_genes=50, seed=0)
    n_in = np.diff(X[:, 5:].tocsr().indptr)
    np.testing.assert_array_equal(tok.n_input_genes, n_in)
    np.testing.assert_array_equal(tok.lengths, np.minimum(n_in, 50))
    for i in range(len(tok)):
        genes, values = _cells(tok, i)
        assert (np.diff(genes) > 0).all()  # vocabulary order, each gene once
        row = X[i]
        assert set(genes) <= set(ids[row.indices[row.indices >= 5]])
        assert values.min() >= 1 and values.max() <= 50


def test_a_cells_tokens_do_not_depend_on_other_cells(rng):
    X = _matrix(rng)
    ids = np.arange(300)
    keys = gene_keys([f"g{i}" for i in range(300)])
    full = tokenize(X, ids, keys, max_genes=40, seed=3)
    order = rng.permutation(X.shape[0])
    shuffled = tokenize(X[order], ids, keys, max_genes=40, seed=3)
    for j, i in enumerate(order):
        for a, b in zip(_cells(full, i), _cells(shuffled, j)):
            np.testing.assert_array_equal(a, b)
    # column order does not matter either
    perm = rng.permutation(300)
    cols = tokenize(X[:, perm], ids[perm], keys[perm], max_genes=40, seed=3)
    for i in range(X.shape[0]):
        for a, b in zip(_cells(full, i), _cells(cols, i)):
            np.testing.assert_array_equal(a, b)
    other = tokenize(X, ids, keys, max_genes=40, seed=4)
    assert any(not np.array_equal(_cells(full, i)[0], _cells(other, i)[0]) for i in range(X.shape[0]))


def test_pad_batch(rng):
    X = _matrix(rng, n_cells=3)
    tok = tokenize(X, np.arange(300), gene_keys(range(300)), max_genes=None, seed=0)
    genes, values = pad_batch(tok, cls_id=900, cls_value=-2, pad_id=901, pad_value=-2)
    L = tok.lengths.max() + 1
    assert genes.shape == (3, L) and (genes[:, 0] == 900).all() and (values[:, 0] == -2).all()
    for i in range(3):
        n = tok.lengths[i]
        np.testing.assert_array_equal(genes[i, 1 : n + 1], _cells(tok, i)[0])
        assert (genes[i, n + 1 :] == 901).all() and (values[i, n + 1 :] == -2).all()
    sub = tok.take(np.array([2, 0]))
    np.testing.assert_array_equal(sub.genes, np.concatenate([_cells(tok, 2)[0], _cells(tok, 0)[0]]))
