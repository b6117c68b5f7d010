"""Perturbation-response prediction (the official ``TransformerGenerator`` recipe) on the shared pieces.

- The screen in the network's terms, the pairing, loaders and splits: :mod:`scgpt.data._screen`.
- Its data module: :class:`scgpt.train.PerturbationDataModule`.
- Fine-tuning: :class:`PairData`, the task's data hook, so :meth:`ScGPT.finetune <scgpt.model.ScGPT.finetune>`
  has one path for every task.
- Prediction: :func:`predict_mean_expression`, the mean of a :class:`~scgpt.model.GeneValues` accumulator of
  the inference engine over control cells, and :func:`predict_perturbation` behind
  :meth:`ScGPT.predict_perturbation <scgpt.model.ScGPT.predict_perturbation>`.

A long panel is run in chunks of ``gene_chunk`` tokens, the target genes in every chunk: the genes of
different chunks do not attend to each other, an approximation of the official full-sequence run that
bounds memory (the official 20k-gene inference needs about 20 GB, issue #314). When all genes fit, one
chunk is one full run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .._logging import caller, warn
from .._settings import settings
from ..data import check_adata, log_normalized
from ..data._genes import match_adata
from ..data._perturbation import parse_perturbation, perturbation_label, perturbation_labels
from ..data._screen import (
    INPUT,
    NOT_PERTURBED,
    PERTURBED,
    extra_tokens,
    gene_chunks,
    screen_from_adata,
    split_labels,
    target_tokens,
)

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

    from ..train import PerturbationDataModule
    from ._scgpt import ScGPT
    from ._tasks import Task

SETUP_KEY = "perturbation"
"""Key of the perturbation setup in ``model.registry_``."""
ARGS_KEY = "scgpt_perturbation"
"""Key of the same setup in ``args.json`` of the official folder (the official code ignores it)."""
DEFAULT_MAX_LENGTH = 1536
LABEL_OPTIONS = ("labels_key", "batch_key")


# ---------------------------------------------------------------------------- the setup a model remembers
def perturbation_setup(model: ScGPT) -> dict[str, Any]:
    """The perturbation setup of a fine-tuned model (``perturbation_key``, ``control``, gene panel, ...).

    Read from ``model.registry_`` (models fine-tuned or saved by this package), else from
    ``args.json`` (official folders written by this package). A perturbation network without a record
    (e.g. one fine-tuned by the official code) gives ``{}``. Raises for a model without the
    perturbation-flag embedding and affine decoder.
    """
    fn = caller()
    c = model.config
    if not c.n_pert_flags or c.expr_decoder != "affine":
        task = model.registry_.get("task")
        was = f" (it was fine-tuned for {task!r})" if task else ""
        raise ValueError(
            f"{fn}: this model is not fine-tuned for perturbation prediction{was}: it has no perturbation-flag "
            "embedding and affine expression decoder. Fine-tune it first: "
            "model.finetune('perturbation', adata, perturbation_key=..., control=...)."
        )
    setup = model.registry_.get(SETUP_KEY)
    if isinstance(setup, dict):
        return {
            "perturbation_key": model.registry_.get("perturbation_key", "perturbation"),
            "control": model.registry_.get("control", "control"),
            **setup,
        }
    setup = model.args_.get(ARGS_KEY)
    return dict(setup) if isinstance(setup, dict) else {}


# ---------------------------------------------------------------------------- fine-tuning
class PairData:
    """The perturbation task's data hook: a screen's training and validation perturbations, before the heads.

    The official generator recipe: flag embedding (0 = not perturbed, the zero padding row; 1 = target
    gene), affine expression decoder ``a(x) * value + b(x)``, input a random control cell's un-binned
    log1p(normalize_total) values with the target genes flagged, target a cell of that perturbation (same
    genes), MSE on every measured gene, StepLR 0.9; the weights of the epoch with the highest validation
    Pearson-delta are kept (``train_options``).

    Parameters
    ----------
    model
        The pretrained model. Its value encoder must be continuous.
    task
        The ``"perturbation"`` task (defaults and recipe).
    adata
        The screen: raw counts (or log1p data marked by ``uns["log1p"]``), target gene(s) of each cell in
        ``obs[perturbation_key]`` (``"JAK2"``, ``"JAK2+STAT1"``), control cells labelled ``control``.
        Cells of labels in neither set are not used.
    options
        The data keywords of ``finetune``: ``perturbation_key`` (default ``"perturbation"``), ``control``
        (default ``"control"``), ``train_perturbations`` (default: every non-control label not in
        ``val_perturbations``), ``val_perturbations`` (default: the labels of a seeded ``validation_size`` share
        of the target genes, :func:`scgpt.data.split_perturbations` ``mode="single"``, so validation measures
        unseen targets), ``layer``, ``gene_key``, ``use_aliases``, ``organism``, ``orthologs``, ``max_length``,
        ``validation_size``,
        ``early_stopping``, ``seed``.
    """

    def __init__(self, model: ScGPT, task: Task, adata: AnnData, **options: Any) -> None:
        fn = f"finetune({task.name!r})"
        for key in LABEL_OPTIONS:
            if options.get(key) is not None:
                warn(f"{fn} does not use {key}; ignored.")
        key = options.get("perturbation_key") or "perturbation"
        ctrl = options.get("control") or "control"
        if model.config.input_emb_style != "continuous":
            raise ValueError(
                f"{fn} feeds un-binned log1p values, which needs a continuous value encoder (input_emb_style="
                f"'continuous', as the released models); this model has {model.config.input_emb_style!r}."
            )
        labels = perturbation_labels(adata, perturbation_key=key, control=ctrl).to_numpy().astype(str)
        defaults = task.defaults
        early_stopping, validation_size = options.get("early_stopping"), options.get("validation_size")
        self.stop = defaults.get("early_stopping", False) if early_stopping is None else early_stopping
        if validation_size is None:
            validation_size = defaults.get("validation_size", 0.1) if self.stop else 0.0
        seed = options.get("seed", 0)
        use_aliases = options.get("use_aliases", True)
        self.train, self.val = split_labels(
            labels,
            control=ctrl,
            key=key,
            train=options.get("train_perturbations"),
            val=options.get("val_perturbations"),
            validation_size=validation_size,
            seed=seed,
        )
        species = {"organism": options.get("organism", "human"), "orthologs": options.get("orthologs", "one2one")}
        self.targets = target_tokens(
            [ctrl, *self.train, *self.val], model.vocab, control=ctrl, use_aliases=use_aliases, **species
        )
        self.screen = screen_from_adata(
            model.vocab,
            adata,
            labels,
            self.targets,
            control=ctrl,
            layer=options.get("layer"),
            gene_key=options.get("gene_key"),
            use_aliases=use_aliases,
            **species,
        )
        max_length = options.get("max_length")
        self.recipe = task.recipe if max_length is None else task.recipe.replace(max_length=max_length)
        self.task, self.seed = task, seed
        self.categories: dict[str, list[str]] = {}
        self.validation = bool(self.val)
        train_tokens = sorted({int(t) for label in self.train for t in self.targets[label]})
        self.setup = {
            "tokens": model.vocab.lookup_tokens(self.screen.tokens.tolist()),
            "train_perturbations": list(self.train),
            "val_perturbations": list(self.val),
            "train_genes": model.vocab.lookup_tokens(train_tokens),
            "max_length": int(self.recipe.max_length),
            "input": INPUT,
            "flags": {"not_perturbed": NOT_PERTURBED, "perturbed": PERTURBED},
            "n_control_cells": int(len(self.screen.control_rows)),
        }
        self.registry: dict[str, Any] = {
            "task": task.name,
            "perturbation_key": key,
            "control": ctrl,
            SETUP_KEY: self.setup,
        }
        self.train_options = {"monitor": "val_pearson_delta", "monitor_mode": "max"}
        self._dm: PerturbationDataModule | None = None

    def datamodule(self, model: ScGPT, *, batch_size: int | None) -> PerturbationDataModule:
        """Training pairs and validation perturbations for the model with the task's heads."""
        from ..train import PerturbationDataModule

        size = self.task.defaults.get("batch_size", 64) if batch_size is None else batch_size
        self._dm = PerturbationDataModule(
            self.screen,
            self.train,
            self.val,
            batch_size=size,
            max_length=self.recipe.max_length,
            pad_id=model.vocab.pad_id,
            pad_value=model.config.pad_value,
            seed=self.seed,
        )
        return self._dm

    def training_tokens(self) -> np.ndarray:
        """Tokens of each training example per pass (for the time estimate): the panel, capped at ``max_length``."""
        n = len(self._dm.examples) if self._dm is not None else 0
        return np.full(n, min(len(self.screen.tokens) + 1, self.recipe.max_length), dtype=np.float64)

    def summary(self) -> str:
        """The log line before training."""
        screen, targets = self.screen, self.targets
        n_extra = len({int(t) for t in np.concatenate(list(targets.values()))} - set(screen.tokens.tolist()))
        n_examples = len(self._dm.examples) if self._dm is not None else 0
        return (
            f"fine-tuning for {self.task.name!r}: {len(self.train)} training perturbations ({n_examples} target "
            f"cells with the controls), {len(self.val)} for validation, {len(screen.control_rows)} control cells, "
            f"{len(screen.tokens)} genes" + (f" + {n_extra} unmeasured target genes as extra tokens" if n_extra else "")
        )

    def finish(self, model: ScGPT) -> None:
        """Record the best validation Pearson-delta, and the setup in ``args.json`` for the official layout."""
        scores = model.history_.get("val_pearson_delta", [])
        self.setup["best_val_pearson_delta"] = float(max(scores)) if scores else None
        key, ctrl = self.registry["perturbation_key"], self.registry["control"]
        model.args_[ARGS_KEY] = {"perturbation_key": key, "control": ctrl, **self.setup}
        model.args_["input_style"] = "log1p"


# ---------------------------------------------------------------------------- prediction
def _cast_for_inference(model: ScGPT, device: torch.device, dtype: torch.dtype) -> ScGPT:
    """The model with its network on ``device`` in ``dtype`` once (a copy when they differ), for many runs."""
    from ._engine import inference_net

    net = inference_net(model.net, device, dtype)
    if net is model.net:
        return model
    return type(model)._from_parts(
        net, model.vocab, args=model.args_, mod_vocab=model.mod_vocab, source=model.source_, attrs=model._attrs()
    )


def _announce_prediction(model: ScGPT, plans: list, n_cells: int, device, dtype) -> None:
    """Log the prediction's work and estimated duration when it is long (many perturbations, long panels)."""
    from ._engine import ANNOUNCE_SECONDS
    from ._estimate import announce, estimate

    lengths = [len(c) + len(m) + len(e) for _, m, e, chunks in plans for c in chunks]
    tokens = np.repeat(np.asarray(lengths, dtype=np.float64), n_cells)
    flops, seconds = estimate(model.config, tokens, device=device, dtype=dtype)
    if seconds >= ANNOUNCE_SECONDS:
        what = f"predicting {len(plans)} perturbation(s) from {n_cells} control cells ({len(lengths)} gene chunks)"
        announce(what, flops, seconds, device=device, knobs="n_control_cells=, fewer perturbations, or a GPU")


def predict_mean_expression(
    model: ScGPT,
    X: np.ndarray,
    tokens: np.ndarray,
    targets: Sequence[np.ndarray],
    *,
    gene_chunk: int,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = False,
    max_tokens: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Mean predicted expression over control cells for each perturbation, ``(n_perturbations, G)`` float64.

    Each perturbation and chunk of genes is one run of the inference engine over the control cells with a
    :class:`~scgpt.model.GeneValues` accumulator (every cell in one group: the mean over cells), the cells'
    un-binned values over the chunk's genes and the targets (no ``<cls>``, unexpressed genes included) and the
    target tokens flagged; a gene's prediction is averaged over the chunks it is in (the targets are in all).

    Parameters
    ----------
    model
        A perturbation model (run in eval mode on ``device`` in ``dtype``; not modified).
    X
        ``(n_cells, G)`` log1p(normalize_total) values of the control cells over the genes ``tokens``.
    tokens
        ``(G,)`` vocabulary ids of the columns of ``X``.
    targets
        Vocabulary ids of the target genes of each perturbation (measured or not).
    gene_chunk
        Tokens per sequence: a perturbation's targets plus up to ``gene_chunk - n_targets`` other genes;
        more genes are split in chunks (:func:`scgpt.data._screen.gene_chunks`), each run with the targets, so
        a gene's prediction sees the genes of its chunk only. All genes in one chunk = the full run.
    batch_size
        Cells per forward pass, an upper bound (on CPU at most ``max_tokens`` tokens per pass).
    seed
        Seed of the chunking (used only with several chunks).
    device, dtype, progress
        Where and in which precision to run; progress bar.
    max_tokens
        Tokens per forward pass (default: 2-4k on CPU, unlimited on GPU).

    Returns
    -------
    The means, and ``{"n_chunks": [...], "sequence_length": [...]}`` per perturbation.
    """
    import anndata as ad

    from ._device import resolve_device, resolve_dtype
    from ._engine import GeneValues, _progress_bar, run_inference

    X = np.asarray(X, dtype=np.float32)
    tokens = np.asarray(tokens, dtype=np.int64)
    n_cells, G = X.shape
    if n_cells == 0:
        raise ValueError("predict_perturbation: no control cells to predict from.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    vocab = model.vocab
    targets = [np.asarray(t, dtype=np.int64) for t in targets]
    unmeasured = np.unique(np.concatenate([extra_tokens(tokens, t) for t in targets] or [np.zeros(0, np.int64)]))
    # the control cells over the panel, then one all-zero column per unmeasured target (value 0, as the official)
    cells = ad.AnnData(
        sp.hstack([sp.csr_matrix(X), sp.csr_matrix((n_cells, len(unmeasured)), dtype=np.float32)]).tocsr(),
        var={"token": vocab.lookup_tokens(np.concatenate([tokens, unmeasured]).tolist())},
    )
    cells.var_names = cells.var["token"].to_numpy()
    plans = []
    for t in targets:
        measured = np.flatnonzero(np.isin(tokens, t))
        extra = extra_tokens(tokens, t)
        capacity = gene_chunk - len(measured) - len(extra)
        if capacity < 1:
            raise ValueError(f"gene_chunk={gene_chunk} leaves no room beside the {len(t)} target genes.")
        plans.append((t, measured, extra, gene_chunks(G, measured, capacity, seed)))
    runner = _cast_for_inference(model, dev, dt)
    _announce_prediction(model, plans, n_cells, dev, dt)
    one_group = np.zeros(n_cells, dtype=np.int64)
    out = np.zeros((len(targets), G))
    bar = _progress_bar(sum(len(p[3]) for p in plans) * n_cells, "predict_perturbation: cells", progress)
    try:
        for i, (t, measured, extra, chunks) in enumerate(plans):
            flags = np.full(len(vocab), NOT_PERTURBED, dtype=np.int64)
            flags[t] = PERTURBED
            sums, counts = np.zeros(G), np.zeros(G)
            for chunk in chunks:
                cols = np.sort(np.concatenate([chunk, measured]))
                names = vocab.lookup_tokens(np.concatenate([tokens[cols], extra]).tolist())
                res = run_inference(
                    runner,
                    cells,
                    GeneValues(groups=one_group),
                    use_aliases=False,
                    max_length=len(names),
                    batch_size=batch_size,
                    seed=seed,
                    device=dev,
                    dtype=dt,
                    progress=False,
                    include_zero_genes=True,
                    n_bins=None,
                    expect_counts=False,
                    max_tokens=max_tokens,
                    tokens=names,
                    cls=False,
                    token_flags=flags,
                    announce=False,
                )
                mean = res.output[0, cols].astype(np.float64)
                sums[cols] += mean
                counts[cols] += 1
                bar.update(n_cells)
            out[i] = sums / np.maximum(counts, 1)
    finally:
        bar.close()
    info = {
        "n_chunks": [len(chunks) for *_, chunks in plans],
        "sequence_length": [int(max(len(c) for c in chunks) + len(m) + len(e)) for _, m, e, chunks in plans],
    }
    return out, info


@dataclass
class PerturbationPrediction:
    """What :meth:`ScGPT.predict_perturbation <scgpt.model.ScGPT.predict_perturbation>` returns.

    Attributes
    ----------
    names
        The perturbation labels, as requested (gene lists joined by ``"+"``).
    X
        ``(n_perturbations, n_vars)`` predicted mean profile over the genes of the input, log1p(normalize_total)
        space; genes outside the vocabulary hold the control mean.
    control_mean
        ``(n_vars,)`` mean profile of all control cells of the input.
    predicted
        ``(n_vars,)`` whether the model predicts the gene (it is in the vocabulary).
    is_target
        ``(n_vars,)`` whether the gene is a target of one of the perturbations.
    targets
        Label -> its target genes.
    unseen
        Label -> its target genes never perturbed in fine-tuning (only labels that have some).
    info
        How the prediction was made (for ``uns[...]["params"]``): keys, cells used, chunks, dtype, coverage.
    """

    names: list[str]
    X: np.ndarray
    control_mean: np.ndarray
    predicted: np.ndarray
    is_target: np.ndarray
    targets: dict[str, tuple[str, ...]]
    unseen: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def requested_labels(perturbations: Any, control: str) -> list[str]:
    """The labels of the requested perturbations, with clear errors for none, the control and repeats."""
    fn = caller()
    items = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    if not items:
        raise ValueError(f"{fn}: no perturbations requested.")
    names = []
    for p in items:
        try:
            names.append(perturbation_label(p, control=control))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{fn}: {e}") from None
    if control in names:
        raise ValueError(f"{fn}: the control label {control!r} is not a perturbation to predict.")
    if len(set(names)) < len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{fn}: perturbation(s) {dup} are requested twice.")
    return names


def predict_perturbation(
    model: ScGPT,
    adata: AnnData,
    perturbations: Any,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    n_control_cells: int = 300,
    seed: int = 0,
    gene_chunk: int | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    progress: bool | None = None,
) -> PerturbationPrediction:
    """The mean profile after each perturbation, predicted from a seeded sample of control cells of ``adata``.

    See :meth:`ScGPT.predict_perturbation <scgpt.model.ScGPT.predict_perturbation>`.
    """
    fn = caller()
    from .._logging import logger

    check_adata(adata)
    setup = perturbation_setup(model)
    if not setup:
        logger.info(f"{fn}: the model carries no fine-tuning record (an official perturbation model?); defaults used")
    key = perturbation_key if perturbation_key is not None else setup.get("perturbation_key", "perturbation")
    ctrl = control if control is not None else setup.get("control", "control")
    if n_control_cells < 1:
        raise ValueError(f"{fn}: no control cells to predict from: n_control_cells must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be positive, got {batch_size}.")
    chunk = int(setup.get("max_length", DEFAULT_MAX_LENGTH)) if gene_chunk is None else int(gene_chunk)
    if chunk < 2:
        raise ValueError(f"{fn}: gene_chunk must be at least 2, got {gene_chunk}.")
    labels = perturbation_labels(adata, perturbation_key=key, control=ctrl).to_numpy()
    names = requested_labels(perturbations, ctrl)
    species = {"organism": organism, "orthologs": orthologs}
    targets = target_tokens(names, model.vocab, control=ctrl, use_aliases=use_aliases, **species)

    controls = np.flatnonzero(labels == ctrl)
    X_ctrl = log_normalized(adata[controls], layer=layer)
    ctrl_mean = np.asarray(X_ctrl.mean(0), dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    n_used = min(n_control_cells, len(controls))
    sample = np.sort(rng.choice(len(controls), n_used, replace=False))
    match = match_adata(adata, model.vocab, gene_key=gene_key, use_aliases=use_aliases, **species)
    cols = np.flatnonzero(match.matched)
    X_in = X_ctrl[sample][:, cols].toarray().astype(np.float32)

    means, run = predict_mean_expression(
        model,
        X_in,
        match.ids[cols],
        [targets[n] for n in names],
        gene_chunk=chunk,
        batch_size=batch_size,
        seed=seed,
        device=device,
        dtype=dtype,
        progress=bool(settings.progress if progress is None else progress),
    )
    X = np.tile(ctrl_mean, (len(names), 1))
    X[:, cols] = means
    genes = {n: parse_perturbation(n, control=ctrl) for n in names}
    unseen: dict[str, list[str]] = {}
    seen = setup.get("train_genes")
    if seen is not None:
        seen_ids = set(model.vocab.lookup(seen).tolist())
        for n in names:
            missing = [g for g, t in zip(genes[n], targets[n]) if int(t) not in seen_ids]
            if missing:
                unseen[n] = missing
    not_in_vocab = adata.var_names[~match.matched]
    info: dict[str, Any] = {
        "perturbation_key": key,
        "control": ctrl,
        "n_control_cells": int(n_used),
        "n_control_cells_available": int(len(controls)),
        "seed": seed,
        "gene_chunk": chunk,
        "n_chunks": [int(n) for n in run["n_chunks"]],
        "layer": layer,
        "batch_size": batch_size,
        "dtype": str(dtype or "float32").replace("torch.", ""),
        "n_genes_predicted": int(len(cols)),
        "n_genes_not_in_vocabulary": int(len(not_in_vocab)),
        "genes_not_in_vocabulary_examples": [str(g) for g in not_in_vocab[:10]],
        "unmeasured_targets": sorted(
            {g for n in names for g, t in zip(genes[n], targets[n]) if not (match.ids == t).any()}
        ),
    }
    if "tokens" in setup:
        panel = set(model.vocab.lookup(setup["tokens"]).tolist())
        info["n_genes_outside_training_panel"] = int(sum(int(t) not in panel for t in match.ids[cols]))
    is_target = np.isin(match.ids, np.concatenate([targets[n] for n in names]))
    return PerturbationPrediction(names, X, ctrl_mean, match.matched.copy(), is_target, genes, unseen, info)
