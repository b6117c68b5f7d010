"""Issue 26 (items 5, 8, 9, 10 and the minor list): saved indexes and resumable runs that remember what they are,
and every raw error of the new surfaces a one-line message. One test per battery case (tests/reliability/battery.py
runs them all as a user would); each docstring names the bug it catches."""

from __future__ import annotations

import json
import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import scgpt
from scgpt.cli import build_parser, main
from scgpt.model import ChunkStore, input_identity


# ---------------------------------------------------------------------------- item 5: reference indexes
@pytest.fixture
def saved_index(pbmc, base_model, tmp_path):
    """A reference index of 100 cells saved from obsm['X_scGPT'] of the base model (loaded from its weights file)."""
    ref = pbmc[:100].copy()
    ref.obs["bulk_labels"] = np.where(np.arange(100) % 2, "A", "B")  # no single-cell class (a warning)
    scgpt.tl.embed(ref, base_model, max_length=64)
    scgpt.tl.build_reference(ref, base_model, labels_key="bulk_labels", use_rep="X_scGPT", path=tmp_path / "idx")
    return tmp_path / "idx"


def test_a_query_embedded_by_other_weights_is_refused_through_use_rep(pbmc, base_model, saved_index, tmp_path):
    """Bug: a query embedded by another model passed a saved index via use_rep (only names were compared)."""
    other = scgpt.model.ScGPT.from_pretrained(base_model.weights_file_.parent, device="cpu")
    with torch.no_grad():
        for p in other.net.parameters():
            p.add_(0.05)
    other.save(tmp_path / "other")
    query = pbmc[300:340].copy()
    scgpt.tl.embed(query, str(tmp_path / "other"), max_length=64)
    meta = json.loads((saved_index / "reference.json").read_text())
    assert meta["fingerprint"]["weights_sha256"] == base_model.weights_sha256()  # the hub's provenance, stored
    with pytest.raises(ValueError, match=r"obsm\['X_scGPT'\] was embedded by another model \(weights SHA-256"):
        scgpt.tl.annotate(query, method="knn", reference=saved_index, use_rep="X_scGPT")
    assert "scgpt_celltype" not in query.obs  # nothing written before the error


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(classes=m["classes"][::-1]),  # swapped classes: annotated with the wrong names
        lambda m: m.update(fingerprint={}),  # dropped fingerprint: any model accepted
    ],
    ids=["swapped-classes", "dropped-fingerprint"],
)
def test_an_edited_reference_json_is_refused(saved_index, edit):
    """Bug: reference.json was not checksummed; swapped classes or a dropped fingerprint annotated (agreement
    0.90 / 0.33 with the intact index) and n_neighbors=0 ended in sklearn's InvalidParameterError."""
    meta_file = saved_index / "reference.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"reference\.json does not match its checksum .*rebuild the index"):
        scgpt.tl.ReferenceIndex.load(saved_index)


def test_a_saved_index_with_n_neighbors_0_names_it(saved_index):
    """Bug: a saved index with n_neighbors=0 ended in sklearn's InvalidParameterError at the first query."""
    meta_file = saved_index / "reference.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "n_neighbors": 0}))
    with pytest.raises(ValueError, match=r"reference\.json is damaged \(ValueError: n_neighbors=0 is not between 1"):
        scgpt.tl.ReferenceIndex.load(saved_index)


def test_an_index_without_its_checksum_is_refused(saved_index):
    """Bug: dropping the checksum itself would let an edited reference.json through."""
    meta_file = saved_index / "reference.json"
    meta = json.loads(meta_file.read_text())
    del meta["meta_sha256"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"reference\.json has no checksum"):
        scgpt.tl.ReferenceIndex.load(saved_index)


# ---------------------------------------------------------------------------- item 8: reference_dir("demo")
def test_reference_dir_of_the_bundled_name_makes_no_shadowing_folder(tmp_path, monkeypatch):
    """Bug: reference_dir('demo', ...) gave ./demo/reference_x; once saved, every 'demo' call in that folder
    loaded the half-empty ./demo folder instead of the bundled model."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"model_dir='demo' is the bundled model's name.*shadow"):
        scgpt.tl.reference_dir("demo", "pbmc")
    assert not (tmp_path / "demo").exists()
    assert scgpt.tl.reference_dir("scGPT_human", "x") == scgpt.hub.model_dir("scGPT_human") / "reference_x"
    (tmp_path / "mine").mkdir()
    assert scgpt.tl.reference_dir("mine", "x") == tmp_path.joinpath("mine", "reference_x").relative_to(tmp_path)


# ---------------------------------------------------------------------------- item 9: embed --backed resume
def test_input_identity_is_by_content_not_mtime(pbmc, tmp_path):
    """Bug: identity was size + mtime, so new content with the old mtime (cp -p, rsync -t) resumed from stale
    chunks (embeddings off by 0.04)."""
    path = tmp_path / "c.h5ad"
    pbmc.write_h5ad(path)
    before, st = input_identity(path), os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle: same size
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = input_identity(path)
    assert after["size"] == before["size"] and after["sha256"] != before["sha256"]
    assert "mtime_ns" not in after and after["hashed"] == "whole"


def test_sampled_identity_of_a_large_input_sees_its_edges(tmp_path, monkeypatch):
    """Bug: a sampled hash that skipped the HDF5 superblock (first bytes) would miss any rewrite by h5py."""
    from scgpt.model import _outofcore

    monkeypatch.setattr(_outofcore, "FULL_HASH_BYTES", 1024)  # 'large' from 1 KiB on, for the test
    path = tmp_path / "big.bin"
    path.write_bytes(np.random.default_rng(0).bytes(40 << 20))
    first = input_identity(path)
    with open(path, "r+b") as f:
        f.write(b"\0")
    assert first["hashed"] == "sampled" and input_identity(path)["sha256"] != first["sha256"]


def test_a_folder_without_chunks_does_not_block_the_corrected_command(tmp_path):
    """Bug: a failed run (e.g. a wrong --gene-key) left OUTPUT.parts with a manifest and 0 chunks, and the
    corrected command was refused as 'chunks of another run'."""
    ChunkStore(tmp_path / "o.parts").open({"gene_key": "nosuch", "n_obs": 10, "chunk_size": 5})
    assert ChunkStore(tmp_path / "o.parts").open({"gene_key": None, "n_obs": 10, "chunk_size": 5}) is False
    store = ChunkStore(tmp_path / "o.parts")
    store.open({"gene_key": None, "n_obs": 10, "chunk_size": 5})
    store.write(0, np.zeros((5, 4)), np.ones(5))
    with pytest.raises(ValueError, match="holds chunks of another run .*gene_key differ"):
        ChunkStore(tmp_path / "o.parts").open({"gene_key": "other", "n_obs": 10, "chunk_size": 5})


def test_a_damaged_manifest_or_chunk_is_named(tmp_path):
    """Bug: a damaged manifest gave a JSONDecodeError traceback, a truncated chunk a BadZipFile traceback."""
    store = ChunkStore(tmp_path / "o.parts")
    store.open({"n_obs": 10, "chunk_size": 5})
    store.write(0, np.zeros((5, 4)), np.ones(5))
    chunk = store.chunk_path(0)
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"chunk file .*chunk_000000\.npz is damaged .*remove it"):
        store.read(0)
    (tmp_path / "o.parts" / "manifest.json").write_text('{"format": 1, "inp')
    with pytest.raises(ValueError, match=r"o\.parts/manifest\.json is damaged \(JSONDecodeError"):
        ChunkStore(tmp_path / "o.parts").open({"n_obs": 10, "chunk_size": 5})


def test_embed_output_that_is_a_folder_is_refused_before_any_work(pbmc, tmp_path, capsys):
    """Bug: `scgpt embed --input X.zarr --output X.zarr` embedded every cell, then failed to write."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pbmc[:50].copy().write_zarr(tmp_path / "c.zarr")
    rc = main(["embed", "--model", "demo", "--input", str(tmp_path / "c.zarr"), "--output", str(tmp_path / "c.zarr")])
    assert rc == 2
    assert "is a folder (it is the --input); the output is an .h5ad file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- item 10: raw errors
def test_soma_filter_syntax_and_missing_experiment_are_clear(pbmc, tmp_path, write_soma):
    """Bug: a SOMA filter syntax error or an unknown column was a SOMAError traceback (CLI rc 1)."""
    uri = write_soma(pbmc[:50], tmp_path / "exp")
    for bad in ("bulk_labels ==== 'x'", "nosuch == 'x'"):
        with pytest.raises(ValueError, match=r"obs_value_filter=.* is not a valid SOMA value filter"):
            scgpt.data.open_soma(uri, obs_value_filter=bad)
    rc = main(["embed", "--model", "demo", "--input", uri, "--obs-filter", "bulk_labels ==== 'x'", "--output",
               str(tmp_path / "o.h5ad")])  # fmt: skip
    assert rc == 2


def test_soma_matrix_where_memory_is_needed(pbmc, base_model, tmp_path, write_soma):
    """Bug: embed(copy=True) and pp.preprocess on a SOMA matrix: "'SomaMatrix' object has no attribute 'copy'"."""
    lazy = scgpt.data.open_soma(write_soma(pbmc[:50], tmp_path / "exp"))
    with pytest.raises(ValueError, match=r"embed\(copy=True\) needs the AnnData in memory.*TileDB-SOMA"):
        scgpt.tl.embed(lazy, base_model, copy=True)
    with pytest.raises(ValueError, match=r"preprocess needs the AnnData in memory.*TileDB-SOMA"):
        scgpt.pp.preprocess(lazy)


def test_integrate_with_a_missing_layer(pbmc, base_model):
    """Bug: integrate(layer='missing') ended in a KeyError from inside the tokenizer."""
    pbmc.obs["batch"] = np.where(np.arange(pbmc.n_obs) % 2, "a", "b")
    with pytest.raises(KeyError, match=r"integrate: layer='missing' is not a layer of adata"):
        scgpt.tl.integrate(pbmc, base_model, batch_key="batch", layer="missing")
    assert "X_scGPT_integrated" not in pbmc.obsm


def test_finetune_cli_with_h5mu_input_and_its_help(tmp_path, capsys):
    """Bug: `scgpt finetune --recipe multiomic` with an .h5mu gave an h5py traceback, and its help line ended in
    'needs ' (a task without required options)."""
    (tmp_path / "m.h5mu").write_bytes(b"")
    rc = main(["finetune", "--model", "demo", "--input", str(tmp_path / "m.h5mu"), "--output", str(tmp_path / "o"),
               "--recipe", "multiomic"])  # fmt: skip
    assert rc == 2 and "is a MuData file (.h5mu)" in capsys.readouterr().err
    text = build_parser()[1]["finetune"].format_help()
    assert not [line for line in text.splitlines() if line.rstrip().endswith("needs")]


def test_predict_perturbation_of_none(base_model):
    """Bug: predict_perturbation(adata, model, None) ended in a TypeError from inside the label parser."""
    screen = scgpt.datasets.simulate_perturbations(n_genes=60, n_cells_per_condition=4, singles=2, doubles=0, seed=0)
    with pytest.raises(ValueError, match=r"perturbations=None names none"):
        scgpt.tl.predict_perturbation(screen, base_model, None)


@pytest.mark.parametrize(
    ("option", "message"), [({"layers": 99}, "layers=99"), ({"heads": [0, 99]}, r"heads=\[0, 99\]")]
)
def test_attention_layers_and_heads_out_of_range(pbmc, base_model, option, message):
    """Bug: attention layers=99 / heads=[0, 99] were IndexErrors without the valid range."""
    genes = list(pbmc.var_names[:8])
    with pytest.raises(ValueError, match=message + r" is out of range: the model has \d+"):
        scgpt.tl.infer_grn(pbmc[:40].copy(), base_model, method="attention", genes=genes, tfs=genes, **option)


# ---------------------------------------------------------------------------- minor list
def test_knn_options_that_label_everything_alike(pbmc):
    """Bug: n_neighbors above the reference size labelled every cell one class; min_confidence=1.5 labelled
    every cell unknown."""
    pbmc.obsm["X_rep"] = np.random.default_rng(0).normal(size=(pbmc.n_obs, 8)).astype(np.float32)
    pbmc.obs["bulk_labels"] = np.where(np.arange(pbmc.n_obs) % 2, "A", "B")
    ref, query = pbmc[:30].copy(), pbmc[100:120].copy()
    with pytest.raises(ValueError, match=r"n_neighbors=50 is not smaller than the 30 reference cells"):
        scgpt.tl.annotate(query, reference=ref, labels_key="bulk_labels", method="knn", use_rep="X_rep", n_neighbors=50)
    with pytest.raises(ValueError, match=r"min_confidence must lie in \[0, 1\].*got 1\.5"):
        scgpt.tl.annotate(query, reference=ref, labels_key="bulk_labels", method="knn", use_rep="X_rep",
                          min_confidence=1.5)  # fmt: skip
    assert "scgpt_celltype" not in query.obs


@pytest.fixture
def screen():
    return scgpt.datasets.simulate_perturbations(n_genes=120, n_cells_per_condition=12, singles=4, doubles=1, seed=0)


def test_training_on_the_perturbations_to_predict_is_called_leakage(screen):
    """Bug: train= could hold the evaluated perturbations without a word, in the baseline and in its evaluation."""
    labels = sorted(set(screen.obs["perturbation"]) - {"control"})
    with pytest.warns(UserWarning, match=r"perturbation_baseline: train= holds 2 of the perturbations to predict"):
        pred = scgpt.tl.perturbation_baseline(screen, labels[:2], method="train_mean", train=labels)
    with pytest.warns(UserWarning, match=r"prediction .* was trained on 2 of the perturbations it is scored on"):
        scgpt.tl.evaluate_perturbation(screen, pred)


def test_options_out_of_range_of_baselines_and_gene_selection(screen, pbmc, base_model):
    """Bug: n_components=0 and n_top_genes=-5 were accepted (a baseline of zero dimensions, a scanpy error later)."""
    labels = sorted(set(screen.obs["perturbation"]) - {"control"})
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        scgpt.tl.perturbation_baseline(screen, labels[:2], method="linear", n_components=0)
    pbmc.obs["batch"] = np.where(np.arange(pbmc.n_obs) % 2, "a", "b")
    with pytest.raises(ValueError, match=r"integrate: n_top_genes must be a positive integer or None.*-5"):
        scgpt.tl.integrate(pbmc, base_model, batch_key="batch", n_top_genes=-5)


def test_enrichment_background_without_the_programs_genes():
    """Bug: a background lacking the programs' genes (another naming) was accepted and tested against silently."""
    names = [f"g{i}" for i in range(20)]
    labels = ["0"] * 5 + ["1"] * 5 + [None] * 10
    var = pd.DataFrame({"scgpt_program": pd.Categorical(labels, categories=["0", "1"])}, index=names)
    programs = ad.AnnData(X=np.zeros((3, 20), dtype=np.float32), var=var)
    sets = {"S1": ["g0", "g1", "g2"], "S2": ["g5", "g6", "g0"]}
    with pytest.raises(ValueError, match="background= holds none of the 10 genes of the programs"):
        scgpt.tl.enrich_programs(programs, gene_sets=sets, background=["G0", "G1"])
    with pytest.warns(UserWarning, match="background= lacks 5 of the 10 genes of the programs"):
        scgpt.tl.enrich_programs(programs, gene_sets=sets, background=names[:5] + names[10:])


def test_rna_named_after_another_modality_is_refused(pbmc, base_model):
    """Bug: modalities=('prot', 'rna') trained the proteins as genes and the genes as new tokens."""
    import mudata as md

    prot = pbmc[:20, :10].copy()
    prot.var_names = [f"CD{i}-protein" for i in range(10)]
    m = md.MuData({"rna": pbmc[:20].copy(), "prot": prot})
    with pytest.raises(ValueError, match=r"modalities=\('prot', 'rna'\).*name the RNA modality first"):
        scgpt.tl.integrate(m, base_model, modalities=("prot", "rna"))


def test_zero_shot_integrate_needs_no_batch_key(pbmc, base_model):
    """Bug: zero-shot integrate demanded a batch_key it does not use (the model is not batch-conditioned)."""
    cells = pbmc[:30].copy()
    assert not base_model.config.batch_conditioned
    scgpt.tl.integrate(cells, base_model, mode="zero_shot", max_length=32)
    want = scgpt.tl.embed(cells, base_model, max_length=32, copy=True).obsm["X_scGPT"]
    np.testing.assert_allclose(cells.obsm["X_scGPT_integrated"], want, atol=1e-6)


# ---------------------------------------------------------------------------- minor: combination order
def test_one_combination_under_two_labels_is_refused():
    """A screen labelling the same double both 'A+B' and 'B+A' is refused, naming both labels.

    Catches the two orders silently becoming two perturbations (split cells, two rows in every evaluation).
    """
    screen = ad.AnnData(np.ones((6, 3), np.float32))
    screen.obs["perturbation"] = ["control", "control", "A+B", "A+B", "B+A", "B+A"]
    with pytest.raises(ValueError, match=r"'A\+B' and 'B\+A'"):
        scgpt.data.perturbation_labels(screen)
    screen.obs["perturbation"] = ["control", "control", "A+B", "A+B", "A", "B"]
    assert list(scgpt.data.perturbation_labels(screen).unique()) == ["control", "A+B", "A", "B"]
