"""One convention for the five evaluators of scgpt.tl: the AnnData first, a DataFrame returned,
``key_added=None`` writes nothing, a name writes ``uns[key_added] = {"params", "results", ...}`` that
``write_h5ad`` saves, and the plots of scgpt.pl find what was written (or take the DataFrame).

``benchmark_integration`` runs here with a stand-in for scib-metrics' ``Benchmarker`` (numbers derived from
the embeddings), since this file tests where results go, not the metrics: its real numbers are tested in
``test_benchmark_integration.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import SimpleNamespace

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scgpt
from scgpt.tl import _benchmark as benchmark_module

matplotlib.use("agg")

EVALUATORS = [
    "evaluate_annotation",
    "evaluate_perturbation",
    "evaluate_grn",
    "enrich_programs",
    "benchmark_integration",
]
SECOND_POSITIONAL = {"evaluate_perturbation": "pred", "evaluate_grn": "edges"}

GRN_GENES = ["CD3E", "CD3D", "IL7R", "LTB", "CCR7", "MS4A1", "CD79A", "CD79B", "LYZ", "S100A8", "S100A9", "CST3"]
GRN_GENES += ["FCER1G", "NKG7", "GNLY", "GZMB", "SPI1", "IRF8", "IRF1", "FOS", "JUNB", "KLF6", "HLA-DRA", "CD74"]
GRN_REFERENCE = pd.DataFrame(
    [("SPI1", "LYZ"), ("SPI1", "CST3"), ("IRF8", "CD74"), ("IRF1", "HLA-DRA"), ("KLF6", "FOS"), ("IRF1", "GZMB")],
    columns=["source", "target"],
)
GENE_SETS = {"S1": ["g0", "g1", "g2", "g15"], "S2": ["g5", "g6", "g0"]}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------ the five cases
def _annotation(request, monkeypatch):
    a = ad.AnnData(np.zeros((6, 1), dtype=np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(6)]))
    a.obs["true"] = ["T", "T", "B", "B", "NK", "NK"]
    a.obs["pred"] = pd.Categorical(["T", "B", "B", "B", "unknown", np.nan])
    return (
        a,
        lambda adata, **kw: scgpt.tl.evaluate_annotation(adata, labels_key="true", key="pred", **kw),
        ["confusion"],
    )


def _screen() -> ad.AnnData:
    """Poisson counts over 12 genes: A moves g0, B moves g1."""
    rng = np.random.default_rng(0)
    base = rng.uniform(2, 30, 12)
    blocks, labels = [], []
    for label, effect in {"control": {}, "A": {0: 6.0}, "B": {1: 0.2}}.items():
        mu = base.copy()
        for g, f in effect.items():
            mu[g] *= f
        blocks.append(rng.poisson(mu, size=(20, len(base))))
        labels += [label] * 20
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{i}" for i in range(len(base))])
    return ad.AnnData(X=sp.csr_matrix(np.vstack(blocks).astype(np.float32)), obs=obs, var=var)


def _perturbation(request, monkeypatch):
    screen = _screen()
    pred = scgpt.tl.perturbation_baseline(screen, ["A", "B"], method="no_change")
    extras = ["de_genes", "de_method", "top1000_genes"]
    return screen, lambda adata, **kw: scgpt.tl.evaluate_perturbation(adata, pred, n_de=3, **kw), extras


def _grn_cells(request) -> ad.AnnData:
    """24 real cells with the embedding network of a tiny model in uns['scgpt_grn'], as infer_grn writes it."""
    model = request.getfixturevalue("tiny_model")(n_layers=2, dropout=0.0)
    adata = request.getfixturevalue("pbmc_counts")[:24, GRN_GENES].copy()
    scgpt.tl.infer_grn(adata, model, genes=GRN_GENES, top_k=3)
    return adata


def _grn(request, monkeypatch):
    run = lambda adata, **kw: scgpt.tl.evaluate_grn(adata, reference=GRN_REFERENCE, **kw)  # noqa: E731
    return _grn_cells(request), run, ["universe"]


def _enrichment(request, monkeypatch):
    names = [f"g{i}" for i in range(20)]
    labels = ["0"] * 5 + ["1"] * 5 + [None] * 10
    var = pd.DataFrame({"scgpt_program": pd.Categorical(labels, categories=["0", "1"])}, index=names)
    adata = ad.AnnData(np.zeros((3, 20), dtype=np.float32), var=var, obs=pd.DataFrame(index=["a", "b", "c"]))
    adata.uns["scgpt_program"] = {"params": {"resolution": 10}}  # gene_programs' record (enrichment went in here)
    return adata, lambda adata, **kw: scgpt.tl.enrich_programs(adata, gene_sets=GENE_SETS, **kw), []


class StandInBenchmarker:
    """scib-metrics' ``Benchmarker`` reduced to what benchmark_integration calls; a metric = mean |embedding| + i."""

    COLUMNS = ("KMeans NMI", "KMeans ARI", "Silhouette label", "BRAS", "Graph connectivity")
    COLUMNS += ("Batch correction", "Bio conservation", "Total")

    def __init__(self, adata, *, embedding_obsm_keys, **kwargs):
        self.adata, self.keys = adata, embedding_obsm_keys

    def benchmark(self):
        pass

    def get_results(self, min_max_scale=False):
        rows = {k: [float(np.abs(self.adata.obsm[k]).mean()) + i for i in range(len(self.COLUMNS))] for k in self.keys}
        table = pd.DataFrame.from_dict(rows, orient="index", columns=list(self.COLUMNS))
        kind = pd.DataFrame([["Aggregate score"] * len(self.COLUMNS)], index=["Metric Type"], columns=table.columns)
        return pd.concat([table.astype(object), kind])


def _benchmark(request, monkeypatch):
    monkeypatch.setattr(
        benchmark_module, "_need", lambda module, extra="eval": SimpleNamespace(Benchmarker=StandInBenchmarker)
    )
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {"batch": ["a", "b"] * 10, "cell_type": ["T"] * 10 + ["B"] * 10}, index=[f"c{i}" for i in range(20)]
    )
    adata = ad.AnnData(np.zeros((20, 3), dtype=np.float32), obs=obs)
    adata.obsm["X_pca"] = rng.normal(size=(20, 4)).astype(np.float32)  # present: no baseline is computed
    adata.obsm["X_scGPT"] = rng.normal(size=(20, 4)).astype(np.float32)

    def run(adata, **kw):
        return scgpt.tl.benchmark_integration(
            adata, batch_key="batch", labels_key="cell_type", baselines=("pca",), **kw
        )

    return adata, run, []


CASES = {
    "evaluate_annotation": _annotation,
    "evaluate_perturbation": _perturbation,
    "evaluate_grn": _grn,
    "enrich_programs": _enrichment,
    "benchmark_integration": _benchmark,
}


@pytest.fixture(params=EVALUATORS)
def case(request, monkeypatch):
    """(name, adata, run, extras): ``run(adata, key_added=...)`` calls the evaluator ``name`` on ``adata``."""
    adata, run, extras = CASES[request.param](request, monkeypatch)
    return request.param, adata, run, extras


def _snapshot(adata: ad.AnnData) -> dict:
    """Every key of every slot, uns entries recursively (so that a field added inside an entry shows)."""

    def paths(d, prefix=()):
        out = set()
        for k, v in d.items():
            out.add((*prefix, str(k)))
            if isinstance(v, Mapping):
                out |= paths(v, (*prefix, str(k)))
        return out

    slots = ("obsm", "varm", "layers", "obsp", "varp")
    return {
        "uns": paths(adata.uns),
        "obs": list(adata.obs.columns),
        "var": list(adata.var.columns),
        **{s: sorted(getattr(adata, s).keys()) for s in slots},
    }


def _plain(value):
    """Nested values as plain Python (write_h5ad reads lists back as arrays)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------ the convention
@pytest.mark.parametrize("name", EVALUATORS)
def test_signature_follows_the_convention(name):
    """The AnnData first, options keyword-only, key_added=None, one spelling: catches an evaluator that takes its
    data second (``evaluate_perturbation(pred, adata)`` did), an option passed by position by mistake, a default
    key that writes (``evaluate_annotation`` wrote ``f"{pred_key}_evaluation"``), or ``label_key``/``pred_key``."""
    sig = inspect.signature(getattr(scgpt.tl, name))
    positional = [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == ["adata", *([SECOND_POSITIONAL[name]] if name in SECOND_POSITIONAL else [])]
    assert sig.parameters["key_added"].default is None
    assert not {"label_key", "true_key", "pred_key", "labels"} & set(sig.parameters)
    assert sig.return_annotation == "pd.DataFrame"


def test_key_added_none_writes_nothing(case):
    """Catches an evaluator writing by default: evaluate_annotation wrote uns[f"{pred_key}_evaluation"],
    enrich_programs wrote inside gene_programs' entry (uns["scgpt_program"]["enrichment"]), benchmark_integration
    wrote uns["scgpt_integration_benchmark"]."""
    name, adata, run, _ = case
    before = _snapshot(adata)
    df = run(adata)
    assert isinstance(df, pd.DataFrame) and len(df) > 0
    assert _snapshot(adata) == before


def test_key_added_writes_params_and_results(case):
    """uns[key_added] holds params, results (equal to the returned DataFrame), the evaluator's name and the
    documented extras, and nothing else is written: catches results stored under another key (the plots then
    miss them), a stored table that is not the returned one, or extras written elsewhere."""
    name, adata, run, extras = case
    before = _snapshot(adata)
    df = run(adata, key_added="my_evaluation")
    entry = adata.uns["my_evaluation"]
    assert set(entry) == {"params", "results", "evaluator", *extras}
    assert entry["evaluator"] == f"scgpt.tl.{name}"
    assert isinstance(entry["params"], dict) and entry["params"]
    pd.testing.assert_frame_equal(entry["results"], df)
    after = _snapshot(adata)
    added = after["uns"] - before["uns"]
    assert {p[0] for p in added} == {"my_evaluation"} and before["uns"] <= after["uns"]
    assert {k: v for k, v in after.items() if k != "uns"} == {k: v for k, v in before.items() if k != "uns"}


def test_what_is_written_survives_write_h5ad(case, tmp_path):
    """Catches an entry anndata cannot save (a tuple, a list holding None) or one read back
    different (the results table, the params, the extras such as the confusion matrix or the DE genes)."""
    name, adata, run, extras = case
    df = run(adata, key_added="my_evaluation")
    entry = adata.uns["my_evaluation"]
    adata.write_h5ad(tmp_path / "evaluated.h5ad")
    back = ad.read_h5ad(tmp_path / "evaluated.h5ad").uns["my_evaluation"]
    assert set(back) == set(entry) and back["evaluator"] == f"scgpt.tl.{name}"
    pd.testing.assert_frame_equal(back["results"], df)
    assert _plain(back["params"]) == _plain(entry["params"])
    for extra in extras:
        if isinstance(entry[extra], pd.DataFrame):  # the confusion matrix: the columns' name is not saved
            pd.testing.assert_frame_equal(back[extra], entry[extra], check_names=False)
            assert back[extra].index.name == entry[extra].index.name
        else:
            assert _plain(back[extra]) == _plain(entry[extra])


# ------------------------------------------------------------------------------------------ per evaluator
def test_evaluate_annotation_table_and_confusion_in_attrs():
    """The DataFrame carries what pl.confusion needs (attrs['confusion'] as plain lists): catches a DataFrame in
    attrs, which makes pd.concat of two evaluations raise ("truth value of a DataFrame is ambiguous")."""
    a, run, _ = _annotation(None, None)
    df = run(a)
    other = run(a)
    both = pd.concat({"knn": df, "finetune": other})  # comparing methods: one table
    assert both.loc[("knn", "overall"), "accuracy"] == pytest.approx(0.5)
    conf = pd.DataFrame(**df.attrs["confusion"])
    assert list(conf.columns) == ["B", "NK", "T", "(no prediction)", "unknown"] and conf.to_numpy().sum() == 6
    assert df.loc["overall", "n_missing_predictions"] == 1 and df.loc["NK", "n_missing_predictions"] == 1
    with pytest.raises(ValueError, match="'overall' is a cell type"):
        a.obs["true"] = ["overall"] * 2 + ["B"] * 4
        run(a)


def test_evaluate_perturbation_old_order_is_a_clear_error():
    """``evaluate_perturbation(pred, screen)`` (the pre-release order) is refused with the new order in the message:
    catches a prediction silently read as the screen."""
    screen = _screen()
    pred = scgpt.tl.perturbation_baseline(screen, ["A"], method="no_change")
    with pytest.raises(TypeError, match=r"observed screen first.*evaluate_perturbation\(adata, pred\)"):
        scgpt.tl.evaluate_perturbation(pred, screen)
    with pytest.raises(TypeError, match="observed screen first"):
        scgpt.tl.evaluate_perturbation({"no_change": pred}, screen)


def test_evaluate_grn_reads_the_network_infer_grn_wrote(request):
    """``evaluate_grn(adata)`` scores ``adata.uns[key]['edges']`` exactly as the same edges passed explicitly, also
    with the cells of another AnnData or without cells: catches the stored network and an explicit one being
    scored differently, or an explicit network ignored in favour of the stored one."""
    adata = _grn_cells(request)
    edges = adata.uns["scgpt_grn"]["edges"]
    stored = scgpt.tl.evaluate_grn(adata, reference=GRN_REFERENCE)
    pd.testing.assert_frame_equal(stored, scgpt.tl.evaluate_grn(adata, edges, reference=GRN_REFERENCE))
    assert list(stored.index) == ["scGPT", "random", "pearson", "spearman", "random (expected)"]
    assert stored.loc["scGPT", "n_true"] == 6 and stored.loc["scGPT", "n_edges"] > 0
    # the cells of the baselines from another AnnData; no cells: only the random baseline, same scGPT row
    other = adata[:12].copy()
    del other.uns["scgpt_grn"]
    with_other = scgpt.tl.evaluate_grn(other, edges, reference=GRN_REFERENCE)
    pd.testing.assert_series_equal(with_other.loc["scGPT"], stored.loc["scGPT"])
    assert with_other.loc["pearson", "auroc"] != stored.loc["pearson", "auroc"]  # other cells, other correlations
    no_cells = scgpt.tl.evaluate_grn(edges=edges, reference=GRN_REFERENCE)
    pd.testing.assert_frame_equal(no_cells, stored.loc[["scGPT", "random", "random (expected)"]])
    # a network written under another key: key= names it, and the error lists the networks present
    scgpt.tl.infer_grn(adata, request.getfixturevalue("tiny_model")(n_layers=2, dropout=0.0), genes=GRN_GENES,
                       top_k=2, key_added="grn_top2")  # fmt: skip
    top2 = scgpt.tl.evaluate_grn(adata, key="grn_top2", reference=GRN_REFERENCE)
    assert top2.loc["scGPT", "n_edges"] < stored.loc["scGPT", "n_edges"]
    with pytest.raises(KeyError, match=r"adata.uns\['grn'\] holds no network.*\['scgpt_grn', 'grn_top2'\]"):
        scgpt.tl.evaluate_grn(adata, key="grn", reference=GRN_REFERENCE)
    with pytest.raises(ValueError, match="key_added='scgpt_grn' names the uns entry it reads"):
        scgpt.tl.evaluate_grn(adata, reference=GRN_REFERENCE, key_added="scgpt_grn")
    with pytest.raises(TypeError, match=r"takes the AnnData first: evaluate_grn\(adata\)"):
        scgpt.tl.evaluate_grn(edges, GRN_REFERENCE)  # the pre-release order
    with pytest.raises(ValueError, match="nothing to score"):
        scgpt.tl.evaluate_grn(reference=GRN_REFERENCE)


# ------------------------------------------------------------------------------------------ the plots find it
def test_confusion_finds_the_result_of_the_call_that_made_it(tmp_path):
    """The known bug: ``pl.confusion(query)`` said "run evaluate_annotation first" when the evaluation sat under
    another key. The plot takes the DataFrame, finds the only evaluation in uns (also after write_h5ad), and
    otherwise lists the keys that hold evaluations."""
    a, run, _ = _annotation(None, None)
    df = run(a)
    from_df = scgpt.pl.confusion(df, show=False)
    run(a, key_added="scgpt_knn_evaluation")
    from_uns = scgpt.pl.confusion(a, show=False)  # no key: the only evaluation
    np.testing.assert_array_equal(from_uns.images[0].get_array(), from_df.images[0].get_array())
    assert from_uns.get_title() == from_df.get_title() == f"accuracy 0.500, macro-F1 {df.loc['overall', 'f1']:.3f}"
    assert [t.get_text() for t in from_uns.get_xticklabels()] == ["B", "NK", "T", "(no prediction)", "unknown"]
    a.write_h5ad(tmp_path / "a.h5ad")
    read = scgpt.pl.confusion(ad.read_h5ad(tmp_path / "a.h5ad"), "scgpt_knn_evaluation", show=False)
    np.testing.assert_array_equal(read.images[0].get_array(), from_df.images[0].get_array())

    run(a, key_added="second")
    with pytest.raises(KeyError, match=r"under several keys, \['scgpt_knn_evaluation', 'second'\]; pass key="):
        scgpt.pl.confusion(a)
    with pytest.raises(KeyError, match=r"uns\['scgpt_celltype_evaluation'\] holds no results.*'second'\]: pass key="):
        scgpt.pl.confusion(a, "scgpt_celltype_evaluation")
    with pytest.raises(KeyError, match="holds no results of scgpt.tl.evaluate_annotation; pass the DataFrame"):
        scgpt.pl.confusion(ad.AnnData(np.zeros((2, 1), dtype=np.float32), obs=pd.DataFrame(index=["a", "b"])))
    with pytest.raises(KeyError, match=r"no confusion matrix in .attrs\['confusion'\]"):
        scgpt.pl.confusion(pd.DataFrame(df))  # a new frame without the attrs
    with pytest.raises(TypeError, match="got dict"):
        scgpt.pl.confusion({"accuracy": 1.0})  # the pre-release dict


def test_perturbation_metrics_finds_the_result(tmp_path):
    """pl.perturbation_metrics draws the same from the DataFrame and from uns[key_added] (also read back from
    h5ad); a missing key lists the keys holding evaluations: catches a plot looking under a fixed default key."""
    screen = _screen()
    pred = scgpt.tl.perturbation_baseline(screen, ["A", "B"], method="no_change")
    df = scgpt.tl.evaluate_perturbation(screen, pred, key_added="pert_eval")
    values = scgpt.pl.perturbation_metrics(df, metric="mse_top1000", show=False).collections[-1].get_offsets()
    found = scgpt.pl.perturbation_metrics(screen, metric="mse_top1000", show=False).collections[-1].get_offsets()
    np.testing.assert_array_equal(found, values)  # the mean marker of each method
    screen.write_h5ad(tmp_path / "screen.h5ad")
    back = ad.read_h5ad(tmp_path / "screen.h5ad")
    read = scgpt.pl.perturbation_metrics(back, metric="mse_top1000", key="pert_eval", show=False)
    np.testing.assert_array_equal(read.collections[-1].get_offsets(), values)
    assert list(back.uns["pert_eval"]["de_genes"]["A"])[0] == "g0"  # usable as pl.perturbation(de_genes=...)
    with pytest.raises(KeyError, match=r"uns\['perturbation_evaluation'\] holds no results.*\['pert_eval'\]"):
        scgpt.pl.perturbation_metrics(screen, key="perturbation_evaluation")


def test_benchmark_plot_finds_the_result(monkeypatch):
    """pl.benchmark_integration draws the same from the table and from uns[key_added]; a missing key lists the
    keys holding benchmarks: catches a plot looking under the pre-release default key."""
    adata, run, _ = _benchmark(None, monkeypatch)
    table = run(adata, key_added="bench")
    texts = [t.get_text() for t in scgpt.pl.benchmark_integration(table, show=False).texts]
    assert [t.get_text() for t in scgpt.pl.benchmark_integration(adata, show=False).texts] == texts
    assert len(texts) == table.size
    with pytest.raises(KeyError, match=r"uns\['scgpt_integration_benchmark'\] holds no results.*\['bench'\]"):
        scgpt.pl.benchmark_integration(adata, "scgpt_integration_benchmark")
