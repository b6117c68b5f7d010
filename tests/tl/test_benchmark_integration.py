"""scgpt.tl.benchmark_integration and scgpt.pl.benchmark_integration: baselines and scib-metrics in one table."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

import scgpt

matplotlib.use("agg")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def benchmarked(pbmc_counts):
    adata = pbmc_counts.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "run1", "run2")
    rng = np.random.default_rng(0)
    adata.obsm["X_scGPT_random"] = rng.normal(size=(adata.n_obs, 16)).astype(np.float32)  # a poor embedding
    table = scgpt.tl.benchmark_integration(
        adata,
        batch_key="batch",
        labels_key="bulk_labels",
        obsm_keys=["X_scGPT_random"],
        scvi_max_epochs=2,
        key_added="scgpt_integration_benchmark",
    )
    return adata, table


def test_baselines_are_computed_and_everything_is_scored(benchmarked):
    adata, table = benchmarked
    assert list(table.index) == ["X_pca", "X_pca_harmony", "X_scVI", "X_scGPT_random"]
    for key in ("X_pca", "X_pca_harmony", "X_scVI"):
        assert adata.obsm[key].shape[0] == 700 and np.isfinite(adata.obsm[key]).all()
    assert {"Bio conservation", "Batch correction", "Total", "KMeans NMI", "BRAS"} <= set(table.columns)
    np.testing.assert_allclose(table["AvgBIO"], table[["KMeans NMI", "KMeans ARI", "Silhouette label"]].mean(1))
    np.testing.assert_allclose(table["AvgBATCH"], table[["BRAS", "Graph connectivity"]].mean(1))
    assert table.loc["X_scGPT_random", "Bio conservation"] < table.loc["X_pca", "Bio conservation"] - 0.1
    assert table.loc["X_pca", "PCR comparison"] == 0  # the unintegrated reference
    stored = adata.uns["scgpt_integration_benchmark"]
    assert stored["results"].equals(table) and stored["params"]["labels_key"] == "bulk_labels"
    assert stored["evaluator"] == "scgpt.tl.benchmark_integration"


def test_existing_baselines_are_reused(benchmarked):
    adata, _ = benchmarked
    adata = adata.copy()
    given = adata.obsm["X_pca"][:, :10].copy()
    adata.obsm["X_scVI"] = given.copy()  # any embedding under the scVI key is taken as is
    with pytest.warns(UserWarning, match="exists and is overwritten"):
        table = scgpt.tl.benchmark_integration(
            adata,
            batch_key="batch",
            labels_key="bulk_labels",
            obsm_keys=[],
            baselines=("scvi",),
            key_added="scgpt_integration_benchmark",
        )
    assert list(table.index) == ["X_pca", "X_scVI"]
    np.testing.assert_array_equal(adata.obsm["X_scVI"], given)  # not retrained
    # the first 10 PCs score close to the 50 PCs they come from, far from the random embedding above
    assert table.loc["X_scVI", "Bio conservation"] == pytest.approx(table.loc["X_pca", "Bio conservation"], abs=0.1)


def test_plot_draws_every_value(benchmarked):
    """Every value drawn, from adata.uns[key] or from the table: catches a plot that cannot find the result."""
    adata, table = benchmarked
    fig = scgpt.pl.benchmark_integration(adata, return_fig=True)  # the only benchmark in adata.uns
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table.sort_values("Total", ascending=False).index)
    assert len(ax.texts) == table.shape[0] * table.shape[1]
    assert ax.get_xticklabels()[-1].get_text() == "AvgBATCH"
    from_table = scgpt.pl.benchmark_integration(table, show=False)
    assert [t.get_text() for t in from_table.texts] == [t.get_text() for t in ax.texts]
    with pytest.raises(KeyError, match="holds no results of scgpt.tl.benchmark_integration; pass the DataFrame"):
        scgpt.pl.benchmark_integration(scgpt.datasets.pbmc68k_counts())
    with pytest.raises(KeyError, match=r"they are under \['scgpt_integration_benchmark'\]: pass key="):
        scgpt.pl.benchmark_integration(adata, "benchmark")


def test_clear_errors(pbmc):
    with pytest.raises(KeyError, match="batch_key='batch' is not a column"):
        scgpt.tl.benchmark_integration(pbmc, batch_key="batch", labels_key="bulk_labels")
    pbmc.obs["batch"] = "a"
    with pytest.raises(KeyError, match=r"\['X_nope'\] are not in adata.obsm"):
        scgpt.tl.benchmark_integration(pbmc, batch_key="batch", labels_key="bulk_labels", obsm_keys=["X_nope"])
    with pytest.raises(ValueError, match=r"unknown baselines \['bbknn'\]"):
        scgpt.tl.benchmark_integration(pbmc, batch_key="batch", labels_key="bulk_labels", baselines=("bbknn",))
