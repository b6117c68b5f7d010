"""Training equals the official scGPT code, step by step (tests/fixtures/golden_training, from the official 0.2.4 code).

For every task, our training plan and runner start from the same official-layout weights and eat exactly the
minibatches the official code ate (``scripts/vendor_training_golden.py`` records them), three optimiser steps
with the task's optimiser, schedule, clipping and loss weights. Compared: every objective term and the total
(relative 1e-5), every parameter's gradient norm before clipping (1e-5), the learning rate of every step, and
every parameter and buffer after the three steps (1e-5 of the tensor's scale).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from scgpt.data._collate import CellBatch
from scgpt.io import load_official
from scgpt.model import TASKS
from scgpt.nn import ScGPTNet
from scgpt.train import Recipe, ScGPTTrainingPlan, TrainRunner

pytestmark = pytest.mark.golden
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN_TRAINING = FIXTURES / "golden_training"
TOL = 1e-5
MANIFEST = json.loads((GOLDEN_TRAINING / "manifest.json").read_text())


# ---------------------------------------------------------------------------- running our side
def fixture(name: str) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(GOLDEN_TRAINING / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}, MANIFEST["files"][f"{name}.npz"]


def official_net(folder: str, **changes) -> ScGPTNet:
    """Our network loaded from a golden folder, dropout off (as the fixtures were made), in training mode."""
    net, _, report = load_official(FIXTURES / "golden" / folder, generative=changes.pop("generative", False))
    assert report.clean or folder == "official_base_flash"
    new = ScGPTNet(net.config.replace(dropout=0.0, attn_dropout=None, **changes))
    new.load_state_dict(net.state_dict())
    return new.train()


def step_batch(z: dict, i: int, pad_id: int, kind: str = "masked") -> CellBatch:
    """The official minibatch of step ``i`` as a :class:`CellBatch`; ``predict_mask`` as the official loss reads it."""
    t = lambda key: None if f"step{i}::{key}" not in z else torch.from_numpy(z[f"step{i}::{key}"])  # noqa: E731
    genes, values = t("gene_ids"), t("values").float()
    if kind == "masked":  # the official: masked_positions = input_values.eq(mask_value)
        padding, predict, gen = genes.eq(pad_id), values.eq(-1.0), None
    elif kind == "all":  # perturbation: no padding mask, every position scored
        padding, predict, gen = (
            torch.zeros_like(genes, dtype=torch.bool),
            torch.ones_like(genes, dtype=torch.bool),
            None,
        )
    else:  # generative: the generated genes, not padded
        padding, gen = genes.eq(pad_id), t("gen_mask")
        predict = gen.clone()
    return CellBatch(
        genes=genes,
        values=values,
        target=t("target").float(),
        padding_mask=padding,
        predict_mask=predict,
        gen_mask=gen,
        batch_labels=t("batch_labels"),
        labels=t("labels"),
        mod_types=t("mod_types"),
        pert_flags=t("pert_flags"),
        index=i,
    )


class _Loader:
    """The fixture's minibatches of the trainer's current epoch (the last epoch's repeated after it)."""

    def __init__(self, epochs: list[list[CellBatch]], data: pl.LightningDataModule) -> None:
        self.epochs, self.data = epochs, data

    def __len__(self) -> int:
        return max(len(e) for e in self.epochs)

    def __iter__(self):
        epoch = self.data.trainer.current_epoch if self.data.trainer is not None else 0
        batches = self.epochs[min(epoch, len(self.epochs) - 1)]
        return iter(batches + [batches[-1]] * (len(self) - len(batches)))


class _Data(pl.LightningDataModule):
    def __init__(self, epochs: list[list[CellBatch]]) -> None:
        super().__init__()
        self.loader = _Loader(epochs, self)
        self.val_indices = None

    def train_dataloader(self):
        return self.loader

    def val_dataloader(self):
        return []


@dataclass
class Run:
    """What our side did: per-step terms, gradient norms before clipping, learning rates; state after 3 steps."""

    terms: list[dict[str, float]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    grad_norms: list[dict[str, float]] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    state: dict[str, np.ndarray] = field(default_factory=dict)


class _Recorder(pl.Callback):
    def __init__(self, run: Run, n_steps: int) -> None:
        self.run, self.n_steps = run, n_steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # before clipping
        if len(self.run.grad_norms) < self.n_steps:
            self.run.grad_norms.append(
                {n: float(p.grad.double().norm()) for n, p in pl_module.net.named_parameters() if p.grad is not None}
            )
            self.run.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.n_steps and not self.run.state:
            net = pl_module.net
            self.run.state = {f"param::{n}": p.detach().numpy().copy() for n, p in net.named_parameters()}
            self.run.state.update({f"buffer::{n}": b.detach().numpy().copy() for n, b in net.named_buffers()})


def train_like_official(
    net: ScGPTNet,
    recipe: Recipe,
    epochs: list[list[CellBatch]],
    *,
    max_steps: int = 3,
    gradient_clip_val: float | None,
    tmp_path: Path,
    **plan_kwargs,
) -> Run:
    """Our plan and runner on the fixture's minibatches; records the first three steps."""
    run = Run()
    plan = ScGPTTrainingPlan(net, recipe, **plan_kwargs)
    original = plan.compute_losses

    def recording(batch):
        out = original(batch)
        if len(run.terms) < 3:
            run.terms.append({k: float(v.detach()) for k, v in out.items()})
            run.indices.append(batch.index)
        return out

    plan.compute_losses = recording
    runner = TrainRunner(
        plan,
        _Data(epochs),
        max_epochs=len(epochs) + 1,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=gradient_clip_val,
        checkpoint_dir=tmp_path,
        progress=False,
        log_every_n_steps=1,
        callbacks=[_Recorder(run, 3)],
    )
    runner()
    return run


def fixture_epochs(z: dict, meta: dict, pad_id: int, kind: str = "masked") -> list[list[CellBatch]]:
    if "epochs" in meta:
        return [[step_batch(z, i, pad_id, kind) for i in ep] for ep in meta["epochs"]]
    n = sum(1 for k in z if k.endswith("::gene_ids"))
    return [[step_batch(z, i, pad_id, kind) for i in range(n)] + [step_batch(z, n - 1, pad_id, kind)]]


# ---------------------------------------------------------------------------- comparing
NOISE = 1e-6
"""Rounding-noise floor of a gradient, relative to the step's total gradient norm (float32 sums of ~1e4 terms)."""


def official_name(name: str) -> str:
    """The flash-attn layout of the dev-temp model names the packed projection ``Wqkv``; ours ``in_proj_``."""
    return name.replace("self_attn.Wqkv.weight", "self_attn.in_proj_weight").replace(
        "self_attn.Wqkv.bias", "self_attn.in_proj_bias"
    )


def null_gradient(key: str, value: np.ndarray) -> np.ndarray:
    """Entries whose gradient is zero in exact arithmetic: the key part of the attention input bias.

    Adding a vector to every key adds the same number to every score of a query, which the softmax cancels; the
    computed gradient is rounding noise, and Adam (eps 1e-8) turns noise into steps of about ``lr`` in a random
    direction, in the official code as in ours. These entries are compared to that bound instead.
    """
    mask = np.zeros(value.shape, dtype=bool)
    if key.endswith("self_attn.in_proj_bias"):
        d = value.shape[0] // 3
        mask[d : 2 * d] = True
    return mask


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-30))


def check_terms(run: Run, z: dict, meta: dict, names=None) -> dict[str, float]:
    """Each objective term (and, without ``names``, the total) of every step: relative 1e-5."""
    errors = {}
    for j, name in enumerate(meta["term_names"]):
        if names is None or name in names:
            errors[f"term {name}"] = max(rel(run.terms[i][name], z["terms"][i, j]) for i in range(3))
    if names is None:
        errors["total"] = max(rel(run.terms[i]["loss"], z["total"][i]) for i in range(3))
    _assert_within(errors)
    return errors


def check_gradients(run: Run, z: dict, meta: dict) -> dict[str, float]:
    """Every parameter's gradient norm before clipping, every step.

    1e-5 relative plus the rounding-noise floor ``NOISE`` x the step's total norm (a gradient that is zero in
    exact arithmetic, e.g. of a bias in front of a BatchNorm, is noise in both codes).
    """
    pnames = [official_name(n) for n in meta["param_names"]]
    worst = 0.0
    for i in range(3):
        official = {n: v for n, v in zip(pnames, z["grad_norms"][i]) if not math.isnan(v)}
        assert set(run.grad_norms[i]) == set(official), f"step {i}: parameters with gradients differ"
        floor = NOISE * z["clip_total_norm"][i]
        for n, v in official.items():
            diff = abs(run.grad_norms[i][n] - v)
            assert diff <= TOL * v + floor, f"step {i}: gradient norm of {n}: {run.grad_norms[i][n]!r} vs {v!r}"
            if v > 100 * floor:
                worst = max(worst, diff / v)
    return {"grad norms": worst}


def _noisy(z: dict, meta: dict) -> set[str]:
    """Parameters whose gradient is at the rounding-noise floor at some step."""
    pnames = [official_name(n) for n in meta["param_names"]]
    return {
        n
        for i in range(3)
        for n, v in zip(pnames, z["grad_norms"][i])
        if not math.isnan(v) and v <= 100 * NOISE * z["clip_total_norm"][i]
    }


def check_state(run: Run, z: dict, meta: dict, initial: dict[str, np.ndarray]) -> dict[str, float]:
    """Learning rate of every step; every parameter and buffer after three steps (1e-5 of the tensor's scale);
    updates (after minus before, where the gradient is above the noise floor): 1e-3 of the largest update."""
    np.testing.assert_allclose(run.lrs, z["lr"], rtol=1e-12, atol=1e-15, err_msg="learning rates")
    state = {official_name(k): v for k, v in z.items() if k.startswith(("param::", "buffer::"))}
    assert set(state) == set(run.state), "parameters and buffers differ"
    lr_bound, noisy = 2 * float(np.sum(z["lr"])), _noisy(z, meta)
    worst_p, worst_u = 0.0, 0.0
    for k, want in state.items():
        got = run.state[k]
        if not k.startswith("param::") or want.dtype.kind != "f":
            continue
        null = null_gradient(k, want)
        scale = max(float(np.abs(want).max()), 1e-30)
        worst_p = max(worst_p, float(np.abs(got - want)[~null].max(initial=0.0)) / scale)
        assert float(np.abs(got - want)[null].max(initial=0.0)) <= lr_bound, k
        if k.removeprefix("param::") not in noisy:
            step_off, step_ours = want - initial[k], got - initial[k]
            if np.abs(step_off[~null]).max(initial=0.0) > 0:
                worst_u = max(worst_u, rel(step_ours[~null], step_off[~null]))
    errors = {"params": worst_p, "updates": worst_u}
    buffers = [k for k in state if k.startswith("buffer::") and state[k].dtype.kind == "f"]
    if buffers:
        errors["buffers"] = max(rel(run.state[k], state[k]) for k in buffers)
    _assert_within(errors)
    return errors


def _assert_within(errors: dict[str, float]) -> None:
    for key, value in errors.items():
        limit = 1e-3 if key == "updates" else TOL
        assert value <= limit, f"{key}: max relative difference {value:.2e} > {limit:g} ({errors})"


def compare(run: Run, z: dict, meta: dict, initial: dict[str, np.ndarray]) -> dict[str, float]:
    """Terms and total, gradient norms, learning rates, parameters, buffers and updates; asserts them."""
    return {**check_terms(run, z, meta), **check_gradients(run, z, meta), **check_state(run, z, meta, initial)}


def initial_state(net: ScGPTNet) -> dict[str, np.ndarray]:
    return {f"param::{n}": p.detach().numpy().copy() for n, p in net.named_parameters()}


def registry_plan(task: str) -> dict:
    """The optimiser settings our task registry gives a fine-tuning run."""
    t = TASKS[task]
    return {
        "lr": t.defaults["lr"],
        "eps": t.defaults.get("eps", 1e-8),
        "schedule": t.schedule,
        "step_gamma": t.defaults.get("step_gamma", 0.9),
    }


# ---------------------------------------------------------------------------- the tasks
@pytest.fixture(scope="module")
def integration(tmp_path_factory):
    """Our three integration steps (registry settings) next to the official ones."""
    z, meta = fixture("integration")
    net = official_net("official_integration")
    initial = initial_state(net)
    task = TASKS["integration"]
    assert meta["ecs_threshold"] == task.recipe.ecs_threshold and meta["optimizer"]["eps"] == task.defaults["eps"]
    run = train_like_official(
        net,
        task.recipe,
        fixture_epochs(z, meta, net.config.pad_token_id),
        gradient_clip_val=task.defaults["gradient_clip_val"],
        tmp_path=tmp_path_factory.mktemp("integration"),
        **registry_plan("integration"),
    )
    return run, z, meta, initial


def test_integration_gep(integration):
    """GEP (masked-value MSE from the token states, batch embedding joined). Catches: the loss over the wrong
    positions (the official scores every position whose input is -1, ``<cls>`` included), the batch embedding
    added instead of joined, a mean over all positions instead of the masked ones."""
    run, z, meta, _ = integration
    check_terms(run, z, meta, ["mlm"])


def test_integration_zero_probabilities(integration):
    """The Bernoulli NLL of the nonzero probabilities (expression and MVC decoders). Catches: the Bernoulli of the
    zero instead of the nonzero outcome, the wrong decoder's head, a sigmoid missing or applied twice (a clamp of
    our own is caught at the edges, ``test_loss_functions_equal_the_official_at_the_edges``)."""
    run, z, meta, _ = integration
    check_terms(run, z, meta, ["mlm_zero", "mvc_zero"])


def test_integration_gepc(integration):
    """GEPC (MVC: values from the cell embedding and the gene embeddings). Catches: the query built from the
    value-added embeddings instead of the gene embeddings, the batch embedding not joined to the cell embedding."""
    run, z, meta, _ = integration
    check_terms(run, z, meta, ["mvc"])


def test_integration_ecs(integration):
    """ECS (threshold 0.8, weight 10). Catches: ECS on unnormalised embeddings, the diagonal not zeroed, negative
    similarities not cut by the ReLU, another threshold than the registry's (the official tutorial's 0.8)."""
    run, z, meta, _ = integration
    check_terms(run, z, meta, ["ecs"])
    assert meta["weights"]["ecs"] == TASKS["integration"].recipe.objectives["ecs"] == 10.0


def test_integration_dab_and_gradient_reversal(integration):
    """DAB: the discriminator's cross-entropy, and every gradient before clipping. Catches: a wrong sign of the
    gradient reversal (the encoder's gradients change, the discriminator's do not), a reversal factor other
    than 1, the discriminator reading another embedding than ``<cls>``."""
    run, z, meta, _ = integration
    check_terms(run, z, meta, ["dab"])
    check_gradients(run, z, meta)


def test_integration_dsbn_statistics(integration):
    """DSBN: the running statistics of both batch slots after three steps (two minibatches of batch 0, one of
    batch 1). Catches: a DSBN slot from the wrong cell or the wrong batch (the other slot's statistics move), a
    momentum other than BatchNorm's 0.1, statistics that skip ``<cls>``."""
    run, z, meta, initial = integration
    errors = check_state(run, z, meta, initial)
    assert errors["buffers"] <= TOL


def test_integration_schedule_clipping_and_parameters(integration):
    """Learning rates and every parameter after three steps. Catches: the StepLR schedule stepped per batch
    instead of per epoch (the third step's learning rate), no clipping at 1.0 (the official gradient norm is
    above 1,000 here), Adam's eps other than the tutorial's 1e-4, a loss weight other than the tutorial's."""
    run, z, meta, initial = integration
    assert z["clip_total_norm"].min() > 1.0
    assert list(z["lr"]) == pytest.approx([1e-4, 1e-4, 0.9e-4])
    check_terms(run, z, meta)
    check_state(run, z, meta, initial)


def test_annotation_training_equals_the_official(tmp_path):
    """Annotation (cell-type classifier on <cls>), the registry's settings, three steps.

    Catches: the classifier reading another token than ``<cls>`` or a normalised embedding (the CE term); labels
    shifted against the cells; Adam's eps 1e-8 where the tutorial's AMP setting gives 1e-4 (the parameters after
    three steps); no gradient clipping; the schedule stepping per batch instead of per epoch.
    """
    z, meta = fixture("annotation")
    net = official_net("official_annotation")
    initial = initial_state(net)
    task = TASKS["annotation"]
    run = train_like_official(
        net,
        task.recipe,
        fixture_epochs(z, meta, net.config.pad_token_id),
        gradient_clip_val=task.defaults["gradient_clip_val"],
        tmp_path=tmp_path,
        **registry_plan("annotation"),
    )
    compare(run, z, meta, initial)


def test_multiomic_training_equals_the_official(tmp_path):
    """Multi-omic (GEP + GEPC + DAB, batch and modality embeddings joined to the decoders), the tutorial's optimiser.

    Catches: the modality embedding added to the input instead of joined at the decoders; the MVC query without
    the modality embedding; batch labels missing from the decoders. The tutorial's learning rate (1e-3) and
    StepLR factor (0.95) are passed explicitly: the registry fine-tunes the whole pretrained model at 1e-4 / 0.9
    on purpose (pinned in ``test_documented_differences_of_the_registry``).
    """
    z, meta = fixture("multiomic")
    net = official_net("official_multiomic")
    initial = initial_state(net)
    task = TASKS["multiomic"]
    run = train_like_official(
        net,
        task.recipe,
        fixture_epochs(z, meta, net.config.pad_token_id),
        gradient_clip_val=task.defaults["gradient_clip_val"],
        tmp_path=tmp_path,
        lr=meta["optimizer"]["lr"],
        eps=task.defaults["eps"],
        schedule=task.schedule,
        step_gamma=meta["schedule"]["gamma"],
    )
    compare(run, z, meta, initial)


def test_perturbation_training_equals_the_official(tmp_path):
    """Perturbation (TransformerGenerator: flag embedding, affine decoder, MSE on every gene), registry settings.

    Catches: the flags added with the wrong table row or not at all; a padding mask where the official has
    none; the affine decoder's ``a * x + b`` with the target instead of the input value; MSE over a subset of
    the genes; no clipping; Adam's eps other than the default 1e-8.
    """
    z, meta = fixture("perturbation")
    net = official_net("official_perturbation")
    initial = initial_state(net)
    task = TASKS["perturbation"]
    run = train_like_official(
        net,
        task.recipe,
        fixture_epochs(z, meta, net.config.pad_token_id, kind="all"),
        gradient_clip_val=task.defaults["gradient_clip_val"],
        tmp_path=tmp_path,
        **registry_plan("perturbation"),
    )
    compare(run, z, meta, initial)


def test_masked_pretraining_equals_the_official(tmp_path):
    """Masked-value pretraining (GEP + GEPC on masked values), cosine schedule with warm-up stepped per batch.

    Catches: the warm-up starting above 0 (the official, ``transformers.get_cosine_schedule_with_warmup``, gives
    the first step a learning rate of 0 and the second half of it); the schedule stepping per epoch; MVC reading
    the value-added embeddings instead of the gene embeddings; no clipping.
    """
    z, meta = fixture("pretrain_masked")
    net = official_net("official_base")
    initial = initial_state(net)
    sched = meta["schedule"]
    run = train_like_official(
        net,
        TASKS["pretrain-masked"].recipe,
        fixture_epochs(z, meta, net.config.pad_token_id),
        max_steps=sched["total"],
        gradient_clip_val=1.0,
        tmp_path=tmp_path,
        lr=meta["optimizer"]["lr"],
        schedule="cosine",
        warmup_steps=sched["warmup"],
    )
    compare(run, z, meta, initial)


def _official_generative_attention(monkeypatch) -> None:
    """Make our attention skip the output projection for generated genes, as the official dev-temp layer does."""
    import torch.nn.functional as F

    from scgpt.nn._attention import SelfAttention

    def forward(self, x, attn_mask=None, n_queries=None):
        B, L, _ = x.shape
        q, k, v = self.qkv(x)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(B, L, self.d_model)
        if attn_mask is None or attn_mask.shape[-2] == 1:
            return self.out_proj(ctx)
        generated = ~attn_mask[:, 0, 0, :]  # row 0 is <cls>: it sees exactly the known genes
        return torch.where(generated[..., None], ctx, self.out_proj(ctx))

    monkeypatch.setattr(SelfAttention, "forward", forward)


def _generative_run(tmp_path) -> tuple[Run, dict, dict, dict]:
    z, meta = fixture("pretrain_generative")
    net = official_net("official_base_flash", generative=True)
    initial = initial_state(net)
    sched = meta["schedule"]
    recipe = TASKS["pretrain"].recipe.replace(cell_prompt_after=0)  # the fixture's steps are past the official 1000
    run = train_like_official(
        net,
        recipe,
        fixture_epochs(z, meta, net.config.pad_token_id, kind="generative"),
        max_steps=sched["total"],
        gradient_clip_val=1.0,
        tmp_path=tmp_path,
        lr=meta["optimizer"]["lr"],
        schedule="cosine",
        warmup_steps=sched["warmup"],
    )
    return run, z, meta, initial


def test_generative_pretraining_equals_the_official_up_to_its_output_projection(tmp_path, monkeypatch):
    """Generative pretraining with the scGPT attention mask and the cell-prompt pass, cosine warm-up, clipping.

    Our attention made to skip the output projection for generated genes, as the official dev-temp layer does
    (our deliberate difference, pinned by the next test), everything equals the official: terms, gradients,
    parameters after three steps. Catches: generated genes that see each other or their own value; the flag
    embedding missing; the cell prompt placed elsewhere than ``<cls>`` or not detached; MVC on the wrong genes.
    """
    _official_generative_attention(monkeypatch)
    run, z, meta, initial = _generative_run(tmp_path)
    compare(run, z, meta, initial)


def test_generative_pretraining_differs_only_by_the_output_projection_of_generated_genes(tmp_path):
    """Pins the documented difference: on the first step the generated-gene MSE terms differ, MVC does not.

    MVC predicts from ``<cls>``, which only known genes reach, and from the gene embeddings: the output
    projection of the generated genes does not touch it. Catches a change that makes our generative attention
    differ from the official anywhere else (MVC would differ too), or an adoption of the quirk (MSE would agree).
    """
    run, z, meta, _ = _generative_run(tmp_path)
    first = {name: rel(run.terms[0][name], z["terms"][0, j]) for j, name in enumerate(meta["term_names"])}
    assert first["mvc"] <= TOL, first
    assert first["mlm"] > 1e-4 and first["cell_prompt"] > 1e-4, first


# ---------------------------------------------------------------------------- the loss functions
def test_loss_functions_equal_the_official_at_the_edges():
    """``masked_mse`` and ``masked_nll_bernoulli`` against the official functions on probabilities 0, 1e-12, ...,
    1 - 1e-9, 1. Catches a clamp of our own on the zero probabilities (ours clamped to [1e-6, 1 - 1e-6]: an
    independent check measured 3e-3 relative on the MVC zero-probability term of a demo-model batch, 923 of
    16,032 positions outside the clamp), an average over all positions instead of the masked ones, and a
    Bernoulli of the zero (not the nonzero) outcome."""
    from scgpt.train._losses import masked_mse, masked_nll_bernoulli

    z, _ = fixture("losses")
    prob, target, pred, mask = (torch.from_numpy(z[k]) for k in ("prob", "target", "pred", "mask"))
    assert rel(float(masked_nll_bernoulli(prob, target, mask)), z["neg_log_bernoulli"]) <= TOL
    assert rel(float(masked_mse(pred, target, mask)), z["masked_mse"]) <= TOL
    clamped = masked_nll_bernoulli(prob.clamp(1e-6, 1 - 1e-6), target, mask)
    assert rel(float(clamped), z["neg_log_bernoulli"]) > 1e-3  # the edges matter here


# ---------------------------------------------------------------------------- collation: masking, sampling, padding
def _collate(case: str, data: np.ndarray, gene_ids: np.ndarray, meta: dict, *, max_length: int, zeros: bool, seed=0):
    import scipy.sparse as sp

    from scgpt.data._collate import Collator

    n_vocab = int(max(meta["pad_id"], meta["cls_id"], gene_ids.max())) + 1
    collator = Collator(
        token_ids=gene_ids,
        gene_key=np.arange(len(gene_ids), dtype=np.uint64) * np.uint64(2654435761) + np.uint64(n_vocab),
        cls_id=meta["cls_id"],
        pad_id=meta["pad_id"],
        pad_value=-2.0,
        cls_value=0.0,
        mask_value=-1.0,
        max_length=max_length,
        n_bins=None,
        include_zero_genes=zeros,
        masking="masked",
        mask_ratio=0.4,
        seed=seed,
    )
    return collator(sp.csr_matrix(data))


@pytest.mark.parametrize(("case", "zeros", "max_length"), [("fine", False, 3001), ("zeros", True, 3001)])
def test_tokens_padding_and_masking_follow_the_official_tokenizer(case, zeros, max_length):
    """Our collator on the official binned cells against ``tokenize_and_pad_batch`` + ``random_mask_value``.

    Same tokens with the same values per cell (``<cls>`` first with value 0, unexpressed genes only with
    ``include_zero_gene``), right padding with the pad id and value -2 to the longest cell, and per cell the same
    number of hidden values, ``int(0.4 * n)`` of the ``n`` non-padded tokens with ``<cls>`` among the candidates
    (the official masks ``<cls>`` when its value is not the pad value). Catches: padding on the wrong side or
    with the wrong value, ``<cls>`` not first, zero genes dropped or kept wrongly, a mask count off by one
    (``<cls>`` left out of the count), masked padding.
    """
    z, meta = fixture("collation")
    m = MANIFEST["files"]["collation.npz"]
    official_genes, official_values, masked = z[f"{case}::genes"], z[f"{case}::values"], z[f"{case}::masked"]
    batch = _collate(case, z["data"], z["gene_ids"], m, max_length=max_length, zeros=zeros)
    assert batch.genes.shape == official_genes.shape
    assert (batch.genes[:, 0] == m["cls_id"]).all() and (batch.target[:, 0] == 0).all()
    for i in range(len(official_genes)):
        ours = dict(zip(batch.genes[i].tolist(), batch.target[i].tolist()))
        theirs = dict(zip(official_genes[i].tolist(), official_values[i].tolist()))
        assert ours == theirs, f"cell {i}: tokens or values differ"
    np.testing.assert_array_equal(batch.padding_mask.numpy(), official_genes == m["pad_id"])
    np.testing.assert_array_equal(batch.target.numpy()[batch.padding_mask.numpy()], -2.0)
    n_official = (masked == -1).sum(1)
    np.testing.assert_array_equal(batch.predict_mask.sum(1).numpy(), n_official)
    assert not (batch.predict_mask & batch.padding_mask).any()
    np.testing.assert_array_equal(batch.values.numpy()[batch.predict_mask.numpy()], -1.0)
    # <cls> is hidden in some cells, as the official's (about 40 % of the cells over a few seeds)
    hidden_cls = sum(
        int(
            _collate(case, z["data"], z["gene_ids"], m, max_length=max_length, zeros=zeros, seed=s)
            .predict_mask[:, 0]
            .sum()
        )
        for s in range(5)
    )
    assert 0 < hidden_cls < 5 * len(official_genes)


def test_sampled_cells_keep_cls_first_and_a_subset_of_their_genes():
    """Cells longer than ``max_length``: as ``pad_batch``, ``<cls>`` first and ``max_length - 1`` of the cell's
    own genes with their own values, no padding when every cell is longer. Catches: ``<cls>`` dropped by the
    sampling, genes from another cell, values detached from their genes, a length off by one."""
    z, _ = fixture("collation")
    m = MANIFEST["files"]["collation.npz"]
    official = z["sampled::genes"]
    batch = _collate("sampled", z["data"], z["gene_ids"], m, max_length=official.shape[1], zeros=False)
    assert batch.genes.shape == official.shape
    assert (batch.genes[:, 0] == m["cls_id"]).all()
    for i, row in enumerate(z["data"]):
        cell = dict(zip(z["gene_ids"][row > 0].tolist(), row[row > 0].tolist()))
        keep = ~batch.padding_mask[i]
        got = dict(zip(batch.genes[i][keep][1:].tolist(), batch.target[i][keep][1:].tolist()))
        assert len(got) == min(len(cell), official.shape[1] - 1) == int((official[i] != m["pad_id"]).sum()) - 1
        assert all(cell[g] == v for g, v in got.items())


def test_integration_minibatches_come_batch_after_batch(pbmc_counts):
    """The integration recipe's minibatches: one experimental batch each, all of the first batch, then all of
    the second, as the tutorial's ``SubsetsBatchSampler(inter_subset_shuffle=False)`` (the fixture's steps 0 and
    1: batch 0, then batch 1). Catches minibatches that mix batches (DSBN would normalise them with one slot)
    and minibatches of the batches interleaved."""
    from scgpt.data import AnnDataSource, CellLoader, Collator, GeneVocab
    from scgpt.data._random import gene_keys

    recipe = TASKS["integration"].recipe
    assert recipe.per_batch_minibatches and recipe.batch_order == "sequential"
    vocab = GeneVocab([*pbmc_counts.var_names, "<pad>", "<cls>", "<eoc>"])
    source = AnnDataSource(pbmc_counts, np.arange(765), len(vocab))
    present = np.full(len(vocab), -1)
    present[:765] = np.arange(765)
    collator = Collator(token_ids=present, gene_key=gene_keys(vocab.itos), cls_id=vocab.cls_id, pad_id=vocab.pad_id)
    labels = (np.arange(pbmc_counts.n_obs) % 3 == 0).astype(np.int64)  # batches interleaved in the data
    idx = np.arange(200)
    for order, sequential in (("sequential", True), ("interleaved", False)):
        loader = CellLoader(
            source,
            idx,
            collator,
            batch_size=16,
            seed=3,
            obs={"batch_labels": labels},
            group_by="batch_labels",
            group_order=order,
        )
        seen = [b.batch_labels.tolist() for b in loader]
        assert all(len(set(b)) == 1 for b in seen)
        firsts = [b[0] for b in seen]
        assert (firsts == sorted(firsts)) == sequential, firsts
        assert sorted(c for b in loader for c in b.cells.tolist()) == list(range(200))


# ---------------------------------------------------------------------------- the registry against the official loops
def test_registry_matches_the_official_loops():
    """The task registry carries the official loops' settings: clipping at 1.0 everywhere, StepLR per epoch with
    the tutorials' factor, Adam eps of the tutorials' AMP setting, the tutorials' dropout and 10 % validation hold-out.

    Catches a default drifting from the official loop (these are the values the golden tests above train with)."""
    for name in ("annotation", "integration", "multiomic", "perturbation"):
        t = TASKS[name]
        assert t.defaults["gradient_clip_val"] == 1.0 and t.schedule == "step", name
        assert t.defaults.get("step_gamma", 0.9) == 0.9, name
        assert t.defaults["validation_size"] == 0.1, name
    for name in ("pretrain", "pretrain-masked"):
        assert TASKS[name].defaults["gradient_clip_val"] == 1.0, name
    assert TASKS["annotation"].defaults["eps"] == TASKS["integration"].defaults["eps"] == 1e-4
    assert TASKS["perturbation"].defaults.get("eps", 1e-8) == 1e-8
    for name, dropout in (("annotation", 0.2), ("integration", 0.2), ("multiomic", 0.2), ("perturbation", 0.0)):
        cats = {"labels": ["a", "b"], "batches": ["x", "y"]}
        assert TASKS[name].heads(official_net("official_base").config, cats)["dropout"] == dropout, name


def test_documented_differences_of_the_registry():
    """Pins the registry's deliberate differences from the official tutorials (docs/compatibility.md): the
    multi-omic task fine-tunes the whole pretrained model at the integration learning rate (official: a new
    encoder at 1e-3, StepLR 0.95). Catches a silent change of these choices without updating the docs."""
    multi = TASKS["multiomic"]
    assert multi.defaults["lr"] == 1e-4 and multi.defaults.get("step_gamma", 0.9) == 0.9
