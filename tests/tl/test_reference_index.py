"""scgpt.tl.build_reference / ReferenceIndex: k-NN label transfer on an index built once, saved and reused."""

from __future__ import annotations

import json
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import scgpt
from scgpt.tl import EXACT_MAX_CELLS, ReferenceIndex, build_reference, reference_dir

try:
    import faiss  # noqa: F401

    HAS_FAISS = True
except ImportError:
    HAS_FAISS = False


def _clustered(n: int, *, d: int = 32, n_types: int = 25, seed: int = 0, centers_seed: int = 0) -> ad.AnnData:
    """Cells around ``n_types`` centres that overlap at their edges (exact 10-NN: 99.3 % right), labelled by centre, in ``obsm["X_emb"]``."""
    centers = np.random.default_rng(centers_seed).normal(size=(n_types, d))
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n)
    emb = (centers[types] + rng.normal(scale=1.0, size=(n, d))).astype(np.float32)
    a = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    a.obs["cell_type"] = pd.Categorical([f"type{t:02d}" for t in types])
    a.obsm["X_emb"] = emb
    return a


@pytest.fixture(scope="module")
def atlas():
    """20,000 reference cells and 2,000 query cells of the same 25 cell types."""
    return _clustered(20_000, seed=0), _clustered(2_000, seed=1)


@pytest.fixture(scope="module")
def nnd(atlas):
    """A pynndescent index of the atlas (the numba compilation makes this the slow part of the file)."""
    ref, _ = atlas
    return build_reference(ref, labels_key="cell_type", use_rep="X_emb", backend="pynndescent", seed=0)


def _annotated(query, reference, **kw):
    out = scgpt.tl.annotate(query, reference=reference, method="knn", use_rep="X_emb", copy=True, **kw)
    return out.obs["scgpt_celltype"].astype(str).to_numpy(), out.obs["scgpt_celltype_confidence"].to_numpy(), out


def test_auto_is_exact_up_to_the_threshold(atlas):
    ref, query = atlas
    small = ref[:3000].copy()
    assert build_reference(small, labels_key="cell_type", use_rep="X_emb").backend == "sklearn"
    assert EXACT_MAX_CELLS == 200_000
    approx = build_reference(small, labels_key="cell_type", use_rep="X_emb", exact_threshold=2999)
    assert approx.backend == "pynndescent"


def test_exact_index_saved_next_to_the_model_equals_the_in_memory_reference(atlas, tmp_path):
    ref, query = atlas
    ref = ref[:5000].copy()
    folder = reference_dir(tmp_path / "model", "atlas")
    index = build_reference(ref, labels_key="cell_type", use_rep="X_emb", path=folder)
    assert folder.name == "reference_atlas" and index.path == folder and index.backend == "sklearn"
    loaded = ReferenceIndex.load(folder)
    assert loaded.classes == index.classes and np.array_equal(loaded.codes, index.codes)
    idx0, sim0 = index.kneighbors(query.obsm["X_emb"])
    idx1, sim1 = loaded.kneighbors(query.obsm["X_emb"])
    assert np.array_equal(idx0, idx1) and np.array_equal(sim0, sim1)
    labels_mem, conf_mem, _ = _annotated(query, ref, labels_key="cell_type")
    labels_saved, conf_saved, out = _annotated(query, folder)
    assert np.array_equal(labels_mem, labels_saved) and np.array_equal(conf_mem, conf_saved)
    params = out.uns["scgpt_celltype"]["params"]
    assert params["knn_backend"] == "sklearn" and params["reference_index"] == str(folder)
    assert params["labels_key"] == "cell_type" and params["n_neighbors"] == 10 and params["reference_cells"] == 5000
    # the confidence is the vote share among the 10 neighbours
    nn_labels = np.asarray(index.classes)[index.codes[idx0]]
    np.testing.assert_allclose(conf_mem, (nn_labels == labels_mem[:, None]).mean(1), rtol=1e-6)


def test_pynndescent_round_trip_and_agreement_with_exact_knn(atlas, nnd, tmp_path):
    ref, query = atlas
    assert nnd.backend == "pynndescent" and nnd.n_cells == 20_000 and nnd.dim == 32
    nnd.save(tmp_path / "ref")
    loaded = ReferenceIndex.load(tmp_path / "ref")
    q = query.obsm["X_emb"]
    idx0, sim0 = nnd.kneighbors(q)
    idx1, sim1 = loaded.kneighbors(q)
    assert np.array_equal(idx0, idx1) and np.array_equal(sim0, sim1)
    labels0, conf0 = nnd.transfer(q)
    labels1, conf1 = loaded.transfer(q)
    assert np.array_equal(labels0, labels1) and np.array_equal(conf0, conf1)
    # same definition of confidence as the exact path: vote share of the k neighbours found
    nn_labels = np.asarray(nnd.classes, dtype=object)[nnd.codes[idx0]]
    np.testing.assert_allclose(conf0, (nn_labels == labels0[:, None]).mean(1), rtol=1e-6)
    exact_labels, exact_conf, _ = _annotated(query, ref, labels_key="cell_type", knn_backend="sklearn")
    agreement = (exact_labels == labels0).mean()
    assert agreement >= 0.99, agreement
    assert abs(exact_conf.mean() - conf0.mean()) < 0.02
    assert (exact_labels == query.obs["cell_type"].astype(str).to_numpy()).mean() < 0.999  # not a trivial set
    saved_labels, saved_conf, _ = _annotated(query, tmp_path / "ref")
    assert np.array_equal(saved_labels, labels0) and np.allclose(saved_conf, conf0)


def test_pynndescent_is_seeded(atlas, nnd):
    ref, query = atlas
    again = build_reference(ref[:20_000], labels_key="cell_type", use_rep="X_emb", backend="pynndescent", seed=0)
    q = query.obsm["X_emb"][:500]
    assert np.array_equal(again.kneighbors(q)[0], nnd.kneighbors(q)[0])


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (the `faiss` extra)")
def test_faiss_round_trip_and_agreement(atlas, tmp_path):
    ref, query = atlas
    index = build_reference(ref, labels_key="cell_type", use_rep="X_emb", backend="faiss", path=tmp_path / "f")
    assert index.params["index_params"]["factory"].startswith("IVF")
    loaded = ReferenceIndex.load(tmp_path / "f")
    q = query.obsm["X_emb"]
    assert np.array_equal(index.kneighbors(q)[0], loaded.kneighbors(q)[0])
    exact_labels, _, _ = _annotated(query, ref, labels_key="cell_type", knn_backend="sklearn")
    assert (loaded.transfer(q)[0] == exact_labels).mean() >= 0.99


def test_faiss_requested_without_faiss(atlas, tmp_path, monkeypatch):
    from scgpt.tl._reference import _meta_sha256

    ref, _ = atlas
    small = ref[:500].copy()
    build_reference(small, labels_key="cell_type", use_rep="X_emb", path=tmp_path / "exact")
    meta = json.loads((tmp_path / "exact" / "reference.json").read_text())
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs faiss.*pip install"):
        build_reference(small, labels_key="cell_type", use_rep="X_emb", backend="faiss")
    meta["backend"] = "faiss"
    meta["meta_sha256"] = _meta_sha256(meta)  # a valid faiss index's metadata (an edit alone is refused)
    (tmp_path / "exact" / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(ImportError, match="saved with faiss"):
        ReferenceIndex.load(tmp_path / "exact")


def test_mismatched_queries_are_clear_errors(atlas, tmp_path, tiny_model, pbmc_counts):
    ref, query = atlas
    small = ref[:2000].copy()
    index = build_reference(small, labels_key="cell_type", use_rep="X_emb")
    narrow = query.copy()
    narrow.obsm["X_emb"] = narrow.obsm["X_emb"][:, :16]
    with pytest.raises(ValueError, match=r"16 dimensions \(obsm\['X_emb'\]\), the reference index 32"):
        scgpt.tl.annotate(narrow, reference=index, method="knn", use_rep="X_emb")
    with pytest.raises(ValueError, match="holds the labels of 'cell_type'"):
        scgpt.tl.annotate(query, reference=index, method="knn", use_rep="X_emb", labels_key="other")
    with pytest.raises(ValueError, match="built with 'sklearn'"):
        scgpt.tl.annotate(query, reference=index, method="knn", use_rep="X_emb", knn_backend="pynndescent")
    with pytest.raises(KeyError, match="use_rep='X_pca' is not in reference.obsm"):
        build_reference(small, labels_key="cell_type", use_rep="X_pca")
    with pytest.raises(KeyError, match="labels_key='nope'"):
        build_reference(small, labels_key="nope", use_rep="X_emb")
    unlabelled = small.copy()
    unlabelled.obs["cell_type"] = np.nan
    with pytest.raises(ValueError, match="holds no labels"):
        build_reference(unlabelled, labels_key="cell_type", use_rep="X_emb")
    with pytest.raises(ValueError, match="metric must be"):
        build_reference(small, labels_key="cell_type", use_rep="X_emb", metric="hamming")
    # a query embedded by another model than the reference's
    common = pbmc_counts.obs["bulk_labels"].value_counts().index[:3]
    cells = pbmc_counts[pbmc_counts.obs["bulk_labels"].isin(common)][:120].copy()
    model, other = tiny_model(d_model=8, n_heads=2, d_hid=8, n_layers=1), tiny_model(seed=1, d_model=8, n_heads=2)
    by_model = build_reference(cells, model, labels_key="bulk_labels", use_rep=None, max_length=64)
    assert by_model.fingerprint["model"] and by_model.fingerprint["embedding"] == {"max_length": 64}
    with pytest.raises(ValueError, match="different model"):
        scgpt.tl.annotate(cells.copy(), other, reference=by_model, method="knn")
    with pytest.raises(TypeError, match="is for method='knn'"):
        scgpt.tl.annotate(cells.copy(), model, reference=by_model, method="finetune")
    same = scgpt.tl.annotate(cells.copy(), model, reference=by_model, method="knn", copy=True)
    direct = scgpt.tl.annotate(
        cells.copy(), model, reference=cells, labels_key="bulk_labels", method="knn", max_length=64, copy=True
    )
    assert (same.obs["scgpt_celltype"] == direct.obs["scgpt_celltype"]).all()


def test_damaged_and_foreign_folders(atlas, tmp_path):
    ref, _ = atlas
    small = ref[:1000].copy()
    folder = build_reference(small, labels_key="cell_type", use_rep="X_emb", path=tmp_path / "m" / "reference_x").path
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        build_reference(small, labels_key="cell_type", use_rep="X_emb", path=folder)
    (tmp_path / "m" / "model.pt").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match="not a reference index"):
        ReferenceIndex.load(folder).save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"not a reference index folder.*\['reference_x'\]"):
        ReferenceIndex.load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="No reference index"):
        ReferenceIndex.load(tmp_path / "nowhere")
    emb = folder / "embeddings.npy"
    data = bytearray(emb.read_bytes())
    data[-1] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="embeddings.npy does not match its checksum"):
        ReferenceIndex.load(folder)
    emb.unlink()
    with pytest.raises(ValueError, match="embeddings.npy is missing"):
        ReferenceIndex.load(folder)
    (folder / "reference.json").write_text("{not json")
    with pytest.raises(ValueError, match="damaged"):
        ReferenceIndex.load(folder)
    (folder / "reference.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a reference index written by scgpt"):
        ReferenceIndex.load(folder)


def test_a_failed_save_leaves_the_previous_index(atlas, tmp_path, monkeypatch):
    ref, query = atlas
    old = build_reference(ref[:800].copy(), labels_key="cell_type", use_rep="X_emb", path=tmp_path / "r")
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    new = build_reference(ref[:900].copy(), labels_key="cell_type", use_rep="X_emb")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("scgpt.tl._reference._sha256", full_disk)  # fails after the arrays are written
    with pytest.raises(OSError, match="No space"):
        new.save(tmp_path / "r", overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no partial folder left behind
    assert ReferenceIndex.load(tmp_path / "r").n_cells == old.n_cells == 800
    new.save(tmp_path / "r", overwrite=True)
    assert ReferenceIndex.load(tmp_path / "r").n_cells == 900
