"""Outputs never overwrite inputs; overwriting an earlier result is said out loud."""

from __future__ import annotations

import numpy as np
import pytest

import scgpt


def test_annotate_refuses_to_write_over_the_label_column(pbmc):
    ref, query = pbmc[:500].copy(), pbmc[500:].copy()
    for a in (ref, query):
        a.obsm["e"] = np.eye(10, dtype=np.float32)[a.obs["bulk_labels"].cat.codes]
    with pytest.raises(ValueError, match="key_added='bulk_labels' names the obs entry it reads"):
        scgpt.tl.annotate(
            query, reference=ref, labels_key="bulk_labels", method="knn", use_rep="e", key_added="bulk_labels"
        )
    assert (query.obs["bulk_labels"] == pbmc[500:].obs["bulk_labels"]).all()  # the truth is intact


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: scgpt.pp.bin_values(a, layer="counts", key_added="counts"), "key_added='counts' names the layers"),
        (
            lambda a: scgpt.pp.preprocess(a, layer="counts", result_normed_key="counts"),
            "result_normed_key='counts' names the layers entry it reads",
        ),
        (
            lambda a: scgpt.pp.align_vocab(a, gene_key="symbol", key_added="symbol"),
            "key_added='symbol' names the var entry it reads",
        ),
    ],
)
def test_preprocessing_refuses_to_write_over_what_it_reads(pbmc, call, message):
    pbmc.layers["counts"] = pbmc.X.copy()
    pbmc.var["symbol"] = pbmc.var_names
    with pytest.raises(ValueError, match=message):
        call(pbmc)
    assert (pbmc.layers["counts"] != pbmc.X).nnz == 0 and (pbmc.var["symbol"] == pbmc.var_names).all()


def test_overwriting_an_earlier_result_warns(pbmc, base_model):
    scgpt.tl.embed(pbmc, base_model, max_length=64)
    with pytest.warns(UserWarning, match=r"embed: adata.obsm\['X_scGPT'\] exists and is overwritten") as record:
        scgpt.tl.embed(pbmc, base_model, max_length=64)
    assert record[0].filename == __file__
    scgpt.tl.evaluate_annotation(pbmc, labels_key="bulk_labels", key="louvain", key_added="louvain_evaluation")
    with pytest.warns(UserWarning, match=r"adata.uns\['louvain_evaluation'\] exists"):
        scgpt.tl.evaluate_annotation(pbmc, labels_key="bulk_labels", key="louvain", key_added="louvain_evaluation")
