"""scgpt.tl.annotate (fine-tuned classifier and k-NN reference mapping) and evaluate_annotation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scgpt
from scgpt.data._splits import stratified_split
from scgpt.model import ScGPT


@pytest.fixture(scope="module")
def split(pbmc_counts):
    """A stratified 70/30 split of the 700 labelled PBMCs."""
    codes = pd.Categorical(pbmc_counts.obs["bulk_labels"]).codes
    train, test = stratified_split(np.asarray(codes), 0.3, seed=0)
    return pbmc_counts[train].copy(), pbmc_counts[test].copy()


@pytest.fixture(scope="module")
def small_model(tiny_model):
    return tiny_model()


def _majority(labels) -> float:
    return float(pd.Series(labels).value_counts(normalize=True).iloc[0])


@pytest.fixture(scope="module")
def finetuned(split, small_model, tmp_path_factory):
    """The annotation task through the registry: fine-tune a classifier, then annotate the query with it."""
    ref, query = split
    query = query.copy()
    clf = small_model.finetune(
        "annotation",
        ref,
        labels_key="bulk_labels",
        max_epochs=15,
        lr=2e-3,
        batch_size=32,
        max_length=256,
        early_stopping=False,
        checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
    )
    assert scgpt.tl.annotate(query, clf) is None
    return query, clf


@pytest.mark.slow
def test_finetune_beats_the_majority_class_by_far(finetuned):
    query, clf = finetuned
    m = scgpt.tl.evaluate_annotation(query, labels_key="bulk_labels").loc["overall"]
    majority = _majority(query.obs["bulk_labels"])  # Dendritic cells, 34 %
    assert m["accuracy"] > majority + 0.25, (m["accuracy"], majority)
    assert m["f1"] > 0.3  # macro-F1
    assert query.obs["scgpt_celltype"].dtype == "category"
    conf = query.obs["scgpt_celltype_confidence"].to_numpy()
    assert conf.dtype == np.float32 and (conf > 0).all() and (conf <= 1).all()
    assert query.uns["scgpt_celltype"]["params"]["method"] == "finetune"
    assert query.uns["scgpt_celltype"]["classes"] == clf.registry_["label_categories"]
    assert clf.config.n_cls == 10 and clf.history_["train_cls"]
    probs = clf.predict_proba(query)
    assert list(probs.columns) == clf.registry_["label_categories"] and (probs.index == query.obs_names).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs.max(1), conf, rtol=1e-6)


@pytest.mark.slow
def test_saved_classifier_annotates_new_data_in_one_call(finetuned, tmp_path):
    query, clf = finetuned
    clf.save(tmp_path / "annotator")
    loaded = ScGPT.load(tmp_path / "annotator")
    again = query.copy()
    del again.obs["scgpt_celltype"]
    scgpt.tl.annotate(again, loaded)  # no reference needed: the model knows its classes
    assert (again.obs["scgpt_celltype"] == query.obs["scgpt_celltype"]).all()
    np.testing.assert_allclose(
        again.obs["scgpt_celltype_confidence"], query.obs["scgpt_celltype_confidence"], rtol=1e-5
    )
    official = clf.save_pretrained(tmp_path / "official")  # the classifier also exports to the official layout
    keys = {k: tuple(v.shape) for k, v in torch.load(official / "best_model.pt", weights_only=True).items()}
    assert keys["cls_decoder.out_layer.weight"] == (10, 32)


def test_knn_on_a_perfect_embedding_is_perfect(split):
    ref, query = split
    ref, query = ref.copy(), query.copy()
    cats = sorted(set(ref.obs["bulk_labels"]))
    for a in (ref, query):
        a.obsm["onehot"] = (a.obs["bulk_labels"].astype(str).to_numpy()[:, None] == np.array(cats)[None]).astype(
            np.float32
        )
    scgpt.tl.annotate(query, reference=ref, labels_key="bulk_labels", method="knn", use_rep="onehot")
    m = scgpt.tl.evaluate_annotation(query, labels_key="bulk_labels").loc["overall"]
    assert m["accuracy"] == 1.0 and m["f1"] == 1.0
    # vote share: all 10 neighbours agree unless a cell type has fewer than 10 reference cells
    n_ref = ref.obs["bulk_labels"].astype(str).value_counts()
    expected = np.minimum(n_ref[query.obs["bulk_labels"].astype(str)].to_numpy(), 10) / 10
    np.testing.assert_allclose(query.obs["scgpt_celltype_confidence"].to_numpy(), expected)


def test_knn_with_scgpt_embeddings(split, base_model):
    ref, query = split
    out = scgpt.tl.annotate(query, base_model, reference=ref, labels_key="bulk_labels", method="knn", copy=True)
    m = scgpt.tl.evaluate_annotation(out, labels_key="bulk_labels").loc["overall"]
    assert m["accuracy"] > _majority(query.obs["bulk_labels"])  # random weights, yet the input structure shows
    assert out.uns["scgpt_celltype"]["params"]["n_neighbors"] == 10
    assert "scgpt_celltype" not in query.obs  # copy=True leaves the input alone


def test_knn_is_the_default_with_a_reference_and_keeps_the_query_embedding(split, base_model):
    """Catches annotate(query, model, reference=...) starting a fine-tuning of minutes to hours by default, and the
    k-NN path throwing away the query embedding it computed (the user had to embed the query again for a UMAP)."""
    ref, query = split
    query = query[:60].copy()
    scgpt.tl.annotate(query, base_model, reference=ref, labels_key="bulk_labels", max_length=128, key_added="knn")
    assert query.uns["knn"]["params"]["method"] == "knn"
    kept = query.obsm["X_knn"]
    scgpt.tl.embed(query, base_model, max_length=128)
    assert kept.shape == (60, base_model.config.d_model) and kept.dtype == np.float32
    np.testing.assert_allclose(kept, query.obsm["X_scGPT"], atol=1e-5)  # the embedding tl.embed gives
    ref = ref.copy()
    ref.obsm["X_scGPT"] = np.zeros((ref.n_obs, kept.shape[1]), dtype=np.float32) + np.eye(1, kept.shape[1])
    scgpt.tl.annotate(query, reference=ref, labels_key="bulk_labels", use_rep="X_scGPT", key_added="rep")
    assert "X_rep" not in query.obsm  # with use_rep the embedding is already there


def test_min_confidence_marks_unknown_cells(split):
    ref, query = split
    ref, query = ref.copy(), query.copy()
    rng = np.random.default_rng(0)
    for a in (ref, query):
        a.obsm["noise"] = rng.normal(size=(a.n_obs, 8)).astype(np.float32)
    scgpt.tl.annotate(query, reference=ref, labels_key="bulk_labels", method="knn", use_rep="noise", min_confidence=0.6)
    pred = query.obs["scgpt_celltype"]
    low = query.obs["scgpt_celltype_confidence"] < 0.6
    assert low.any() and (pred[low] == "unknown").all() and (pred[~low] != "unknown").all()
    assert "unknown" in pred.cat.categories


def test_label_problems_are_clear(split, small_model):
    ref, query = split
    nan_ref = ref.copy()
    nan_ref.obs["bulk_labels"] = nan_ref.obs["bulk_labels"].astype(object)
    nan_ref.obs.iloc[:5, nan_ref.obs.columns.get_loc("bulk_labels")] = np.nan
    nan_ref.obsm["e"] = np.eye(10)[pd.Categorical(ref.obs["bulk_labels"]).codes]
    q = query.copy()
    q.obsm["e"] = np.eye(10)[pd.Categorical(query.obs["bulk_labels"]).codes]
    with pytest.warns(UserWarning, match="5 cells have no label in 'bulk_labels'"):
        scgpt.tl.annotate(q, reference=nan_ref, labels_key="bulk_labels", method="knn", use_rep="e")
    single = ref[ref.obs["bulk_labels"] == "Dendritic"].copy()
    with pytest.raises(ValueError, match="single cell type"):
        scgpt.tl.annotate(q, small_model, reference=single, labels_key="bulk_labels")
    with pytest.raises(KeyError, match="labels_key='nope'"):
        scgpt.tl.annotate(q, small_model, reference=ref, labels_key="nope")
    with pytest.raises(ValueError, match="not a fine-tuned cell-type classifier"):
        scgpt.tl.annotate(q, small_model)
    with pytest.raises(ValueError, match="method must be"):
        scgpt.tl.annotate(q, small_model, method="svm")
    lonely = ref.copy()
    lonely.obs["bulk_labels"] = lonely.obs["bulk_labels"].astype(str)
    lonely.obs.iloc[0, lonely.obs.columns.get_loc("bulk_labels")] = "Singleton"
    lonely.obsm["e"] = np.eye(11)[pd.Categorical(lonely.obs["bulk_labels"]).codes]
    q.obsm["e"] = np.eye(11)[
        pd.Categorical(q.obs["bulk_labels"], categories=pd.Categorical(lonely.obs["bulk_labels"]).categories).codes
    ]
    with pytest.warns(UserWarning, match="1 cell types have a single cell"):
        scgpt.tl.annotate(q, reference=lonely, labels_key="bulk_labels", method="knn", use_rep="e", key_added="lonely")


def test_evaluation_with_unseen_and_unknown_labels():
    """Hand-computed scores: catches an unseen type (NK) or an "unknown" prediction leaving the macro means."""
    a = ad.AnnData(np.zeros((6, 1), dtype=np.float32))
    a.obs["true"] = ["T", "T", "B", "B", "NK", "NK"]  # NK never predicted (unseen by the reference)
    a.obs["pred"] = ["T", "B", "B", "B", "unknown", "T"]
    df = scgpt.tl.evaluate_annotation(a, labels_key="true", key="pred", key_added="pred_evaluation")
    m = df.loc["overall"]
    assert m["accuracy"] == pytest.approx(3 / 6)
    pc = df.drop(index="overall")
    assert pc.loc["B", "precision"] == pytest.approx(2 / 3) and pc.loc["B", "recall"] == 1.0
    assert pc.loc["NK", "f1"] == 0.0 and pc.loc["T", "recall"] == 0.5
    assert m["f1"] == pytest.approx(np.mean([0.8, 0.0, 0.5]))  # macro-F1
    confusion = a.uns["pred_evaluation"]["confusion"]
    assert list(confusion.columns) == ["B", "NK", "T", "unknown"]
    assert int(confusion.loc["NK", "unknown"]) == 1
    assert a.uns["pred_evaluation"]["results"].loc["overall", "n_cells"] == 6
    # the other columns: per type and overall, as documented
    assert list(df.index) == ["B", "NK", "T", "overall"] and df.index.name == "cell type"
    assert list(pc["n_cells"]) == [2, 2, 2] and (df["n_missing_predictions"] == 0).all()
    np.testing.assert_array_equal(pc["accuracy"], pc["recall"])  # the share of the type's cells predicted right
    assert m["precision"] == pytest.approx(np.mean([2 / 3, 0.0, 1 / 2])) and m["recall"] == pytest.approx(0.5)
    pd.testing.assert_frame_equal(pd.DataFrame(**df.attrs["confusion"]), confusion, check_names=False)
