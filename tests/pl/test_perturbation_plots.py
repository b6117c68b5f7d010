"""scgpt.pl.perturbation / perturbation_metrics draw perturbation predictions and their scores.

A tiny synthetic screen (simulate_perturbations on a hand-made network), the four baselines and an oracle
"model" (the observed profiles); each test checks what was drawn (boxes, dots, band, lines, colours, labels)
against values computed here with numpy, and that the figure saves as PNG and PDF.
"""

from __future__ import annotations

import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_hex
from matplotlib.patches import PathPatch, Rectangle

from scgpt.datasets import simulate_perturbations
from scgpt.pl._perturbation import BASELINE_COLOR, perturbation, perturbation_metrics
from scgpt.tl import evaluate_perturbation, perturbation_baseline, perturbation_de_genes

matplotlib.use("agg")

GENES = [f"G{i}" for i in range(24)]
BASELINES = ["no_change", "train_mean", "additive", "linear"]
TEST = ["G0", "G1", "G0+G1"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(fig, tmp_path, name):
    for fmt in ("png", "pdf"):
        path = tmp_path / f"{name}.{fmt}"
        fig.savefig(path, bbox_inches="tight")
        assert path.stat().st_size > 500


@pytest.fixture(scope="module")
def screen():
    """Controls, six singles and one double on 24 genes: five regulators with six targets each."""
    rng = np.random.default_rng(0)
    rows = [(tf, t, rng.choice([-1.0, 1.0])) for tf in GENES[:6] for t in rng.choice(GENES[6:], 6, replace=False)]
    network = pd.DataFrame(rows, columns=["source", "target", "weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return simulate_perturbations(
            n_genes=len(GENES), n_cells_per_condition=20, singles=GENES[:6], doubles=["G0+G1"], network=network, seed=0
        )


def _xy(collection) -> np.ndarray:
    return np.asarray(collection.get_offsets(), dtype=float)


def _lognorm(adata) -> np.ndarray:
    counts = adata.X.toarray().astype(np.float64)
    return np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)


def _oracle(adata, labels, control_mean):
    """A 'model' predicting the observed mean profiles exactly (same format as every prediction)."""
    from scgpt.tl._perturbation_baselines import prediction_anndata

    X, obs = _lognorm(adata), adata.obs["perturbation"].astype(str).to_numpy()
    profiles = np.stack([X[obs == s].mean(0) for s in labels])
    return prediction_anndata(profiles, labels, adata.var_names, control_mean, {"method": "scgpt"})


@pytest.fixture(scope="module")
def preds(screen):
    train = [s for s in GENES[:6] if s not in TEST[:2]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = {m: perturbation_baseline(screen, TEST, method=m, train=train) for m in BASELINES}
    out = {"scgpt": _oracle(screen, TEST, out["no_change"].var["control_mean"].to_numpy()), **out}
    return out


@pytest.fixture(scope="module")
def results(screen, preds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return evaluate_perturbation(screen, preds)


def _observed(screen, label, genes):
    X, obs = _lognorm(screen), screen.obs["perturbation"].astype(str).to_numpy()
    cols = screen.var_names.get_indexer(genes)
    ctrl = X[obs == "control"][:, cols]
    return X[obs == label][:, cols] - ctrl.mean(0), ctrl - ctrl.mean(0)


# --------------------------------------------------------------------------- perturbation


def test_perturbation_boxes_dots_band(screen, preds, tmp_path):
    shown = {m: preds[m] for m in ("scgpt", "no_change", "linear")}
    fig = perturbation(screen, "G0", shown, n_genes=8, return_fig=True)
    ax = fig.axes[0]
    genes = perturbation_de_genes(screen, ["G0"], n_de=8)["G0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(g) for g in genes]
    weights = {t.get_text(): t.get_fontweight() for t in ax.get_xticklabels()}
    assert weights.pop("G0") == "bold"  # the knocked-down target is among the DE genes, in bold
    assert set(weights.values()) == {"normal"}
    assert ax.get_title() == "G0"

    # one box per gene; each box's median is the observed cells' median change
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 8
    observed, control = _observed(screen, "G0", genes)
    for j, box in enumerate(boxes):
        x0, x1 = box.get_path().get_extents().intervalx
        assert x0 < j < x1
        q1, q3 = np.percentile(observed[:, j], [25, 75])
        assert box.get_path().get_extents().intervaly == pytest.approx([q1, q3])
    medians = {round(float(line.get_ydata()[0]), 9) for line in ax.lines if len(set(line.get_ydata())) == 1}
    assert all(round(float(m), 9) in medians for m in np.median(observed, 0))

    # the dots: each method its own collection, at the predicted profile minus the observed control mean
    dots = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}
    assert list(dots) == ["scgpt", "no_change", "linear"]
    j = 3
    row = preds["linear"].obs_names.get_loc("G0")
    expected = (
        preds["linear"][row, genes[j]].X.item()
        - (_lognorm(screen)[screen.obs["perturbation"] == "control"])[:, screen.var_names.get_loc(genes[j])].mean()
    )
    x, y = _xy(dots["linear"])[j]
    assert abs(x - j) < 0.5 and y == pytest.approx(expected)
    assert y == pytest.approx(preds["linear"].layers["delta"][row, screen.var_names.get_loc(genes[j])])
    assert _xy(dots["no_change"])[:, 1] == pytest.approx(np.zeros(8), abs=1e-9)
    assert _xy(dots["scgpt"])[:, 1] == pytest.approx(observed.mean(0))  # the oracle sits at the box means
    assert len({to_hex(c.get_facecolor()[0]) for c in dots.values()}) == 3
    assert len({c.get_paths()[0].vertices.tobytes() for c in dots.values()}) == 3  # three markers

    # the control band: per gene, the 2.5-97.5 % of the control cells' deviation from their mean
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_label().startswith("control")]
    path = band.get_paths()[0]
    low, high = np.percentile(control, [2.5, 97.5], axis=0)
    eps = 1e-3
    for j in range(8):
        assert path.contains_point((j, (low[j] + high[j]) / 2))
        assert not path.contains_point((j, high[j] + eps)) and not path.contains_point((j, low[j] - eps))
    assert any(list(line.get_ydata()) == [0, 0] and line.get_linestyle() == "--" for line in ax.lines)

    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "observed (20 cells)",
        "control 2.5-97.5 %",
        "scgpt (predicted)",
        "no_change (predicted)",
        "linear (predicted)",
    ]
    _save(fig, tmp_path, "perturbation")


def test_perturbation_one_prediction_given_genes_and_axes(screen, preds, results, tmp_path):
    _, given = plt.subplots()
    # a combination given as a gene list; de_genes as evaluate_perturbation's dict, cut to n_genes
    out = perturbation(screen, ["G0", "G1"], preds["additive"], n_genes=5, de_genes=results.attrs["de_genes"], ax=given)
    assert out is given  # the agg backend does not show: the axes come back
    assert [t.get_text() for t in given.get_xticklabels()] == results.attrs["de_genes"]["G0+G1"][:5]
    assert given.get_title() == "G0+G1"
    bold = {t.get_text() for t in given.get_xticklabels() if t.get_fontweight() == "bold"}
    assert bold == {"G0", "G1"} & {t.get_text() for t in given.get_xticklabels()}
    (dots,) = [c for c in given.collections if isinstance(c, PathCollection)]
    assert dots.get_label() == "additive"  # named by uns["perturbation_prediction"]["method"]
    assert _xy(dots)[:, 0] == pytest.approx(np.arange(5))  # one method: dots centred on the boxes
    _save(given.figure, tmp_path, "perturbation_ax")

    ax = perturbation(screen, "G2", de_genes=["G7", "G2"], show=False)  # observed only, genes in the order given
    assert [t.get_text() for t in ax.get_xticklabels()] == ["G7", "G2"]
    assert not [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len([p for p in ax.patches if isinstance(p, PathPatch)]) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["observed (20 cells)", "control 2.5-97.5 %"]


def test_perturbation_errors(screen, preds):
    with pytest.raises(KeyError, match=r"perturbation 'G9' has no cells.*'G0'"):
        perturbation(screen, "G9", show=False)
    with pytest.raises(KeyError, match=r"prediction 'linear' has no row for perturbation 'G2'"):
        perturbation(screen, "G2", {"linear": preds["linear"]}, show=False)
    with pytest.raises(KeyError, match=r"prediction 'linear' lacks 1 of the shown genes"):
        perturbation(screen, "G0", {"linear": preds["linear"][:, 1:]}, n_genes=len(GENES), show=False)
    with pytest.raises(ValueError, match="is the control label"):
        perturbation(screen, "control", show=False)
    no_control = screen.copy()
    no_control.obs["perturbation"] = no_control.obs["perturbation"].astype(str).replace("control", "G5")
    with pytest.raises(ValueError, match="control"):
        perturbation(no_control, "G0", show=False)
    with pytest.raises(KeyError, match=r"not in adata.var_names: \['NOPE'\]"):
        perturbation(screen, "G0", de_genes=["G0", "NOPE"], show=False)
    with pytest.raises(KeyError, match="de_genes has no entry for perturbation 'G2'"):
        perturbation(screen, "G2", de_genes={"G0": ["G0"]}, show=False)
    with pytest.raises(ValueError, match="n_genes must be positive"):
        perturbation(screen, "G0", n_genes=0, show=False)
    with pytest.raises(KeyError, match="'cond' is not a column"):
        perturbation(screen, "G0", perturbation_key="cond", show=False)
    with pytest.raises(TypeError, match="pred must be"):
        perturbation(screen, "G0", [preds["linear"]], show=False)


# --------------------------------------------------------------------------- perturbation_metrics


def _means(results, metric):
    return results[results["perturbation"] == "mean"].set_index("method")[metric]


def _is_grey(colour: str) -> bool:
    return colour[1:3] == colour[3:5] == colour[5:7]


def _distinct_greys(colours: list[str]) -> bool:
    return all(_is_grey(c) for c in colours) and len(set(colours)) == len(colours)


def test_metrics_boxes_colours_and_best_baseline(results, tmp_path):
    fig = perturbation_metrics(results, return_fig=True)
    ax = fig.axes[0]
    order = ["scgpt", *BASELINES]
    assert [t.get_text() for t in ax.get_xticklabels()] == order
    assert ax.get_ylabel() == "pearson_delta"
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 5
    faces = [to_hex(b.get_facecolor()) for b in boxes]
    assert _distinct_greys(faces[1:]) and not _is_grey(faces[0])  # baselines grey, each its own; the model coloured

    # the perturbations as points, 'mean' rows left out; the means as diamonds at the table's 'mean' rows
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    *strips, diamonds = points
    assert [len(_xy(s)) for s in strips] == [len(TEST)] * 5
    scored = results[(results["method"] == "linear") & (results["perturbation"] != "mean")]["pearson_delta"]
    assert sorted(_xy(strips[4])[:, 1]) == pytest.approx(sorted(scored))
    means = _means(results, "pearson_delta")
    assert _xy(diamonds)[:, 1] == pytest.approx(means[order].to_numpy())

    # the best baseline's mean as a dashed line, named in the legend
    best = means[BASELINES].idxmax()
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert line.get_ydata()[0] == pytest.approx(means[best])
    assert line.get_label() == f"best baseline ({best}): {means[best]:.3f}"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    # one entry per method (the issue: a method without a legend entry), in the colour of its box
    assert legend == ["scgpt", *(f"{b} (baseline)" for b in BASELINES), "mean", line.get_label()]
    patches = ax.get_legend().get_patches()
    assert [to_hex(p.get_facecolor()) for p in patches[:5]] == faces
    _save(fig, tmp_path, "metrics")


def test_metrics_kinds_subsets_errors_lower_is_better(results, tmp_path):
    import anndata as ad

    # an error metric: the best baseline is the lowest; methods subset in the given order
    ax = perturbation_metrics(results, metric="mse_top1000", methods=["linear", "scgpt", "no_change"], show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["linear", "scgpt", "no_change"]
    means = _means(results, "mse_top1000")
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert line.get_ydata()[0] == pytest.approx(min(means["linear"], means["no_change"]))

    # bars at the means; points coloured per method in a strip plot; an AnnData holding the table
    _, given = plt.subplots()
    assert perturbation_metrics(results, metric="pearson_delta_de", kind="bar", ax=given, show=False) is given
    bars = [p for p in given.patches if isinstance(p, Rectangle)]
    assert [b.get_height() for b in bars] == pytest.approx(_means(results, "pearson_delta_de")[["scgpt", *BASELINES]])
    assert _distinct_greys([to_hex(b.get_facecolor()) for b in bars][1:])
    _save(given.figure, tmp_path, "metrics_bar")
    holder = ad.AnnData(np.zeros((1, 1)))
    holder.uns["perturbation_evaluation"] = results
    ax = perturbation_metrics(
        holder, kind="strip", methods="scgpt", baselines=(), key="perturbation_evaluation", show=False
    )
    assert not [p for p in ax.patches if isinstance(p, PathPatch)]
    assert not [ln for ln in ax.lines if ln.get_linestyle() == "--"]  # no baseline shown: no line
    strip, _ = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert to_hex(strip.get_facecolor()[0]) != BASELINE_COLOR and len(_xy(strip)) == len(TEST)
    _save(ax.figure, tmp_path, "metrics_strip")

    with pytest.raises(KeyError, match=r"unknown metric 'pearson'; the results hold \['pearson_delta', "):
        perturbation_metrics(results, metric="pearson", show=False)
    with pytest.raises(KeyError, match=r"unknown methods \['gears'\]"):
        perturbation_metrics(results, methods=["linear", "gears"], show=False)
    with pytest.raises(ValueError, match="kind must be"):
        perturbation_metrics(results, kind="violin", show=False)
    with pytest.raises(KeyError, match=r"uns\['perturbation_evaluation'\] \(nor any other key\) holds no results"):
        perturbation_metrics(ad.AnnData(np.zeros((1, 1))), key="perturbation_evaluation", show=False)
    with pytest.raises(KeyError, match=r"adata.uns holds no results of scgpt.tl.evaluate_perturbation; pass the"):
        perturbation_metrics(ad.AnnData(np.zeros((1, 1))), show=False)
    with pytest.raises(KeyError, match=r"lack the columns \['method'\]"):
        perturbation_metrics(results.drop(columns="method"), show=False)
