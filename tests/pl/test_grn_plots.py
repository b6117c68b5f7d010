"""scgpt.pl.attention / grn / gene_programs / gene_embedding draw gene networks and gene programs.

Small synthetic inputs in the layout scgpt.tl.infer_grn and scgpt.tl.gene_programs write; each test checks
what was drawn (arrays, artists, labels) and that the figure saves as PNG and PDF.
"""

from __future__ import annotations

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex, to_rgba
from matplotlib.patches import FancyArrowPatch

from scgpt.pl._grn import (
    NEGATIVE,
    NO_PROGRAM,
    POSITIVE,
    TARGET_COLOR,
    TF_COLOR,
    attention,
    gene_embedding,
    gene_programs,
    grn,
)

matplotlib.use("agg")

GENES = [f"G{i}" for i in range(8)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(fig, tmp_path, name, formats=("png", "pdf")):
    for fmt in formats:
        path = tmp_path / f"{name}.{fmt}"
        fig.savefig(path, bbox_inches="tight")
        assert path.stat().st_size > 500


def _edges_from(matrix: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """Edge table of a (targets x sources) weight matrix, both directions, NaN pairs left out, sorted."""
    rows = [
        (genes[j], genes[i], matrix[i, j])
        for i in range(len(genes))
        for j in range(len(genes))
        if i != j and np.isfinite(matrix[i, j])
    ]
    table = pd.DataFrame(rows, columns=["source", "target", "weight"])
    return table.sort_values("weight", ascending=False, ignore_index=True)


@pytest.fixture
def network() -> ad.AnnData:
    """Two blocks of genes (G0-G2, G3-G5) tied strongly inside, weakly across; G6, G7 barely connected."""
    rng = np.random.default_rng(0)
    w = rng.uniform(0.0, 0.05, (8, 8))
    w[:3, :3] = rng.uniform(0.8, 1.0, (3, 3))
    w[3:6, 3:6] = rng.uniform(0.5, 0.7, (3, 3))
    w[6:, :] = w[:, 6:] = 0.01
    w[2, 5] = 0.42  # edge G5 -> G2 (target G2, source G5)
    w[7, 6] = np.nan  # no edge G6 -> G7
    adata = ad.AnnData(np.zeros((4, 8), dtype=np.float32), var=pd.DataFrame(index=GENES))
    adata.uns["scgpt_grn"] = {"params": {"method": "attention"}, "edges": _edges_from(w, GENES)}
    return adata


def _cell(im, ax, target: str, source: str) -> float:
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    return im.get_array()[rows.index(target), cols.index(source)]


def test_attention_heatmap(network, tmp_path):
    fig = attention(network, return_fig=True)
    ax, cax = fig.axes
    im = ax.images[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert im.get_array().shape == (8, 8) and sorted(rows) == GENES and rows == cols
    assert _cell(im, ax, "G2", "G5") == pytest.approx(0.42)
    assert np.ma.is_masked(_cell(im, ax, "G7", "G6"))  # absent pair: blank (masked), not 0
    # clustering keeps each block together
    for block in (["G0", "G1", "G2"], ["G3", "G4", "G5"]):
        pos = sorted(rows.index(g) for g in block)
        assert pos[-1] - pos[0] == 2
    assert "target" in ax.get_ylabel() and "query" in ax.get_ylabel()
    assert "source" in ax.get_xlabel() and "key" in ax.get_xlabel()
    assert cax.get_ylabel() == "attention weight"
    assert im.get_cmap().name.startswith("Reds") and im.get_clim()[0] >= 0
    _save(fig, tmp_path, "attention", ("png", "pdf", "svg"))


def test_attention_subsets_and_order(network, tmp_path):
    ax = attention(network, n_genes=3, cluster=False, show=False)
    edges = network.uns["scgpt_grn"]["edges"]
    totals = edges.groupby("source")["weight"].sum() + edges.groupby("target")["weight"].sum()
    expected = list(totals.sort_values(ascending=False).index[:3])
    assert sorted(expected) == ["G0", "G1", "G2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == expected  # largest total |weight| first
    assert ax.images[0].get_array().shape == (3, 3)
    ax = attention(network, genes=["G5", "G2", "G0"], cluster=False, show=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["G5", "G2", "G0"]
    assert ax.images[0].get_array()[1, 0] == pytest.approx(0.42)  # row G2 (target), column G5 (source)
    _, given = plt.subplots()
    assert attention(network, genes=["G0", "G1"], ax=given, show=False) is given
    _save(given.figure, tmp_path, "attention_ax")


def test_attention_groups_and_negative_weights(network, tmp_path):
    edges = network.uns["scgpt_grn"]["edges"]
    diff = edges.assign(weight=edges["weight"] - 0.5, group="T cell vs B cell")
    network.uns["scgpt_grn"]["edges"] = pd.concat([edges.assign(group="T cell"), diff], ignore_index=True)
    with pytest.raises(ValueError, match=r"choose one with group=.*'T cell', 'T cell vs B cell'"):
        attention(network)
    with pytest.raises(KeyError, match="No network for group 'NK'"):
        attention(network, group="NK")
    fig = attention(network, group="T cell vs B cell", return_fig=True)
    ax = fig.axes[0]
    im = ax.images[0]
    low, high = im.get_clim()
    assert low == pytest.approx(-high) and high > 0 and im.get_cmap().name.startswith("RdBu_r")
    assert _cell(im, ax, "G2", "G5") == pytest.approx(0.42 - 0.5)
    assert "T cell vs B cell" in ax.get_title()
    ax = attention(network, group="T cell", vmin=0, vmax=2, cmap="viridis", show=False)
    assert ax.images[0].get_clim() == (0, 2)
    _save(fig, tmp_path, "attention_diff")


def test_attention_errors(network):
    with pytest.raises(
        KeyError, match=r"'missing'\] has no network edges; the networks are under \['scgpt_grn'\]: pass key="
    ):
        attention(network, "missing")  # the plot lists where the networks are (tl -> pl consistency)
    with pytest.raises(KeyError, match=r"not in the network.*\['nope'\]"):
        attention(network, genes=["G0", "nope"])
    with pytest.raises(ValueError, match="not computed per group"):
        attention(network, group="T cell")


@pytest.fixture
def tf_edges() -> pd.DataFrame:
    """TF1 -> 15 targets (weights 1.0 ... -0.4, sign alternating), TF2 -> 4 targets and TF1, a self-edge."""
    rows = [("TF1", f"T{i}", (1.0 - 0.04 * i) * (-1) ** i) for i in range(15)]
    rows += [("TF2", t, w) for t, w in [("T0", 0.5), ("T20", -0.3), ("T21", 0.2), ("T22", 0.1), ("TF1", 0.6)]]
    rows += [("TF2", "TF2", 5.0), ("T3", "TF1", 0.9)]
    return pd.DataFrame(rows, columns=["source", "target", "weight"])


def _drawn_network(ax):
    nodes = {c.get_label(): c for c in ax.collections}
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    return nodes, arrows


def test_grn_network(tf_edges, tmp_path):
    fig = grn(tf_edges, tfs=["TF1", "TF2"], top=10, return_fig=True)
    ax = fig.axes[0]
    nodes, arrows = _drawn_network(ax)
    tf_nodes, target_nodes = nodes["source (TF)"], nodes["target"]
    # TF1: T0..T9; TF2: T0, TF1, T20, T21, T22 (self-edge left out; TF1 is a TF) -> 13 targets, 15 edges
    assert len(tf_nodes.get_offsets()) == 2 and len(target_nodes.get_offsets()) == 13
    assert len(arrows) == 15
    assert to_hex(tf_nodes.get_facecolor()[0]) == TF_COLOR and to_hex(target_nodes.get_facecolor()[0]) == TARGET_COLOR
    assert tf_nodes.get_sizes()[0] > target_nodes.get_sizes()[0]
    colours = [to_hex(a.get_edgecolor()) for a in arrows]
    # positive: TF1 -> T0, T2, T4, T6, T8 and TF2 -> T0, TF1, T21, T22; negative: TF1 -> 5 odd, TF2 -> T20
    assert colours.count(POSITIVE) == 9 and colours.count(NEGATIVE) == 6
    widths = sorted(a.get_linewidth() for a in arrows)
    assert widths[-1] > 3 * widths[0]  # width follows |weight|
    assert {t.get_text() for t in ax.texts} == {"TF1", "TF2", *(f"T{i}" for i in range(10)), "T20", "T21", "T22"}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["source (TF)", "target", "positive weight", "negative weight"]
    _save(fig, tmp_path, "grn")


def test_grn_layouts_seed_and_anndata(tf_edges, tmp_path):
    first = grn(tf_edges, tfs="TF2", seed=3, show=False)
    again = grn(tf_edges, tfs="TF2", seed=3, show=False)
    pos1 = _drawn_network(first)[0]["target"].get_offsets()
    assert np.allclose(pos1, _drawn_network(again)[0]["target"].get_offsets())
    assert len(pos1) == 5
    adata = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    adata.uns["net"] = {"params": {"method": "embedding"}, "edges": tf_edges.assign(group="x")}
    _, given = plt.subplots()
    for layout in ("circular", "shell", "kamada_kawai"):
        given.clear()
        assert grn(adata, "net", tfs="TF1", top=3, layout=layout, ax=given, show=False) is given
        assert len(_drawn_network(given)[1]) == 3
    _save(given.figure, tmp_path, "grn_ax")


def test_grn_errors(tf_edges):
    with pytest.raises(KeyError, match=r"No outgoing edge from \['T5'\]"):
        grn(tf_edges, tfs=["TF1", "T5"])
    with pytest.raises(KeyError, match="run scgpt.tl.infer_grn first"):
        grn(ad.AnnData(np.zeros((2, 1), dtype=np.float32)), tfs="TF1")
    with pytest.raises(KeyError, match="lacks the columns"):
        grn(tf_edges.drop(columns="weight"), tfs="TF1")
    grouped = pd.concat([tf_edges.assign(group="a"), tf_edges.assign(group="b")])
    with pytest.raises(ValueError, match=r"one of \['a', 'b'\]"):
        grn(grouped, tfs="TF1")
    with pytest.raises(ValueError, match="layout must be"):
        grn(tf_edges, tfs="TF1", layout="grid")


@pytest.fixture
def programs() -> ad.AnnData:
    """30 cells in 3 cell types, 4 programs over 40 genes; program p is active in cell type p (p < 3)."""
    rng = np.random.default_rng(1)
    n_cells, n_genes = 30, 40
    cell_type = pd.Categorical(np.repeat(["B", "T", "NK"], 10), categories=["T", "B", "NK"])
    scores = rng.normal(-1.0, 0.1, (n_cells, 4))
    for p, ct in enumerate(["T", "B", "NK"]):
        scores[np.asarray(cell_type == ct), p] += 2.0
    scores[:, 3] = -1.0  # program 3 never above 0
    obs = pd.DataFrame({"cell_type": cell_type}, index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(np.zeros((n_cells, n_genes), dtype=np.float32), obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    names = ["0", "1", "2", "3"]
    program = np.array([names[i % 4] for i in range(n_genes)], dtype=object)
    program[-6:] = np.nan  # in no program
    adata.var["scgpt_program"] = pd.Categorical(program, categories=names)
    adata.obsm["scgpt_program_scores"] = pd.DataFrame(scores, index=adata.obs_names, columns=names)
    umap = rng.normal(size=(n_genes, 2))
    umap[[0, 1, -1]] = np.nan  # g0, g1 (programs 0, 1) and g39 (no program) not embedded
    adata.varm["scgpt_program_umap"] = umap
    adata.varm["X_scGPT_gene"] = rng.normal(size=(n_genes, 8))
    adata.uns["scgpt_program"] = {
        "params": {},
        "programs": pd.DataFrame({"program": program[:-6], "gene": adata.var_names[:-6]}),
    }
    return adata


def test_gene_programs_dotplot(programs, tmp_path):
    fig = gene_programs(programs, "cell_type", return_fig=True)
    ax, cax = fig.axes
    dots = ax.collections[0]
    assert len(dots.get_offsets()) == 4 * 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["T", "B", "NK"]  # the categories' order
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
    colour = np.asarray(dots.get_array()).reshape(4, 3)
    assert np.allclose(colour[:3].max(1), 1) and np.allclose(colour[:3].min(1), 0)  # scaled per program
    assert np.argmax(colour[0]) == 0 and np.argmax(colour[1]) == 1 and np.argmax(colour[2]) == 2
    sizes = dots.get_sizes().reshape(4, 3)
    assert np.allclose(sizes[3], 0) and np.allclose(np.diag(sizes[:3]), sizes.max())  # fraction > 0
    assert "scaled per program" in cax.get_ylabel()
    assert ax.get_xlabel() == "cell_type" and ax.get_ylabel() == "program"
    _save(fig, tmp_path, "programs_dot")


def test_gene_programs_heatmap(programs, tmp_path):
    _, given = plt.subplots()
    ax = gene_programs(
        programs, "cell_type", programs=["2", "0"], kind="heatmap", standard_scale=None, ax=given, show=False
    )
    assert ax is given
    values = ax.images[0].get_array()
    assert values.shape == (2, 3)
    scores = programs.obsm["scgpt_program_scores"]
    expected = scores.loc[programs.obs["cell_type"] == "NK", "2"].mean()
    assert values[0, 2] == pytest.approx(expected)  # row program 2, column NK
    assert len(ax.texts) == 6 and ax.texts[2].get_text() == f"{expected:.2f}"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "0"]
    _save(given.figure, tmp_path, "programs_heat")


def test_gene_programs_errors(programs):
    with pytest.raises(KeyError, match="no column 'nope'"):
        gene_programs(programs, "nope")
    with pytest.raises(KeyError, match=r"'x_scores'.*run scgpt.tl.gene_programs first"):
        gene_programs(programs, "cell_type", "x")
    with pytest.raises(KeyError, match=r"Unknown programs \['9'\]"):
        gene_programs(programs, "cell_type", programs=["0", "9"])
    with pytest.raises(ValueError, match="kind must be"):
        gene_programs(programs, "cell_type", kind="violin")


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections)


def test_gene_embedding(programs, tmp_path):
    fig = gene_embedding(programs, label_genes=["g2", "g39"][:1] + ["g35"], return_fig=True)
    ax = fig.axes[0]
    assert _points(ax) == 40 - 3
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2", "3"]
    grey = ax.collections[0]
    assert len(grey.get_offsets()) == 6 - 1 and to_hex(grey.get_facecolor()[0]) == NO_PROGRAM
    from scanpy.plotting.palettes import default_20

    assert to_hex(ax.collections[1].get_facecolor()[0]) == to_hex(default_20[0])
    assert [t.get_text() for t in ax.texts] == ["g2", "g35"]
    assert np.allclose(ax.texts[0].xy, programs.varm["scgpt_program_umap"][2])
    _save(fig, tmp_path, "embedding")


def test_gene_embedding_subset_colours_and_errors(programs, tmp_path):
    programs.uns["scgpt_program_colors"] = ["#000000", "#111111", "#222222", "#333333"]
    _, given = plt.subplots()
    ax = gene_embedding(programs, programs=["3", "1"], size=10, ax=given, show=False)
    assert ax is given and _points(ax) == 37
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1", "3"]
    assert to_rgba(ax.collections[1].get_facecolor()[0]) == to_rgba("#111111")
    assert ax.collections[1].get_sizes()[0] == 10
    _save(given.figure, tmp_path, "embedding_subset")
    with pytest.raises(KeyError, match=r"not in adata.var_names: \['nope'\]"):
        gene_embedding(programs, label_genes=["g3", "nope"])
    with pytest.raises(ValueError, match=r"without a position.*\['g0'\]"):
        gene_embedding(programs, label_genes="g0")
    del programs.varm["scgpt_program_umap"]
    with pytest.raises(KeyError, match="run scgpt.tl.gene_programs first"):
        gene_embedding(programs)
