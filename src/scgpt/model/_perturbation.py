"""Perturbation-response prediction (the official ``TransformerGenerator`` recipe): pairing, training data, prediction.

What the network sees for one perturbation (official tutorial, GEARS batches)::

    tokens   g1    g2    TGT   g4   ...   [EXTRA]      the gene panel, unexpressed genes included, no <cls>
    values   x1    x2    x3    x4   ...   [0]          a control cell's log1p(normalize_total(counts, 1e4)), not binned
    flags    0     0     1     0    ...   [1]          1 on the perturbation's target genes, 0 elsewhere

Flag 0 is the padding row of the official 3-row flag table (a zero vector), flag 1 marks a target gene;
the third row is never used, as in the official code. A target gene that is in the vocabulary but not
measured enters as an extra token (``[EXTRA]``) with value 0 and its flag; a target gene outside the
vocabulary has no embedding and is an error.

Training (:func:`finetune_perturbation`): every cell of a training perturbation (and every control cell,
as GEARS trains on the control condition too) is the target of one example per epoch; its input is a
random control cell drawn anew every epoch (seeded). The loss is the MSE on every measured gene. Above
``max_length`` tokens a seeded random subset of the genes is used per minibatch, the batch's target genes
always included (the official code can drop them, issue #298). Validation: one batch per held-out
perturbation (fixed control cells), whose mean prediction gives the Pearson-delta that early stopping and
the best-epoch choice follow.

Prediction (:func:`predict_mean_expression`): the mean prediction over control cells. A long panel is
run in chunks of ``gene_chunk`` tokens, the target genes in every chunk: the genes of different chunks do
not attend to each other, an approximation of the official full-sequence run that bounds memory (the
official 20k-gene inference needs about 20 GB, issue #314). When all genes fit, one chunk is one full run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import scipy.sparse as sp
import torch

from .._anndata import log_normalized
from .._logging import logger, warn
from ..data._collate import CellBatch, _mix
from ..data._genes import match_adata, match_genes
from ..data._perturbation import parse_perturbation, perturbation_label, perturbation_labels, split_perturbations
from ._device import resolve_device, resolve_dtype
from ._engine import CPU_TOKENS, _progress_bar, inference_net

if TYPE_CHECKING:
    from anndata import AnnData

    from ..data._vocab import GeneVocab
    from ._scgpt import ScGPT
    from ._tasks import Task

NOT_PERTURBED, PERTURBED = 0, 1
SETUP_KEY = "perturbation"
"""Key of the perturbation setup in ``model.registry_``."""
ARGS_KEY = "scgpt_perturbation"
"""Key of the same setup in ``args.json`` of the official folder (the official code ignores it)."""
INPUT = "log1p(normalize_total(counts, 1e4)), not binned"
DEFAULT_MAX_LENGTH = 1536


# ---------------------------------------------------------------------------- the setup a model remembers
def perturbation_setup(model: ScGPT, *, fn: str) -> dict[str, Any]:
    """The perturbation setup of a fine-tuned model (``perturbation_key``, ``control``, gene panel, ...).

    Read from ``model.registry_`` (models fine-tuned or saved by this package), else from
    ``args.json`` (official folders written by this package). A perturbation network without a record
    (e.g. one fine-tuned by the official code) gives ``{}``. Raises for a model without the
    perturbation-flag embedding and affine decoder.
    """
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


# ---------------------------------------------------------------------------- data
def target_tokens(
    labels: Sequence[str], vocab: GeneVocab, *, control: str, use_aliases: bool = True, fn: str
) -> dict[str, np.ndarray]:
    """Vocabulary ids of the target genes of each label; a target outside the vocabulary is an error."""
    genes = sorted({g for label in labels for g in parse_perturbation(label, control=control)})
    ids = match_genes(genes, vocab, use_aliases=use_aliases).ids if genes else np.zeros(0, dtype=np.int64)
    token = dict(zip(genes, ids.tolist()))
    missing = [g for g in genes if token[g] < 0]
    if missing:
        where = sorted({label for label in labels if set(parse_perturbation(label, control=control)) & set(missing)})
        raise ValueError(
            f"{fn}: target gene(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} are not in the model's "
            f"vocabulary ({len(vocab):,} tokens): the model has no embedding to flag for them. Leave out the "
            f"perturbation(s) {where[:10]}{' ...' if len(where) > 10 else ''} (to fine-tune: drop their cells)."
        )
    return {
        label: np.array([token[g] for g in parse_perturbation(label, control=control)], dtype=np.int64)
        for label in labels
    }


@dataclass
class Screen:
    """A perturbation screen in the network's terms.

    Attributes
    ----------
    X
        Cells x panel genes, log1p(normalize_total) values (CSR float32).
    tokens
        ``(G,)`` vocabulary id of each panel gene (the measured genes in the vocabulary).
    labels
        ``(n_cells,)`` perturbation label of each cell.
    targets
        Label -> vocabulary ids of its target genes (``()`` for the control).
    control
        The control label.
    control_mean
        ``(G,)`` mean control profile.
    """

    X: sp.csr_matrix
    tokens: np.ndarray
    labels: np.ndarray
    targets: dict[str, np.ndarray]
    control: str
    control_mean: np.ndarray

    @property
    def control_rows(self) -> np.ndarray:
        return np.flatnonzero(self.labels == self.control)

    def rows_of(self, label: str) -> np.ndarray:
        return np.flatnonzero(self.labels == label)

    def mean_of(self, label: str) -> np.ndarray:
        return np.asarray(self.X[self.rows_of(label)].mean(0), dtype=np.float64).ravel()

    def dense(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.X[rows].toarray()[:, cols]


def screen_from_adata(
    model: ScGPT,
    adata: AnnData,
    labels: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    control: str,
    layer: str | None,
    gene_key: str | None,
    use_aliases: bool,
    fn: str,
) -> Screen:
    """The cells of ``adata`` whose label is in ``targets`` (plus the controls) over the panel of measured genes."""
    keep = np.isin(labels, [*targets, control])
    cells = adata if keep.all() else adata[keep]
    match = match_adata(adata, model.vocab, gene_key=gene_key, use_aliases=use_aliases, fn=fn)
    cols = np.flatnonzero(match.matched)
    X = log_normalized(cells, layer, fn=fn)[:, cols].astype(np.float32).tocsr()
    screen = Screen(X, match.ids[cols].astype(np.int64), labels[keep], targets, control, np.zeros(len(cols)))
    screen.control_mean = screen.mean_of(control)
    return screen


def choose_columns(
    screen: Screen, labels: Sequence[str], budget: int, rng: np.random.Generator, *, fn: str = "perturbation"
) -> np.ndarray:
    """Panel positions of a minibatch: all when they fit in ``budget``, else the targets plus a random subset."""
    G = len(screen.tokens)
    if G <= budget:
        return np.arange(G)
    wanted = np.concatenate([screen.targets[label] for label in labels]) if labels else np.zeros(0, np.int64)
    must = np.flatnonzero(np.isin(screen.tokens, wanted))
    if len(must) > budget:
        raise ValueError(f"{fn}: max_length is too short for the {len(must)} target genes of one minibatch.")
    others = np.setdiff1d(np.arange(G), must)
    pick = rng.choice(others, budget - len(must), replace=False)
    return np.sort(np.concatenate([must, pick]))


def extra_tokens(screen_tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Target tokens that are not among the measured genes (they enter with value 0)."""
    return targets[~np.isin(targets, screen_tokens)]


def pair_batch(
    screen: Screen,
    inputs: np.ndarray,
    outputs: np.ndarray | None,
    labels: Sequence[str],
    cols: np.ndarray,
    *,
    pad_id: int,
    pad_value: float,
    epoch: int = 0,
    index: int = 0,
) -> CellBatch:
    """A minibatch: row ``i`` is control cell ``inputs[i]`` with the flags of ``labels[i]``, to predict ``outputs[i]``.

    Tokens are the panel genes at ``cols`` (the same for all rows), then each row's own extra target
    tokens (unmeasured targets, value 0, flag 1), right-padded to the longest. Only measured genes are
    scored (``predict_mask``).
    """
    tokens = screen.tokens[cols]
    extras = [extra_tokens(screen.tokens, screen.targets[label]) for label in labels]
    n_cols, width = len(cols), max((len(e) for e in extras), default=0)
    B, L = len(inputs), n_cols + width
    genes = np.full((B, L), pad_id, dtype=np.int64)
    genes[:, :n_cols] = tokens
    values = np.full((B, L), pad_value, dtype=np.float32)
    values[:, :n_cols] = screen.dense(inputs, cols)
    target = np.zeros((B, L), dtype=np.float32)
    if outputs is not None:
        target[:, :n_cols] = screen.dense(outputs, cols)
    flags = np.zeros((B, L), dtype=np.int64)
    for i, (label, extra) in enumerate(zip(labels, extras)):
        flags[i, :n_cols] = np.where(np.isin(tokens, screen.targets[label]), PERTURBED, NOT_PERTURBED)
        genes[i, n_cols : n_cols + len(extra)] = extra
        values[i, n_cols : n_cols + len(extra)] = 0.0
        flags[i, n_cols : n_cols + len(extra)] = PERTURBED
    predict = np.zeros((B, L), dtype=bool)
    predict[:, :n_cols] = True
    g = torch.from_numpy(genes)
    return CellBatch(
        genes=g,
        values=torch.from_numpy(values),
        target=torch.from_numpy(target),
        padding_mask=g.eq(pad_id),
        predict_mask=torch.from_numpy(predict),
        pert_flags=torch.from_numpy(flags),
        cells=torch.from_numpy(np.asarray(inputs if outputs is None else outputs, dtype=np.int64)),
        epoch=epoch,
        index=index,
    )


class PairLoader:
    """Training minibatches of (random control cell -> perturbed cell) pairs, reshuffled and re-paired every epoch.

    Each example (a cell of a training perturbation, or a control cell) is the target once per epoch; its
    input is a control cell drawn with replacement; order, pairing and gene subsets are functions of
    ``(seed, epoch)``. Like :class:`~scgpt.data.CellLoader`, it remembers its position so that a resumed
    run continues exactly, and each process takes its slice of every global batch.
    """

    def __init__(
        self,
        screen: Screen,
        examples: np.ndarray,
        *,
        batch_size: int,
        max_length: int,
        pad_id: int,
        pad_value: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.screen, self.examples = screen, np.asarray(examples, dtype=np.int64)
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.pad_id, self.pad_value = pad_id, pad_value
        self.rank, self.world_size = rank, world_size
        self.epoch, self._done, self._marked = 0, 0, False

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        return len(self.examples) // g if self.world_size > 1 else -(-len(self.examples) // g)

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(_mix(self.seed, epoch, 404))
        order = self.examples[rng.permutation(len(self.examples))]
        controls = self.screen.control_rows
        return order, controls[rng.integers(0, len(controls), size=len(order))]

    def __iter__(self) -> Iterator[CellBatch]:
        if self._done >= len(self):
            self.epoch, self._done = self.epoch + 1, 0
        epoch = self.epoch
        self._marked = False
        order, inputs = self._plan(epoch)
        g = self.batch_size * self.world_size
        for b in range(self._done, len(self)):
            glob = slice(b * g, (b + 1) * g)
            outs, ins = order[glob], inputs[glob]
            per = -(-len(outs) // self.world_size)
            mine = slice(self.rank * per, (self.rank + 1) * per)
            outs, ins = outs[mine], ins[mine]
            if len(outs) == 0:
                continue
            labels = [str(s) for s in self.screen.labels[outs]]
            budget = self.max_length - max(
                len(extra_tokens(self.screen.tokens, self.screen.targets[s])) for s in labels
            )
            rng = np.random.default_rng(_mix(self.seed, epoch, b, 505))
            cols = choose_columns(self.screen, sorted(set(labels)), budget, rng)
            yield pair_batch(
                self.screen, ins, outs, labels, cols, pad_id=self.pad_id, pad_value=self.pad_value, epoch=epoch, index=b
            )
        if not self._marked and self.epoch == epoch:  # iterated outside a training plan: a full pass ends the epoch
            self.epoch, self._done = self.epoch + 1, 0

    def mark_consumed(self, batch: CellBatch) -> None:
        """Record that training used ``batch`` (see :meth:`scgpt.data.CellLoader.mark_consumed`)."""
        self._marked = True
        self.epoch, self._done = batch.epoch, batch.index + 1
        if self._done >= len(self):
            self.epoch, self._done = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        """Position in the data: epoch and batches of it consumed."""
        return {"epoch": self.epoch, "batches_done": self._done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a position saved by :meth:`state_dict`."""
        self.epoch, self._done = int(state["epoch"]), int(state["batches_done"])


def validation_batches(
    screen: Screen,
    labels: Sequence[str],
    *,
    n_cells: int,
    max_length: int,
    pad_id: int,
    pad_value: float,
    seed: int,
) -> list[CellBatch]:
    """One fixed batch per held-out perturbation: ``n_cells`` control cells (the same for all) flagged for it.

    Each row's target is a random cell of the perturbation (for the validation MSE); the batch carries
    the control mean and the perturbation's observed mean at each token, from which the training plan
    computes the Pearson-delta of the batch's mean prediction (``val_pearson_delta``).
    """
    controls = screen.control_rows
    inputs = np.sort(
        np.random.default_rng(_mix(seed, 606)).choice(controls, min(n_cells, len(controls)), replace=False)
    )
    batches = []
    for i, label in enumerate(labels):
        rows = screen.rows_of(label)
        outputs = np.random.default_rng(_mix(seed, 607, i)).choice(rows, len(inputs), replace=True)
        extra = extra_tokens(screen.tokens, screen.targets[label])
        cols = choose_columns(screen, [label], max_length - len(extra), np.random.default_rng(_mix(seed, 608, i)))
        batch = pair_batch(screen, inputs, outputs, [label] * len(inputs), cols, pad_id=pad_id, pad_value=pad_value)
        batch.index = i
        pad = np.zeros(len(extra))
        batch.control_mean = torch.from_numpy(np.concatenate([screen.control_mean[cols], pad]).astype(np.float32))
        batch.observed_mean = torch.from_numpy(np.concatenate([screen.mean_of(label)[cols], pad]).astype(np.float32))
        batches.append(batch)
    return batches


class FixedBatches:
    """The same prepared minibatches every pass (Lightning would read a plain list as several loaders)."""

    def __init__(self, batches: list[CellBatch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[CellBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PerturbationDataModule(pl.LightningDataModule):
    """Training pairs and validation perturbations of a screen (see :class:`PairLoader`, :func:`validation_batches`).

    Parameters
    ----------
    screen
        The screen.
    train_labels, val_labels
        Perturbation labels to train and validate on.
    batch_size
        Pairs per minibatch per process.
    max_length
        Tokens per cell.
    pad_id, pad_value
        Padding token and value.
    seed
        Seed of order, pairing, gene subsets and validation cells.
    include_control
        Control cells are training targets too (with no flag), as the control condition in GEARS' training set.
    """

    def __init__(
        self,
        screen: Screen,
        train_labels: Sequence[str],
        val_labels: Sequence[str],
        *,
        batch_size: int,
        max_length: int,
        pad_id: int,
        pad_value: float,
        seed: int = 0,
        include_control: bool = True,
    ) -> None:
        super().__init__()
        self.screen = screen
        wanted = [*train_labels, *([screen.control] if include_control else [])]
        self.examples = np.flatnonzero(np.isin(screen.labels, wanted))
        self.val_labels = list(val_labels)
        self.val_indices = np.arange(len(self.val_labels)) if self.val_labels else None  # read by TrainRunner
        self.options = {"batch_size": batch_size, "max_length": max_length, "pad_id": pad_id, "pad_value": pad_value}
        self.seed = seed
        self._train: PairLoader | None = None
        self._val: list[CellBatch] | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> PairLoader:
        rank, world = self._rank_world()
        if self._train is None or (self._train.rank, self._train.world_size) != (rank, world):
            self._train = PairLoader(
                self.screen, self.examples, seed=self.seed, rank=rank, world_size=world, **self.options
            )
        return self._train

    def val_dataloader(self) -> FixedBatches | list:
        if not self.val_labels:
            return []
        if self._val is None:
            o = self.options
            self._val = validation_batches(
                self.screen,
                self.val_labels,
                n_cells=o["batch_size"],
                max_length=o["max_length"],
                pad_id=o["pad_id"],
                pad_value=o["pad_value"],
                seed=self.seed,
            )
        rank, world = self._rank_world()
        return FixedBatches(self._val[rank::world])


# ---------------------------------------------------------------------------- fine-tuning
def _labels_list(
    given: Sequence[str] | str, control: str, present: set[str], key: str, what: str, fn: str
) -> list[str]:
    items = [given] if isinstance(given, str) else list(given)
    try:
        names = [perturbation_label(p, control=control) for p in items]
    except ValueError as e:
        raise ValueError(f"{fn}: {what}: {e}") from None
    if control in names:
        raise ValueError(f"{fn}: {what} lists the control label {control!r}; list perturbations only.")
    unknown = [n for n in names if n not in present]
    if unknown:
        raise KeyError(f"{fn}: {what} has label(s) {unknown[:5]} that no cell of adata.obs[{key!r}] carries.")
    return sorted(set(names))


def split_labels(
    labels: np.ndarray,
    *,
    control: str,
    key: str,
    train: Sequence[str] | None,
    val: Sequence[str] | None,
    validation_size: float,
    seed: int,
    fn: str,
) -> tuple[list[str], list[str]]:
    """Training and validation perturbation labels (validation: given, or a seeded split by whole target gene)."""
    present = set(labels.tolist()) - {control}
    if not present:
        raise ValueError(f"{fn}: adata.obs[{key!r}] holds only control cells ({control!r}); nothing to learn from.")
    val_list = [] if val is None else _labels_list(val, control, present, key, "val_perturbations", fn)
    if train is not None:
        pool = _labels_list(train, control, present, key, "train_perturbations", fn)
    else:
        pool = sorted(present - set(val_list))
    overlap = sorted(set(pool) & set(val_list))
    if overlap:
        raise ValueError(f"{fn}: {overlap[:5]} are both training and validation perturbations.")
    if val is None and validation_size > 0:
        genes = {g for label in pool for g in parse_perturbation(label, control=control)}
        if len(genes) < 2:
            warn(f"{fn}: a single target gene; none can be held out for validation (no early stopping).")
        else:
            split = split_perturbations(pool, mode="single", test_size=validation_size, val_size=0.0, seed=seed)
            pool, val_list = split.train, split.test
    if not pool:
        raise ValueError(f"{fn}: no training perturbations are left.")
    return pool, val_list


def finetune_perturbation(
    model: ScGPT,
    task: Task,
    adata: AnnData,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    train_perturbations: Sequence[str] | None = None,
    val_perturbations: Sequence[str] | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    use_aliases: bool = True,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    max_length: int | None = None,
    validation_size: float | None = None,
    early_stopping: bool | None = None,
    freeze_layers: int = 0,
    seed: int = 0,
    adapter_options: dict[str, Any] | None = None,
    **train_kwargs: Any,
) -> ScGPT:
    """A copy of ``model`` fine-tuned to predict perturbation responses (``model.finetune("perturbation", ...)``).

    The official generator recipe (module docstring): flag embedding (0 = not perturbed, the zero padding
    row; 1 = target gene), affine expression decoder ``a(x) * value + b(x)``, input a random control cell's
    un-binned log1p(normalize_total) values with the target genes flagged, target a cell of that
    perturbation (same genes), MSE on every measured gene, StepLR 0.9; the weights of the epoch with the
    highest validation Pearson-delta are kept.

    Parameters
    ----------
    model
        The pretrained model (not modified). Its value encoder must be continuous.
    task
        The ``"perturbation"`` task (defaults and recipe).
    adata
        The screen: raw counts (or log1p data marked by ``uns["log1p"]``), target gene(s) of each cell in
        ``obs[perturbation_key]`` (``"JAK2"``, ``"JAK2+STAT1"``), control cells labelled ``control``.
        Cells of labels in neither set are not used.
    perturbation_key, control
        ``obs`` column of the labels (default ``"perturbation"``) and the control label (default ``"control"``).
    train_perturbations
        Labels to train on; default: every non-control label not in ``val_perturbations``.
    val_perturbations
        Labels to validate on (early stopping, best epoch); default: the labels of a seeded
        ``validation_size`` share of the target genes (:func:`scgpt.data.split_perturbations`,
        ``mode="single"``), so validation measures unseen targets.
    layer, gene_key, use_aliases
        Where the counts and gene names are; alias matching of genes (and of target genes) to the vocabulary.
    max_epochs, batch_size, lr, max_length
        ``None``: the task's (15 epochs, 64 pairs, 1e-4, 1536 tokens per cell).
    validation_size
        Share of target genes held out for validation when ``val_perturbations`` is not given (default 0.1
        with early stopping, else 0).
    early_stopping
        Stop when the validation Pearson-delta stops improving (default: yes when there is validation).
    freeze_layers
        Keep the gene/value encoders and the first ``freeze_layers`` transformer layers fixed.
    adapter_options
        ``adapter``, ``adapter_rank``, ``adapter_alpha``, ``adapter_dropout``, ``adapter_modules`` of
        :meth:`~scgpt.model.ScGPT.finetune` (LoRA adapters instead of training every weight).
    seed
        Seed of the new parts' initialisation, the split, pairing, order, gene subsets and dropout.
    **train_kwargs
        Passed to :meth:`~scgpt.model.ScGPT.train` (``early_stopping_patience``, ``checkpoint_dir``, ...).

    Returns
    -------
    The fine-tuned model. ``registry_`` holds ``task="perturbation"``, ``perturbation_key``, ``control`` and
    ``perturbation``: ``tokens`` (the gene panel: vocabulary tokens of the measured genes), ``train_perturbations``,
    ``val_perturbations``, ``train_genes`` (vocabulary tokens of the target genes seen in training),
    ``max_length``, ``input``, ``flags``, ``n_control_cells`` and ``best_val_pearson_delta``; the same
    record goes to ``args.json`` (``"scgpt_perturbation"``) when saved in the official layout, so that
    :func:`scgpt.tl.predict_perturbation` needs neither again.
    """
    from ._adapters import prepare, unfreeze

    fn = f"finetune({task.name!r})"
    key = "perturbation" if perturbation_key is None else perturbation_key
    ctrl = "control" if control is None else control
    if model.config.input_emb_style != "continuous":
        raise ValueError(
            f"{fn} feeds un-binned log1p values, which needs a continuous value encoder (input_emb_style="
            f"'continuous', as the released models); this model has {model.config.input_emb_style!r}."
        )
    labels = perturbation_labels(adata, perturbation_key=key, control=ctrl, fn=fn).to_numpy().astype(str)
    defaults = task.defaults
    stop = defaults.get("early_stopping", False) if early_stopping is None else early_stopping
    if validation_size is None:
        validation_size = defaults.get("validation_size", 0.1) if stop else 0.0
    train, val = split_labels(
        labels,
        control=ctrl,
        key=key,
        train=train_perturbations,
        val=val_perturbations,
        validation_size=validation_size,
        seed=seed,
        fn=fn,
    )
    targets = target_tokens([ctrl, *train, *val], model.vocab, control=ctrl, use_aliases=use_aliases, fn=fn)
    screen = screen_from_adata(
        model, adata, labels, targets, control=ctrl, layer=layer, gene_key=gene_key, use_aliases=use_aliases, fn=fn
    )
    recipe = task.recipe if max_length is None else task.recipe.replace(max_length=max_length)
    torch.manual_seed(seed)
    new = model.adapt(**task.heads(model.config, {}))
    prepare(new, model, freeze_layers, **(adapter_options or {}))
    size = defaults.get("batch_size", 64) if batch_size is None else batch_size
    dm = PerturbationDataModule(
        screen,
        train,
        val,
        batch_size=size,
        max_length=recipe.max_length,
        pad_id=new.vocab.pad_id,
        pad_value=new.config.pad_value,
        seed=seed,
    )
    train_tokens = sorted({int(t) for label in train for t in targets[label]})
    setup = {
        "tokens": new.vocab.lookup_tokens(screen.tokens.tolist()),
        "train_perturbations": list(train),
        "val_perturbations": list(val),
        "train_genes": new.vocab.lookup_tokens(train_tokens),
        "max_length": int(recipe.max_length),
        "input": INPUT,
        "flags": {"not_perturbed": NOT_PERTURBED, "perturbed": PERTURBED},
        "n_control_cells": int(len(screen.control_rows)),
    }
    new.registry_.update(task=task.name, perturbation_key=key, control=ctrl)
    new.registry_[SETUP_KEY] = setup
    n_extra = len({int(t) for t in np.concatenate(list(targets.values()))} - set(screen.tokens.tolist()))
    logger.info(
        f"fine-tuning for {task.name!r}: {len(train)} training perturbations ({len(dm.examples)} target cells with "
        f"the controls), {len(val)} for validation, {len(screen.control_rows)} control cells, {len(screen.tokens)} "
        f"genes" + (f" + {n_extra} unmeasured target genes as extra tokens" if n_extra else "")
    )
    has_val = bool(val)
    train_kwargs.setdefault("restore_best", has_val)
    for name, default in (("eps", defaults.get("eps", 1e-8)), ("schedule", task.schedule)):
        if train_kwargs.get(name) is None:
            train_kwargs[name] = default
    try:
        new.train(
            datamodule=dm,
            recipe=recipe,
            max_epochs=defaults.get("max_epochs", 15) if max_epochs is None else max_epochs,
            lr=defaults.get("lr", 1e-4) if lr is None else lr,
            seed=seed,
            early_stopping=stop and has_val,
            monitor="val_pearson_delta",
            monitor_mode="max",
            **train_kwargs,
        )
    finally:
        unfreeze(new)
    scores = new.history_.get("val_pearson_delta", [])
    setup["best_val_pearson_delta"] = float(max(scores)) if scores else None
    new.args_[ARGS_KEY] = {"perturbation_key": key, "control": ctrl, **setup}
    new.args_["input_style"] = "log1p"
    return new


# ---------------------------------------------------------------------------- prediction
def gene_chunks(n_genes: int, keep: np.ndarray, capacity: int, seed: int) -> list[np.ndarray]:
    """Positions ``0..n_genes-1`` except ``keep``, in chunks of at most ``capacity`` (sorted within each chunk).

    One chunk (in order) when they fit; else a seeded permutation cut into near-equal chunks.
    """
    rest = np.setdiff1d(np.arange(n_genes), keep)
    if len(rest) <= capacity:
        return [rest]
    perm = np.random.default_rng(_mix(seed, 909)).permutation(n_genes)
    order = perm[~np.isin(perm, keep)]
    return [np.sort(c) for c in np.array_split(order, math.ceil(len(rest) / capacity))]


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
        more genes are split in chunks (:func:`gene_chunks`), each run with the targets, so a gene's
        prediction sees the genes of its chunk only. All genes in one chunk = the full run.
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
    X = np.asarray(X, dtype=np.float32)
    tokens = np.asarray(tokens, dtype=np.int64)
    n_cells, G = X.shape
    if n_cells == 0:
        raise ValueError("predict_perturbation: no control cells to predict from.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if max_tokens is None and dev.type == "cpu":
        max_tokens = CPU_TOKENS.get(dt, 2048)
    net = inference_net(model.net, dev, dt)
    plans = []
    for t in targets:
        t = np.asarray(t, dtype=np.int64)
        measured = np.flatnonzero(np.isin(tokens, t))
        extra = extra_tokens(tokens, t)
        capacity = gene_chunk - len(measured) - len(extra)
        if capacity < 1:
            raise ValueError(f"gene_chunk={gene_chunk} leaves no room beside the {len(t)} target genes.")
        plans.append((measured, extra, gene_chunks(G, measured, capacity, seed)))
    out = np.zeros((len(targets), G))
    bar = _progress_bar(sum(len(p[2]) for p in plans) * n_cells, "predict_perturbation: cells", progress)
    was_training = model.net.training
    try:
        with torch.inference_mode():
            for i, (measured, extra, chunks) in enumerate(plans):
                sums = torch.zeros(G, dtype=torch.float64)
                counts = torch.zeros(G, dtype=torch.float64)
                for chunk in chunks:
                    cols = np.sort(np.concatenate([chunk, measured]))
                    n_cols = len(cols)
                    genes = torch.from_numpy(np.concatenate([tokens[cols], extra]))
                    flags = np.concatenate([np.isin(cols, measured), np.ones(len(extra), dtype=bool)])
                    flags = torch.from_numpy(np.where(flags, PERTURBED, NOT_PERTURBED).astype(np.int64))
                    L = len(genes)
                    step = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // L))
                    where = torch.from_numpy(cols)
                    for s in range(0, n_cells, step):
                        block = X[s : s + step][:, cols]
                        B = len(block)
                        values = np.zeros((B, L), dtype=np.float32)
                        values[:, :n_cols] = block
                        g = genes.expand(B, L).to(dev)
                        enc = net.encode(
                            g,
                            torch.from_numpy(values).to(dev, dt),
                            torch.zeros(B, L, dtype=torch.bool, device=dev),
                            pert_flags=flags.expand(B, L).to(dev),
                        )
                        pred = net.expression(enc)[0][:, :n_cols].double().sum(0).cpu()
                        sums.index_add_(0, where, pred)
                        counts.index_add_(0, where, torch.full((n_cols,), float(B), dtype=torch.float64))
                        bar.update(B)
                out[i] = (sums / counts.clamp(min=1)).numpy()
    finally:
        bar.close()
        model.net.train(was_training)
    info = {
        "n_chunks": [len(chunks) for _, _, chunks in plans],
        "sequence_length": [int(max(len(c) for c in chunks) + len(m) + len(e)) for m, e, chunks in plans],
    }
    return out, info
