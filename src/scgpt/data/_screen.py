"""Perturbation screens in the network's terms: the gene panel, (control cell -> perturbed cell) pairs, loaders.

What the network sees for one perturbation (official tutorial, GEARS batches)::

    tokens   g1    g2    TGT   g4   ...   [EXTRA]      the gene panel, unexpressed genes included, no <cls>
    values   x1    x2    x3    x4   ...   [0]          a control cell's log1p(normalize_total(counts, 1e4)), not binned
    flags    0     0     1     0    ...   [1]          1 on the perturbation's target genes, 0 elsewhere

Flag 0 is the padding row of the official 3-row flag table (a zero vector), flag 1 marks a target gene;
the third row is never used, as in the official code. A target gene that is in the vocabulary but not
measured enters as an extra token (``[EXTRA]``) with value 0 and its flag; a target gene outside the
vocabulary has no embedding and is an error.

Training pairs (:class:`PairLoader`): every cell of a training perturbation (and every control cell, as
GEARS trains on the control condition too) is the target of one example per epoch; its input is a random
control cell drawn anew every epoch (seeded). Above ``max_length`` tokens a seeded random subset of the
genes is used per minibatch, the batch's target genes always included (the official code can drop them,
issue #298). Validation (:func:`validation_batches`): one batch per held-out perturbation (fixed control
cells), whose mean prediction gives the Pearson-delta that early stopping and the best-epoch choice follow.

Prediction runs long panels in chunks of genes (:func:`gene_chunks`), the target genes in every chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from .._logging import caller, logger, warn
from ._collate import CellBatch, _mix
from ._genes import match_adata, match_genes
from ._matrix import log_normalized
from ._perturbation import parse_perturbation, perturbation_label, split_perturbations

if TYPE_CHECKING:
    from anndata import AnnData

    from ._vocab import GeneVocab

NOT_PERTURBED, PERTURBED = 0, 1
INPUT = "log1p(normalize_total(counts, 1e4)), not binned"
"""What a perturbation model's values are."""


def target_tokens(
    labels: Sequence[str],
    vocab: GeneVocab,
    *,
    control: str,
    use_aliases: bool = True,
    organism: str = "human",
    orthologs: str = "one2one",
) -> dict[str, np.ndarray]:
    """Vocabulary ids of the target genes of each label; a target outside the vocabulary is an error."""
    fn = caller()
    genes = sorted({g for label in labels for g in parse_perturbation(label, control=control)})
    ids = (
        match_genes(genes, vocab, use_aliases=use_aliases, organism=organism, orthologs=orthologs).ids
        if genes
        else np.zeros(0, dtype=np.int64)
    )
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
    vocab: GeneVocab,
    adata: AnnData,
    labels: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    control: str,
    layer: str | None,
    gene_key: str | None,
    use_aliases: bool,
    organism: str = "human",
    orthologs: str = "one2one",
) -> Screen:
    """The cells of ``adata`` whose label is in ``targets`` (plus the controls) over the panel of measured genes."""
    keep = np.isin(labels, [*targets, control])
    cells = adata if keep.all() else adata[keep]
    match = match_adata(
        adata, vocab, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs
    )
    cols = np.flatnonzero(match.matched)
    X = log_normalized(cells, layer)[:, cols].astype(np.float32).tocsr()
    screen = Screen(X, match.ids[cols].astype(np.int64), labels[keep], targets, control, np.zeros(len(cols)))
    screen.control_mean = screen.mean_of(control)
    return screen


def choose_columns(screen: Screen, labels: Sequence[str], budget: int, rng: np.random.Generator) -> np.ndarray:
    """Panel positions of a minibatch: all when they fit in ``budget``, else the targets plus a random subset."""
    fn = caller()
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


def _labels_list(given: Sequence[str] | str, control: str, present: set[str], key: str, what: str) -> list[str]:
    fn = caller()
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
) -> tuple[list[str], list[str]]:
    """Training and validation perturbation labels (validation: given, or a seeded split by whole target gene)."""
    fn = caller()
    present = set(labels.tolist()) - {control}
    if not present:
        raise ValueError(f"{fn}: adata.obs[{key!r}] holds only control cells ({control!r}); nothing to learn from.")
    val_list = [] if val is None else _labels_list(val, control, present, key, "val_perturbations")
    if train is not None:
        pool = _labels_list(train, control, present, key, "train_perturbations")
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
            level = logger.level  # its own "k train, 0 validation, m test" line would read as a second split
            logger.setLevel(max(level, 30))
            try:
                split = split_perturbations(pool, mode="single", test_size=validation_size, val_size=0.0, seed=seed)
            finally:
                logger.setLevel(level)
            pool, val_list = split.train, split.test
            given = "of the train_perturbations " if train is not None else ""
            logger.info(
                f"    val_perturbations not given: {len(val_list)} {given}held out for validation and early stopping "
                f"({', '.join(val_list[:5])}{' ...' if len(val_list) > 5 else ''}), {len(pool)} left for training; "
                "pass val_perturbations= to choose them, or early_stopping=False to train on all"
            )
    if not pool:
        raise ValueError(f"{fn}: no training perturbations are left.")
    return pool, val_list


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
