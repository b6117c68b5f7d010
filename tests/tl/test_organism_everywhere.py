"""``organism=`` reaches every tool that reads genes: mouse-named cells give the human cells' results.

The cells are human PBMCs renamed to their mouse one-to-one orthologs (``mouse_round_trip`` in conftest), so
with ``organism="mouse"`` every tool must see exactly the tokens it sees on the human cells restricted to the
same genes.
"""

from __future__ import annotations

import numpy as np
import pytest

import scgpt
from scgpt.model import ScGPT

TRAIN = {"max_steps": 2, "batch_size": 16, "max_length": 64}


@pytest.fixture(scope="module")
def pair(mouse_round_trip):
    demo = ScGPT.from_pretrained("demo")
    cells = scgpt.datasets.pbmc68k_counts()
    common = cells.obs["bulk_labels"].value_counts().index[:4]  # no cell type with a single cell
    cells = cells[cells.obs["bulk_labels"].isin(common)][:120].copy()
    human, mouse, _, _ = mouse_round_trip(cells, demo.vocab)
    return demo, human, mouse


def test_annotate_knn_reads_mouse_genes(pair):
    """k-NN annotation of mouse-named cells against a mouse-named reference equals the human run.

    Catches ``annotate`` not passing ``organism`` to the embedding: the mouse genes would then miss the human
    vocabulary (a few percent overlap, e.g. ``Cd3e``) and the labels would change.
    """
    demo, human, mouse = pair
    h_ref, h_qry, m_ref, m_qry = human[:80].copy(), human[80:].copy(), mouse[:80].copy(), mouse[80:].copy()
    scgpt.tl.annotate(h_qry, demo, reference=h_ref, labels_key="bulk_labels", method="knn")
    scgpt.tl.annotate(m_qry, demo, reference=m_ref, labels_key="bulk_labels", method="knn", organism="mouse")
    assert (m_qry.obs["scgpt_celltype"].astype(str) == h_qry.obs["scgpt_celltype"].astype(str)).all()
    np.testing.assert_allclose(m_qry.obs["scgpt_celltype_confidence"], h_qry.obs["scgpt_celltype_confidence"])
    assert m_qry.uns["scgpt_celltype"]["params"]["organism"] == "mouse"


def test_integrate_zero_shot_and_predict_proba_read_mouse_genes(pair, tmp_path):
    """Zero-shot integration and a fine-tuned classifier's probabilities agree between the two namings (1e-6).

    Catches ``integrate`` and ``predict_proba`` dropping ``organism`` (embeddings of mouse-named cells from the
    few genes spelled alike in both species).
    """
    demo, human, mouse = pair
    for a in (human, mouse):
        a.obs["batch"] = np.where(np.arange(a.n_obs) % 2, "a", "b")
    h, m = human.copy(), mouse.copy()
    scgpt.tl.integrate(h, demo, batch_key="batch", mode="zero_shot")
    scgpt.tl.integrate(m, demo, batch_key="batch", mode="zero_shot", organism="mouse")
    np.testing.assert_allclose(m.obsm["X_scGPT_integrated"], h.obsm["X_scGPT_integrated"], atol=1e-6)
    clf = demo.finetune("annotation", human, labels_key="bulk_labels", checkpoint_dir=tmp_path, **TRAIN)
    p_h = clf.predict_proba(human, max_length=64)
    p_m = clf.predict_proba(mouse, max_length=64, organism="mouse")
    np.testing.assert_allclose(p_m.to_numpy(), p_h.to_numpy(), atol=1e-6)


def test_finetune_and_setup_anndata_read_mouse_genes(pair, tmp_path):
    """Fine-tuning on mouse-named cells trains the same weights as on the human cells; setup_anndata keeps it.

    Catches ``finetune``/``setup_anndata`` matching mouse genes as human symbols (other tokens, other weights).
    """
    import torch

    demo, human, mouse = pair
    a = demo.finetune("annotation", human, labels_key="bulk_labels", checkpoint_dir=tmp_path / "h", **TRAIN)
    b = demo.finetune(
        "annotation", mouse, labels_key="bulk_labels", organism="mouse", checkpoint_dir=tmp_path / "m", **TRAIN
    )
    for (k, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    m = mouse.copy()
    ScGPT.setup_anndata(m, organism="mouse")
    assert m.uns["_scgpt_setup"]["organism"] == "mouse"
    with pytest.raises(ValueError, match="klingon"):
        ScGPT.setup_anndata(mouse.copy(), organism="klingon")


def test_gene_networks_read_mouse_genes(pair):
    """The attention network of mouse-named cells is the human one with mouse gene names.

    Catches ``infer_grn`` passing ``organism`` to its gene selection but not to the attention run (or the reverse).
    """
    demo, human, mouse = pair
    genes_h, genes_m = list(human.var_names[:30]), list(mouse.var_names[:30])
    h, m = human[:20].copy(), mouse[:20].copy()
    scgpt.tl.infer_grn(h, demo, method="attention", genes=genes_h, tfs=genes_h, top_k=None)
    scgpt.tl.infer_grn(m, demo, method="attention", genes=genes_m, tfs=genes_m, top_k=None, organism="mouse")
    rename = dict(zip(genes_h, genes_m, strict=True))
    eh = h.uns["scgpt_grn"]["edges"].replace({"source": rename, "target": rename})
    em = m.uns["scgpt_grn"]["edges"]
    np.testing.assert_allclose(
        em.set_index(["source", "target"])["weight"].sort_index(),
        eh.set_index(["source", "target"])["weight"].sort_index(),
        atol=1e-6,
    )
