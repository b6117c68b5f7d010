"""``tl.benchmark_integration`` scores what it is given, or says why not before it writes anything.

scib-metrics itself is stopped once it is handed the cells to score (a full benchmark compiles JAX for minutes):
these tests check what reaches it and what is left in the caller's AnnData.
"""

from __future__ import annotations

import numpy as np
import pytest
import scib_metrics.benchmark

import scgpt


class Reached(Exception):
    """scib-metrics was asked to score."""


@pytest.fixture
def scored(monkeypatch):
    """What scib-metrics is given: ``{"labels", "batches", "n_obs", "embeddings"}`` (then the call stops)."""
    seen = {}

    def benchmark(self):
        obs = self._adata.obs
        seen.update(
            labels=sorted(map(str, obs[self._label_key].unique())),
            batches=sorted(map(str, obs[self._batch_key].unique())),
            n_obs=self._adata.n_obs,
            embeddings={k: np.asarray(self._adata.obsm[k]) for k in self._embedding_obsm_keys},
        )
        raise Reached

    monkeypatch.setattr(scib_metrics.benchmark.Benchmarker, "benchmark", benchmark)
    return seen


@pytest.fixture
def cells(pbmc):
    a = pbmc[:200].copy()
    a.obs["batch"] = np.where(np.arange(a.n_obs) % 2, "r1", "r2").astype(object)
    a.obs["label"] = a.obs["bulk_labels"].astype(object)
    a.obsm["X_scGPT"] = np.random.default_rng(0).normal(size=(a.n_obs, 8)).astype(np.float32)
    return a


def _bench(adata, **kw):
    return scgpt.tl.benchmark_integration(adata, batch_key="batch", labels_key="label", baselines=("pca",), **kw)


def test_cells_without_a_label_are_left_out_of_the_scores_with_a_warning(cells, scored):
    """Unlabelled cells (NaN, None, the string "nan") are not scored, and the user is told.

    Catches casting the label column to ``str``, which made ``"nan"`` a cell type of its own (issue 26, item 6).
    """
    cells.obs.loc[cells.obs_names[:6], "label"] = np.nan
    cells.obs.loc[cells.obs_names[6:9], "label"] = "nan"
    with pytest.warns(UserWarning, match=r"9 cells have no label in obs\['label'\] \(first: '.*'\); they are left out"):
        with pytest.raises(Reached):
            _bench(cells)
    assert "nan" not in scored["labels"] and scored["n_obs"] == 191
    assert scored["embeddings"]["X_scGPT"].shape == (191, 8)
    np.testing.assert_array_equal(scored["embeddings"]["X_scGPT"], cells.obsm["X_scGPT"][9:])


def test_cells_without_a_batch_are_an_error_naming_the_first(cells, scored):
    """A missing batch is an error before any work; catches ``None`` scored as a batch called "None"."""
    cells.obs.loc[cells.obs_names[3], "batch"] = None
    with pytest.raises(ValueError, match=r"obs\['batch'\] has 1 cells without a batch \(first: '.*'\)"):
        _bench(cells)
    assert not scored and "X_pca" not in cells.obsm


def _obs(column, value):
    def change(a):
        a.obs[column] = value(a) if callable(value) else value

    return change


def _nan_embedding(a):
    a.obsm["X_scGPT"][5, 0] = np.nan


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_obs("batch", "r1"), r"single batch in obs\['batch'\] \('r1'\)"),
        (_obs("label", "T"), r"single cell type in obs\['label'\] \('T'\)"),
        (_obs("label", np.nan), r"obs\['label'\] holds no labels"),
        (_obs("label", lambda a: [str(i) for i in range(a.n_obs)]), r"more cells than cell types"),
        (_obs("batch", lambda a: a.obs["label"].astype(str)), r"no cell type .* has cells in two batches"),
        (_nan_embedding, r"obsm\['X_scGPT'\] holds NaN .* in 1 cells"),
    ],
    ids=["one-batch", "one-label", "no-label", "one-cell-per-label", "labels-within-batches", "nan-embedding"],
)
def test_inputs_it_cannot_score_are_clear_errors_and_nothing_is_written(cells, scored, change, message):
    """Inputs scib-metrics cannot score are refused before the baselines are computed, and ``adata`` is unchanged.

    Catches the pandas/scikit-learn errors ("No objects to concatenate") raised after ``X_pca`` had been
    written into the caller's AnnData (issue 26, item 6).
    """
    change(cells)
    before = set(cells.obsm)
    with pytest.raises(ValueError, match=message):
        _bench(cells)
    assert set(cells.obsm) == before and not scored


def test_options_out_of_range_are_clear_errors(cells, scored):
    """``n_top_genes``/``n_comps`` below 1 and a missing layer are refused (they reached scanpy before)."""
    with pytest.raises(ValueError, match="n_top_genes must be a positive integer, got -5"):
        _bench(cells, n_top_genes=-5)
    with pytest.raises(ValueError, match="n_comps must be a positive integer, got 0"):
        _bench(cells, n_comps=0)
    with pytest.raises(KeyError, match=r"layer='counts' is not a layer of adata"):
        _bench(cells, layer="counts")
    assert "X_pca" not in cells.obsm


def test_baselines_are_written_only_once_the_scores_are_computed(cells, scored):
    """An error while scoring leaves no baseline in ``adata``; catches writing ``X_pca`` before the scores exist."""
    with pytest.raises(Reached):
        _bench(cells)
    assert "X_pca" not in cells.obsm
    assert scored["embeddings"]["X_pca"].shape[0] == cells.n_obs
