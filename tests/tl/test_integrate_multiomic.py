"""scgpt.tl.integrate on MuData: joint RNA + protein / RNA + ATAC embeddings with modality tokens."""

from __future__ import annotations

import json
import warnings

import mudata
import numpy as np
import pytest
import torch

import scgpt
from scgpt.model import ScGPT, feature_token, modality_names, with_modalities
from scgpt.model._multiomic import token_modality

FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures"
TRAIN = {"max_steps": 3, "batch_size": 16}
# four proteins share a name with their gene (CD4, ...), as in real CITE-seq data: mudata warns when copying
# and one gene of the 14,520 matches a vocabulary token by an alias another gene has by name
pytestmark = [
    pytest.mark.filterwarnings("ignore:var_names are not unique:UserWarning"),
    pytest.mark.filterwarnings("ignore:1 genes map to a vocabulary token already taken:UserWarning"),
]


@pytest.fixture(scope="module")
def cite():
    """80 paired CITE-seq cells (40 per run) of the bundled two-run data set."""
    m = scgpt.datasets.pbmc_cite_seq()
    keep = np.concatenate([np.flatnonzero(m.obs["run"] == r)[:40] for r in ("pbmc5k", "pbmc10k")])
    return m[keep].copy()


@pytest.fixture(scope="module")
def joint(cite, tmp_path_factory):
    m = cite.copy()
    before = {k: a.copy() for k, a in m.mod.items()}
    model = ScGPT.from_pretrained("demo")
    scgpt.tl.integrate(
        m,
        model,
        modalities=("rna", "prot"),
        batch_key="run",
        n_top_genes=60,
        seed=0,
        checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
        **TRAIN,
    )  # fmt: skip (the object is fine-tuned in place)
    return m, before, model


def _same(a, b) -> bool:
    xa = a.X.toarray() if hasattr(a.X, "toarray") else a.X
    xb = b.X.toarray() if hasattr(b.X, "toarray") else b.X
    return (
        np.array_equal(xa, xb)
        and a.obs.equals(b.obs)
        and a.var.equals(b.var)
        and list(a.obsm) == list(b.obsm)
        and list(a.layers) == list(b.layers)
        and list(a.uns) == list(b.uns)
    )


def test_mudata_in_mudata_out(joint):
    m, before, model = joint
    emb = m.obsm["X_scGPT_integrated"]
    assert emb.shape == (80, model.config.d_model) and emb.dtype == np.float32 and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    uns = m.uns["X_scGPT_integrated"]
    assert uns["params"]["modalities"] == ["rna", "prot"] and uns["params"]["batch_key"] == "run"
    assert uns["n_features"] == {"rna": 60, "prot": 14} and uns["batches"] == ["pbmc5k", "pbmc10k"]
    for k in ("rna", "prot"):  # the modalities are left untouched
        assert _same(m.mod[k], before[k]), k
        assert "X_scGPT_integrated" not in m.mod[k].obsm


def test_the_model_reads_proteins_as_tokens_of_their_own_modality(joint):
    _, _, model = joint
    assert modality_names(model) == ["rna", "prot"] and model.registry_["task"] == "multiomic"
    assert "CD4" in model.vocab and "prot:CD4" in model.vocab  # the gene and the protein stay distinct
    mods = token_modality(model)
    assert mods[model.vocab["prot:CD4"]] == model.mod_vocab["prot"]
    assert mods[model.vocab["CD4"]] == model.mod_vocab["rna"]
    assert mods[model.vocab.cls_id] == model.mod_vocab["<cls>"] and mods[model.vocab.pad_id] == model.mod_vocab["<pad>"]
    demo = ScGPT.from_pretrained("demo")
    assert len(model.vocab) == len(demo.vocab) + 14  # 14 proteins appended after the pretrained tokens
    assert model.net.encoder.embedding.weight.shape[0] == len(demo.vocab) + 14
    tokens = model.registry_["tokens"]
    assert len(tokens) == 74 and sum(t.startswith("prot:") for t in tokens) == 14


def test_fine_tuning_is_deterministic_and_the_tuned_model_is_reused(cite, joint, tmp_path, monkeypatch):
    m, _, model = joint
    again = ScGPT.from_pretrained("demo")
    scgpt.tl.integrate(
        cite.copy(), again, modalities=("rna", "prot"), batch_key="run", n_top_genes=60,
        checkpoint_dir=tmp_path, **TRAIN,
    )  # fmt: skip
    for (k, a), (_, b) in zip(model.net.state_dict().items(), again.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), k  # same seed, same weights
    calls = []
    monkeypatch.setattr(ScGPT, "finetune", lambda *a, **k: calls.append(1))
    new = cite[::2].copy()
    scgpt.tl.integrate(new, model, modalities=("rna", "prot"), batch_key="run")  # embeds, no training
    assert calls == []
    np.testing.assert_allclose(new.obsm["X_scGPT_integrated"], m.obsm["X_scGPT_integrated"][::2], atol=1e-6)
    from_rna = cite[::2].copy()
    from_rna.obs = from_rna.obs.drop(columns="run")  # the batch read from a modality's obs, never pulled
    scgpt.tl.integrate(from_rna, model, modalities=("rna", "prot"), batch_key="rna:run")
    np.testing.assert_array_equal(from_rna.obsm["X_scGPT_integrated"], new.obsm["X_scGPT_integrated"])
    assert "run" not in from_rna.obs
    with pytest.raises(ValueError, match="fine-tuned with batch_key='run'"):
        scgpt.tl.integrate(new, model, modalities=("rna", "prot"))


def test_saved_like_the_official_multiomic_model(cite, golden_dir, tmp_path):
    """The official layout: key names and shapes of the official multi-omic model, and its mod_vocab."""
    base = ScGPT.from_pretrained(golden_dir / "official_base")  # its test vocabulary has 759 tokens
    with pytest.warns(UserWarning, match="only 735 of 14520 genes"):
        scgpt.tl.integrate(
            cite.copy(), base, modalities=("rna", "prot"), batch_key="run", n_top_genes=60,
            checkpoint_dir=tmp_path / "ckpt", **TRAIN,
        )  # fmt: skip
    model = base
    out = model.save_pretrained(tmp_path / "official")
    ours = {k: tuple(v.shape) for k, v in torch.load(out / "best_model.pt", map_location="cpu").items()}
    ref = {
        k: tuple(v.shape)
        for k, v in torch.load(golden_dir / "official_multiomic" / "best_model.pt", map_location="cpu").items()
    }
    assert set(ours) == set(ref)
    for key, shape in ref.items():
        if key != "encoder.embedding.weight":  # the vocabularies differ (768 genes + 7 proteins there)
            assert ours[key] == shape, key
    args = json.loads((out / "args.json").read_text())
    assert args["mod_vocab"] == {"rna": 0, "prot": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}
    back = ScGPT.from_pretrained(out)
    assert modality_names(back) == ["rna", "prot"] and back.vocab["prot:CD19"] == model.vocab["prot:CD19"]


def test_rna_and_atac(tmp_path):
    with warnings.catch_warnings():  # written by an old muon: reading it warns about the format
        warnings.simplefilter("ignore")
        m = mudata.read_h5mu(FIXTURES / "muon_rna_atac_1000cells.h5mu")
    m = m[:120].copy()
    model = ScGPT.from_pretrained("demo")
    scgpt.tl.integrate(m, model, modalities=("rna", "atac"), max_length=80, checkpoint_dir=tmp_path, **TRAIN)
    uns = m.uns["X_scGPT_integrated"]
    n_rna = uns["n_features"]["rna"]
    assert uns["params"]["binary"] == ["atac"] and model.registry_["binary_modalities"] == ["atac"]
    assert uns["n_features"]["atac"] == 80 - 1 - n_rna  # the most variable peaks that fit the token budget
    assert m.obsm["X_scGPT_integrated"].shape == (120, model.config.d_model)
    assert not model.config.batch_conditioned and not model.config.dab  # no batch_key: no batch heads


def test_per_modality_binning_and_modality_ids():
    """Values are binned within each modality of a cell; binarised modalities take the top bin."""
    import scipy.sparse as sp

    from scgpt.data import Collator
    from scgpt.data._random import gene_keys

    tokens = ["g0", "g1", "g2", "g3", "p0", "p1", "a0", "<pad>", "<cls>", "<eoc>"]
    mods = np.array([0, 0, 0, 0, 1, 1, 2, 3, 4, 5])  # rna, prot, atac, <pad>, <cls>, <eoc>
    X = sp.csr_matrix(np.array([[1.0, 2, 3, 4, 1000, 2000, 7], [4.0, 3, 2, 1, 50, 10, 0]]))
    c = Collator(
        token_ids=np.arange(7), gene_key=gene_keys(tokens)[:7], cls_id=8, pad_id=7, n_bins=5, masking="none",
        token_modality=mods, binary_modalities=(2,),
    )  # fmt: skip
    batch = c.collate(c.tokenize(X, seed=0))

    def alone(cols):  # the same columns binned on their own
        k = Collator(token_ids=cols, gene_key=gene_keys(tokens)[cols], cls_id=8, pad_id=7, n_bins=5)
        return k.collate(k.tokenize(X[:, cols], seed=0)).values[:, 1:]

    np.testing.assert_array_equal(batch.values[:, 1:5], alone(np.arange(4)))  # the proteins do not shift RNA bins
    np.testing.assert_array_equal(batch.values[:, 5:7], alone(np.arange(4, 6)))  # nor the genes protein bins
    assert batch.values[0, 7] == 4.0  # atac: the top bin
    assert batch.mod_types[0].tolist() == [4, 0, 0, 0, 0, 1, 1, 2]
    assert batch.mod_types[1].tolist() == [4, 0, 0, 0, 0, 1, 1, 3]  # padding gets <pad>'s modality id


def test_clear_errors(cite, tmp_path):
    m = cite.copy()
    with pytest.raises(KeyError, match=r"Modalities \['adt'\] are not in the MuData"):
        scgpt.tl.integrate(m, "demo", modalities=("rna", "adt"))
    with pytest.raises(ValueError, match="name the RNA modality first, then at least one other"):
        scgpt.tl.integrate(m, "demo", modalities=("rna",))
    with pytest.raises(KeyError, match="it is in the obs of .*pass batch_key='rna:protein_label'"):
        m.obs = m.obs.drop(columns="protein_label")
        scgpt.tl.integrate(m, "demo", modalities=("rna", "prot"), batch_key="protein_label")
    m.obs["lonely"] = np.where(np.arange(80) == 0, "alone", "many")
    with pytest.raises(ValueError, match=r"batches with a single cell \(\['alone'\]\)"):
        scgpt.tl.integrate(m, "demo", modalities=("rna", "prot"), batch_key="lonely")
    with pytest.raises(ValueError, match="needs a model fine-tuned on the modalities"):
        scgpt.tl.integrate(m, "demo", modalities=("rna", "prot"), mode="zero_shot")
    with pytest.raises(TypeError, match="modalities=.* needs a MuData"):
        scgpt.tl.integrate(m.mod["rna"], "demo", modalities=("rna", "prot"), batch_key="run")
    unpaired = mudata.MuData({"rna": m.mod["rna"].copy(), "prot": m.mod["prot"][:70].copy()})
    with pytest.raises(ValueError, match=r"Cells are not paired: 10 .*muon.pp.intersect_obs"):
        scgpt.tl.integrate(unpaired, "demo", modalities=("rna", "prot"))
    strange = m.copy()
    strange.mod["rna"].var_names = [f"not_a_gene_{i}" for i in range(strange.mod["rna"].n_vars)]
    with pytest.raises(ValueError, match="none of the"):
        scgpt.tl.integrate(strange, "demo", modalities=("rna", "prot"))


def test_a_tuned_model_needs_features_it_knows(joint):
    m, _, model = joint
    other = m.copy()
    other.mod["prot"].var_names = [f"X{i}" for i in range(other.mod["prot"].n_vars)]
    with pytest.raises(ValueError, match="Modality 'prot' has no feature in common with the model"):
        scgpt.tl.integrate(other, model, modalities=("rna", "prot"), batch_key="run")
    with pytest.raises(ValueError, match="name the RNA modality first"):  # refused before the model's modalities
        scgpt.tl.integrate(other, model, modalities=("prot", "rna"), batch_key="run")


def test_with_modalities_keeps_the_pretrained_weights():
    demo = ScGPT.from_pretrained("demo")
    multi = with_modalities(demo, {"prot": ["CD4", "CD8a"]})
    assert multi.vocab.itos[-2:] == [feature_token("prot", "CD4"), "prot:CD8a"]
    old = demo.net.state_dict()
    new = multi.net.state_dict()
    assert torch.equal(new["encoder.embedding.weight"][: len(demo.vocab)], old["encoder.embedding.weight"])
    assert torch.equal(
        new["transformer_encoder.layers.0.linear1.weight"], old["transformer_encoder.layers.0.linear1.weight"]
    )
    assert with_modalities(multi, {"prot": ["CD4"]}) is multi  # nothing new: the same model
    with pytest.raises(ValueError, match="Modality names must be distinct"):
        with_modalities(demo, {"rna": ["x"]})
    with pytest.raises(ValueError, match="cannot take"):
        with_modalities(multi, {"atac": ["chr1:1-2"]})
