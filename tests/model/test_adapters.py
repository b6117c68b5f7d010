"""Parameter-efficient fine-tuning: LoRA adapters through peft, their saving and merging, the memory knobs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.model import ScGPT
from scgpt.model._adapters import (
    LAYER_MODULES,
    add_adapter,
    has_adapter,
    trained_parameters,
    trained_state,
    weights_sha256,
)
from scgpt.model._training import TrainingOutOfMemoryError

FAST = {"max_steps": 3, "max_length": 48, "batch_size": 16}


def _cells(model, adata, n: int = 6, seed: int = 0):
    """A minibatch of ``n`` cells of ``adata`` tokenised for ``model`` (genes, values, padding)."""
    rng = np.random.default_rng(seed)
    ids = np.asarray([model.vocab[g] for g in adata.var_names if g in model.vocab])
    genes = np.stack([rng.choice(ids, 20, replace=False) for _ in range(n)])
    genes[:, 0] = model.vocab.cls_id
    values = rng.integers(1, 51, size=genes.shape).astype(np.float32)
    values[:, 0] = 0
    genes[1, 15:] = model.vocab.pad_id
    return torch.as_tensor(genes), torch.as_tensor(values)


def _outputs(model, batch):
    with torch.no_grad():
        net = model.net.eval()
        return net(*batch)


@pytest.fixture(scope="module")
def annotated(pbmc_counts, tmp_path_factory):
    """The demo model and a LoRA fine-tune of it for annotation (a few steps, tiny lr would hide nothing)."""
    base = ScGPT.from_pretrained("demo", device="cpu")
    tuned = base.finetune(
        "annotation", pbmc_counts, labels_key="bulk_labels", adapter="lora", adapter_dropout=0.1, lr=1e-2,
        early_stopping=False, checkpoint_dir=tmp_path_factory.mktemp("ckpt"), **FAST,
    )  # fmt: skip
    return base, tuned


def _frozen_unchanged(base, tuned) -> int:
    """Assert every pretrained weight of the trunk is bit-identical after adapter training; returns how many."""
    before = base.net.state_dict()
    after = {k.replace(".base_layer", ""): v for k, v in tuned.net.state_dict().items()}
    after = {
        k.replace("in_proj.weight", "in_proj_weight").replace("in_proj.bias", "in_proj_bias"): v
        for k, v in after.items()
    }
    after = {k.replace("embedding.token_adapter.weight", "embedding.weight"): v for k, v in after.items()}
    trunk = [k for k in before if k.split(".")[0] in ("encoder", "value_encoder", "transformer_encoder")]
    for key in trunk:
        assert torch.equal(after[key], before[key]), key
    return len(trunk)


def test_gradients_reach_every_adapter_matrix(pbmc_counts):
    """Catches an adapted layer whose adapter gets no gradient: the attention output projection applied
    functionally (helical's #405), the ``in_proj`` slices of the ``<cls>`` shortcut, or a module name that peft
    does not match. After one step moves the zero-initialised B matrices, every A and B has a nonzero gradient;
    no frozen weight has one."""
    torch.manual_seed(0)
    base = ScGPT.from_pretrained("demo", device="cpu")
    model = base.adapt(n_cls=3, mvc_style=None)
    add_adapter(model, "lora", base=base)
    net = model.net.train()
    lora = {n: p for n, p in net.named_parameters() if ".lora_" in n}
    n_layers = model.config.n_layers
    assert len(lora) == 2 * len(LAYER_MODULES) * n_layers
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == set(LAYER_MODULES)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    genes, values = _cells(model, pbmc_counts)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(genes, values)["cls_output"], labels).backward()
        if _ == 0:
            opt.step()
    for name, p in lora.items():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, name
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(net.get_parameter(n).grad is None for n in frozen)
    out_proj = [n for n in lora if "self_attn.out_proj.lora_A" in n]
    assert len(out_proj) == n_layers


def test_adapters_act_on_the_cls_shortcut_and_the_full_encoder(pbmc_counts):
    """Catches an adapter skipped on one path: ``cell_embedding`` computes the last layer for ``<cls>`` only and
    must see the same adapted weights as ``encode`` (a shortcut slicing the projection's weight would not)."""
    torch.manual_seed(0)
    base = ScGPT.from_pretrained("demo", device="cpu")
    model = base.adapt()
    add_adapter(model, "lora", base=base)
    for name, p in model.net.named_parameters():
        if ".lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    net = model.net.eval()
    genes, values = _cells(model, pbmc_counts)
    with torch.no_grad():
        full = net.encode(genes, values).cell_emb
        short = net.cell_embedding(genes, values)
        plain = base.net.eval().cell_embedding(genes, values)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    assert float((short - plain).abs().max()) > 1e-2


def test_lora_finetune_trains_adapters_and_heads_only(annotated):
    """Catches a fine-tune that trains the base anyway (requires_grad restored too early, an optimizer over all
    weights) or leaves the adapters untouched: the trunk is bit-identical to the base, the B matrices and the new
    classifier moved, and only a few percent of the weights are trained."""
    base, tuned = annotated
    assert has_adapter(tuned.net) and not has_adapter(base.net)
    assert _frozen_unchanged(base, tuned) > 20
    state = tuned.net.state_dict()
    lora_b = [k for k in state if ".lora_B." in k]
    assert lora_b and all(float(state[k].abs().max()) > 0 for k in lora_b)  # zero at the start
    n_trained, n_all = trained_parameters(tuned.net)
    assert 0.01 < n_trained / n_all < 0.10, n_trained / n_all  # demo: 4 layers x 128; heads weigh more here
    info = tuned.registry_["adapter"]
    assert info["kind"] == "lora" and info["rank"] == 8 and info["base"] == "demo"
    assert info["base_sha256"] == weights_sha256(base.net.state_dict())
    assert "lora adapters of rank 8" in repr(tuned)


def test_adapter_save_load_round_trip(annotated, pbmc_counts, tmp_path):
    """Catches an adapter file that misses a trained tensor (a head, a DSBN statistic) or holds the base: the
    reloaded model gives the same outputs (1e-6), and the file holds the trained tensors only (a small share of
    the base's size)."""
    base, tuned = annotated
    folder = tuned.save(tmp_path / "adapter")
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["README.md", "adapter.pt"]  # the adapter and its model card
    size = (folder / "adapter.pt").stat().st_size
    base_size = sum(v.numel() * v.element_size() for v in base.net.state_dict().values())
    assert size < 0.25 * base_size
    saved = torch.load(folder / "adapter.pt", weights_only=True)["state_dict"]
    assert set(saved) == set(trained_state(tuned.net)) and any("cls_decoder" in k for k in saved)
    assert not any(k.startswith(("encoder.", "value_encoder.")) or k.endswith("base_layer.weight") for k in saved)
    batch = _cells(tuned, pbmc_counts)
    want = _outputs(tuned, batch)
    for again in (ScGPT.load(folder), ScGPT.from_pretrained(folder, base=base)):  # recorded name, or given
        got = _outputs(again, batch)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=0, msg=key)
        assert again.registry_["label_categories"] == tuned.registry_["label_categories"]
    with pytest.raises(FileExistsError, match="already holds a model"):
        tuned.save(folder)


def test_merged_model_equals_the_adapter_model(annotated, pbmc_counts, tmp_path):
    """Catches a merge that scales the update wrongly (alpha / r), forgets a layer or keeps adapter dropout active:
    the merged plain model's outputs equal the adapter model's (1e-5), and it saves and reloads in the official
    format (no peft names left)."""
    base, tuned = annotated
    merged = tuned.merge_adapter()
    assert not has_adapter(merged.net) and has_adapter(tuned.net)  # a copy; the adapter model is kept
    assert list(merged.net.state_dict()) == list(tuned.merge_adapter().net.state_dict())
    assert set(merged.net.state_dict()) == set(base.adapt(n_cls=tuned.config.n_cls, mvc_style=None).net.state_dict())
    assert merged.registry_["merged_adapter"]["base"] == "demo" and "adapter" not in merged.registry_
    batch = _cells(tuned, pbmc_counts)
    want, got = _outputs(tuned, batch), _outputs(merged, batch)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5, msg=key)
    assert float((want["cls_output"] - _outputs(base.adapt(n_cls=tuned.config.n_cls), batch)["cls_output"]).abs().max())
    folder = tuned.save_pretrained(tmp_path / "merged", merged=True)
    again = ScGPT.from_pretrained(folder)
    torch.testing.assert_close(_outputs(again, batch)["cls_output"], want["cls_output"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pass merged=True"):
        tuned.save_pretrained(tmp_path / "unmerged")
    with pytest.raises(ValueError, match="cannot hold adapters"):
        tuned.save(tmp_path / "both", official=True)


def test_a_wrong_base_is_refused(annotated, tiny_model, tmp_path):
    """Catches adapters loaded on another model than the one they were trained on (silently wrong outputs): the
    base's weights SHA-256 is checked; a model without a recorded base needs ``base=``."""
    base, tuned = annotated
    folder = tuned.save(tmp_path / "adapter")
    other = ScGPT.from_pretrained("demo", device="cpu")
    with torch.no_grad():
        other.net.transformer_encoder.layers[0].linear1.weight[0, 0] += 1e-3  # one weight differs
    with pytest.raises(ValueError, match=r"was trained on the base model 'demo' \(weights sha256 [0-9a-f]{16}"):
        ScGPT.load(folder, base=other)
    small = tiny_model()
    tuned_small = small.finetune(
        "annotation", scgpt.datasets.pbmc68k_counts(), labels_key="bulk_labels", adapter="lora",
        early_stopping=False, checkpoint_dir=tmp_path / "ckpt", **FAST,
    )  # fmt: skip
    folder = tuned_small.save(tmp_path / "small")
    with pytest.raises(ValueError, match="pass base="):
        ScGPT.load(folder)
    with pytest.raises(ValueError, match="has other weights"):
        ScGPT.load(folder, base="demo")
    assert ScGPT.load(folder, base=small).config.n_cls == tuned_small.config.n_cls


def _moved(before: torch.Tensor, after: torch.Tensor) -> bool:
    return float((after - before).abs().max()) > 0


@pytest.mark.parametrize("task", ["annotation", "integration", "pretrain", "pretrain-masked"])
def test_lora_finetune_for_each_single_cell_task(task, tiny_model, pbmc, tmp_path):
    """Catches a task whose parts stay frozen under an adapter (DSBN, batch encoder, discriminator, generative flag,
    decoders) or whose trunk trains anyway: after LoRA fine-tuning every task-specific part moved, the trunk did
    not, and the adapter round-trips through save/load."""
    pbmc.obs["site"] = np.where(np.arange(pbmc.n_obs) % 2, "a", "b")
    base = tiny_model(mvc_style="inner product")
    keys = {"annotation": {"labels_key": "bulk_labels"}, "integration": {"batch_key": "site"}}.get(task, {})
    tuned = base.finetune(
        task, pbmc, adapter="lora", lr=1e-2, early_stopping=False, checkpoint_dir=tmp_path / "ckpt", **keys, **FAST
    )
    assert _frozen_unchanged(base, tuned) > 10
    state = tuned.net.state_dict()
    changes = {k: v for k, v in tuned.config.to_dict().items() if getattr(base.config, k) != v}
    torch.manual_seed(0)  # finetune's seed: the task's parts as they were initialised
    start = base.adapt(**changes).net.state_dict()
    parts = {
        "annotation": ["cls_decoder"],
        "integration": ["dsbn", "batch_encoder", "grad_reverse_discriminator", "decoder", "mvc_decoder"],
        "pretrain": ["flag_encoder", "decoder", "mvc_decoder"],
        "pretrain-masked": ["decoder", "mvc_decoder"],
    }[task]
    for part in parts:
        names = [k for k in state if k.startswith(part + ".") and state[k].is_floating_point()]
        assert names and any(_moved(start[k], state[k]) for k in names), part
    assert any(float(state[k].abs().max()) > 0 for k in state if ".lora_B." in k)
    loaded = ScGPT.load(tuned.save(tmp_path / "adapter"), base=base)
    for key, value in trained_state(tuned.net).items():
        assert torch.equal(loaded.net.state_dict()[key], value), key


@pytest.mark.filterwarnings("ignore:var_names are not unique:UserWarning")  # proteins named like genes, as in
@pytest.mark.filterwarnings("ignore:1 genes map to a vocabulary token already taken:UserWarning")  # real CITE-seq
def test_lora_finetune_multiomic_trains_the_new_tokens(tmp_path):
    """Catches protein tokens left at their random embeddings under an adapter (the gene-embedding table is frozen):
    the new tokens' rows train through peft's trainable tokens, the pretrained rows stay bit-identical, and the
    modality encoder trains."""
    m = scgpt.datasets.pbmc_cite_seq()
    keep = np.concatenate([np.flatnonzero(m.obs["run"] == r)[:24] for r in ("pbmc5k", "pbmc10k")])
    m = m[keep].copy()
    base = ScGPT.from_pretrained("demo", device="cpu")
    tuned = ScGPT.from_pretrained("demo", device="cpu")  # fine-tuned in place by integrate
    scgpt.tl.integrate(
        m, tuned, modalities=("rna", "prot"), batch_key="run", n_top_genes=60, seed=0,
        adapter="lora", lr=1e-2, checkpoint_dir=tmp_path, max_steps=3, batch_size=16,
    )  # fmt: skip
    info = tuned.registry_["adapter"]
    prot = [i for i, t in enumerate(tuned.vocab.itos) if t.startswith("prot:")]
    assert sorted(info["token_indices"]) == prot and len(prot) == 14
    merged = tuned.merge_adapter().net.state_dict()["encoder.embedding.weight"]
    pretrained = base.net.state_dict()["encoder.embedding.weight"]
    n = pretrained.shape[0]
    assert torch.equal(merged[:n], pretrained)  # the pretrained rows did not move
    delta = tuned.net.state_dict()["encoder.embedding.token_adapter.trainable_tokens_delta.default"]
    start = tuned.net.encoder.embedding.token_adapter.base_layer.weight[prot]
    assert float((delta - start).abs().max()) > 0  # the new rows did
    assert all(p.requires_grad for n_, p in tuned.net.named_parameters() if n_.startswith("mod_encoder."))


def test_lora_finetune_perturbation(tmp_path):
    """Catches the perturbation task training without its flag embedding and affine decoder under an adapter
    (both are new parts): they train, the trunk does not, and the adapter reloads on the base."""
    screen = scgpt.datasets.simulate_perturbations(
        n_genes=30, singles=4, doubles=1, n_cells_per_condition=12, n_control_cells=24, seed=0
    )
    torch.manual_seed(0)
    arch = {"d_model": 32, "n_heads": 4, "d_hid": 64, "n_layers": 2, "dropout": 0.1, "n_cls": None}
    base = ScGPT(vocab=GeneVocab.from_genes(list(screen.var_names)), **arch)
    tuned = base.finetune(
        "perturbation", screen, adapter="lora", max_epochs=1, batch_size=16, lr=1e-2, validation_size=0.25,
        checkpoint_dir=tmp_path / "ckpt",
    )  # fmt: skip
    assert _frozen_unchanged(base, tuned) > 10
    names = [n for n, p in tuned.net.named_parameters() if p.requires_grad]
    assert any(n.startswith("pert_encoder.") for n in names) and any(n.startswith("decoder.") for n in names)
    assert not any(n.startswith(("encoder.", "value_encoder.")) for n in names)
    loaded = ScGPT.load(tuned.save(tmp_path / "adapter"), base=base)
    assert (
        loaded.registry_["perturbation"]["train_perturbations"]
        == tuned.registry_["perturbation"]["train_perturbations"]
    )
    torch.testing.assert_close(
        loaded.net.state_dict()["pert_encoder.weight"], tuned.net.state_dict()["pert_encoder.weight"], atol=0, rtol=0
    )


def test_adapter_clear_errors(annotated, tiny_model, pbmc):
    """Catches unchecked settings that would fail deep inside peft (or train nothing) and silent combinations:
    each gets one clear error naming the argument."""
    base, tuned = annotated
    model = tiny_model()
    kw = {"labels_key": "bulk_labels", "max_steps": 1}
    with pytest.raises(ValueError, match=r"adapter must be None or one of \('lora',\), got 'qlora'"):
        model.finetune("annotation", pbmc, adapter="qlora", **kw)
    with pytest.raises(ValueError, match=r"adapter_modules must name some of"):
        model.finetune("annotation", pbmc, adapter="lora", adapter_modules=["fc"], **kw)
    with pytest.raises(ValueError, match="adapter_rank must be a positive integer, got 0"):
        model.finetune("annotation", pbmc, adapter="lora", adapter_rank=0, **kw)
    with pytest.raises(ValueError, match="freeze_layers=1 and adapter='lora' are alternatives"):
        model.finetune("annotation", pbmc, adapter="lora", freeze_layers=1, **kw)
    with pytest.raises(ValueError, match="carries adapters; merge them first"):
        tuned.adapt(n_cls=2)
    with pytest.raises(ValueError, match="carries adapters; merge them first"):
        tuned.finetune("annotation", pbmc, adapter="lora", **kw)
    with pytest.raises(ValueError, match="no adapter to merge"):
        base.merge_adapter()
    with (
        pytest.warns(UserWarning, match=r"adapter_rank set the adapters of adapter='lora'; without adapter= they"),
        pytest.raises(ValueError, match="freeze_layers must be between 0 and 2"),  # checked next, stops the run
    ):
        model.finetune("annotation", pbmc, adapter_rank=4, freeze_layers=3, **kw)


def test_missing_peft_gives_the_install_command(tiny_model, pbmc, monkeypatch):
    """Catches a bare ModuleNotFoundError deep in a fine-tune when the optional extra is missing: the error names
    the install command, spelled so that it works from a clone."""
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r'needs the peft library.*pip install "\.\[peft\]"'):
        tiny_model().finetune("annotation", pbmc, labels_key="bulk_labels", adapter="lora", max_steps=1)


def test_freeze_layers_keeps_the_gene_embeddings(tiny_model, pbmc, tmp_path):
    """Catches freeze_layers leaving the gene-embedding table (most of the whole-human model's weights) trainable:
    after fine-tuning with freeze_layers the embeddings and the frozen layer are unchanged, the rest moved."""
    base = tiny_model()
    tuned = base.finetune(
        "annotation", pbmc, labels_key="bulk_labels", freeze_layers=1, lr=1e-2, early_stopping=False,
        checkpoint_dir=tmp_path, **FAST,
    )  # fmt: skip
    before, after = base.net.state_dict(), tuned.net.state_dict()
    for key in ("encoder.embedding.weight", "transformer_encoder.layers.0.linear1.weight"):
        assert torch.equal(after[key], before[key]), key
    assert _moved(
        before["transformer_encoder.layers.1.linear1.weight"], after["transformer_encoder.layers.1.linear1.weight"]
    )


def test_gradient_checkpointing_gives_the_same_training(tiny_model, pbmc, tmp_path):
    """Catches ``gradient_checkpointing=True`` not reaching the network, changing the result, or staying on after
    training: the same seeded fine-tune with and without it ends with the same weights (1e-5)."""
    import scgpt.nn._transformer as transformer_module

    calls = []
    real = transformer_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    runs = {}
    for flag in (False, True):
        transformer_module.checkpoint = counting
        try:
            runs[flag] = tiny_model().finetune(
                "annotation", pbmc, labels_key="bulk_labels", gradient_checkpointing=flag, lr=1e-2,
                early_stopping=False, checkpoint_dir=tmp_path / str(flag), **FAST,
            )  # fmt: skip
        finally:
            transformer_module.checkpoint = real
        assert (len(calls) > 0) == flag and not runs[flag].net.gradient_checkpointing
    a, b = runs[False].net.state_dict(), runs[True].net.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-5, msg=key)
    assert runs[False].history_["train_loss"] == pytest.approx(runs[True].history_["train_loss"], abs=1e-5)


def test_out_of_memory_is_answered_with_the_knobs(tiny_model, pbmc, monkeypatch, tmp_path):
    """Catches a raw CUDA out-of-memory traceback reaching the user: the error (simulated on CPU with the exception
    type PyTorch raises) names gradient checkpointing, adapters, and the batch sizes that would fit, with no chained
    traceback."""
    from scgpt.train import ScGPTTrainingPlan

    def boom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ScGPTTrainingPlan, "training_step", boom)
    with pytest.raises(TrainingOutOfMemoryError) as info:
        tiny_model().finetune(
            "annotation", pbmc, labels_key="bulk_labels", batch_size=64, checkpoint_dir=tmp_path, max_steps=1
        )
    message = str(info.value)
    assert message.startswith("Training ran out of memory on cpu (") and "batch_size=64" in message
    assert "gradient_checkpointing=True (then about batch_size=" in message
    assert "adapter='lora'" in message and "accumulate_grad_batches=" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_memory_estimate_of_the_resource_table():
    """Catches an estimate that contradicts the resource table's logic: checkpointing and adapters must lower the
    need, and at whole-human shape full float32 fine-tuning at batch 64 of 1,200-token cells must not fit 16 GB
    (the T4s users of the official code run out of memory on) while LoRA with checkpointing does."""
    from scgpt.model._resources import GB, fitting_batch_size, step_memory

    shape = {"n_parameters": 51_300_000, "n_layers": 12, "d_model": 512, "max_length": 1200}
    full = step_memory(**shape, n_trained=51_300_000)
    ckpt = step_memory(**shape, n_trained=51_300_000, gradient_checkpointing=True)
    lora = step_memory(**shape, n_trained=1_550_000, gradient_checkpointing=True)
    assert ckpt[1] < full[1] / 4 and lora[0] < full[0] / 2
    assert fitting_batch_size(16 * GB, *full) < 64 <= fitting_batch_size(16 * GB, *lora)
