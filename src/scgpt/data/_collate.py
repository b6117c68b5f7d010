"""Minibatches for training and inference.

Rows are tokenised, then values are masked (``masking="masked"``) or the genes to generate are chosen
(``masking="generative"``). Every choice is keyed by the cell's content, the seed and the
epoch, so a cell's minibatch entry never depends on the other cells in it, the batch size, the
number of processes or a restart. Inference uses the same collator with nothing hidden
(:meth:`Collator.tokenize` once per chunk, then :meth:`Collator.collate` per minibatch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ._random import STREAM_MASK, STREAM_SPLIT, entry_bits, gene_keys, splitmix64
from ._tokenize import TokenizedCells, entry_positions, pad_batch, rank_in_row, tokenize

Masking = Literal["masked", "generative", "none"]


@dataclass
class CellBatch:
    """A padded minibatch of tokenised cells.

    Attributes
    ----------
    genes
        ``(B, L)`` token ids, ``<cls>`` first.
    values
        ``(B, L)`` model input: values, with ``mask_value`` at masked positions.
    target
        ``(B, L)`` true values.
    padding_mask
        ``(B, L)``, ``True`` at padding.
    predict_mask
        ``(B, L)``, ``True`` at positions whose value is to be predicted (masked or generated).
    gen_mask
        ``(B, L)``, ``True`` at generated positions (generative objective), else ``None``.
    batch_labels, labels
        ``(B,)`` batch and class codes (``None`` when not used).
    mod_types
        ``(B, L)`` modality id of every token (multi-omic models), else ``None``.
    pert_flags
        ``(B, L)`` perturbation flag of every token (perturbation models), else ``None``.
    control_mean, observed_mean
        ``(L,)`` mean control and mean perturbed expression at each token, for validation batches of
        perturbation models that hold one perturbation and the same tokens in every row (the Pearson-delta
        of the batch's mean prediction is then computed); else ``None``.
    cells
        ``(B,)`` indices of the cells in their dataset.
    epoch, index
        Epoch and batch number within it (used to resume a run exactly).
    """

    genes: Tensor
    values: Tensor
    target: Tensor
    padding_mask: Tensor
    predict_mask: Tensor
    gen_mask: Tensor | None = None
    batch_labels: Tensor | None = None
    labels: Tensor | None = None
    mod_types: Tensor | None = None
    pert_flags: Tensor | None = None
    control_mean: Tensor | None = None
    observed_mean: Tensor | None = None
    cells: Tensor | None = None
    epoch: int = 0
    index: int = 0

    def inputs(self, batch_conditioned: bool) -> dict[str, Tensor | None]:
        """Keyword arguments of :meth:`scgpt.nn.ScGPTNet.encode` and ``cell_embedding`` besides genes and values.

        The padding mask and every condition that travels with the tokens (batch labels only for
        ``batch_conditioned`` networks).
        """
        return {
            "padding_mask": self.padding_mask,
            "batch_labels": self.batch_labels if batch_conditioned else None,
            "mod_types": self.mod_types,
            "pert_flags": self.pert_flags,
        }

    def to(self, device: torch.device | str) -> CellBatch:
        """Move every tensor."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return CellBatch(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in kw.items()})

    def __len__(self) -> int:
        return self.genes.shape[0]


def _mix(*parts: int) -> int:
    """Mix integers into one 64-bit seed."""
    h = np.uint64(0)
    for p in parts:
        h = splitmix64(h ^ np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF))
    return int(h)


CLS_KEY = gene_keys(["<cls>"])[0]
"""Random-choice key of the ``<cls>`` token (when it is a masking candidate)."""


def choose_positions(
    cells: TokenizedCells, ratio: float, stream: int, salt: int, *, with_cls: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per cell, ``int(n * ratio)`` of its ``n`` candidates, chosen uniformly by a keyed priority.

    The candidates are the cell's entries, and ``<cls>`` too with ``with_cls`` (as the official
    ``random_mask_value``, which picks among all non-padded positions whose value is not the pad value).
    Returns the choice per entry (bool) and, with ``with_cls``, per cell whether ``<cls>`` is chosen.
    """
    lengths = cells.lengths
    keys = cells.cell_key ^ np.uint64(salt)
    prio = entry_bits(np.repeat(keys, lengths), cells.gene_key, stream)
    if not with_cls:
        n_pick = (lengths * ratio).astype(np.int64)
        return rank_in_row(prio, cells.indptr) < np.repeat(n_pick, lengths), None
    starts = cells.indptr[:-1]
    prio = np.insert(prio, starts, entry_bits(keys, np.full(len(keys), CLS_KEY, dtype=np.uint64), stream))
    indptr = cells.indptr + np.arange(len(cells.indptr))  # <cls> first in every row
    n_pick = ((lengths + 1) * ratio).astype(np.int64)
    chosen = rank_in_row(prio, indptr) < np.repeat(n_pick, lengths + 1)
    first = indptr[:-1]
    return np.delete(chosen, first), chosen[first]


@dataclass
class Collator:
    """Builds :class:`CellBatch` from count rows.

    Parameters
    ----------
    token_ids, gene_key
        Vocabulary id and random-choice key of each gene column.
    cls_id, pad_id
        Ids of ``<cls>`` and ``<pad>``.
    pad_value
        Value at padding.
    cls_value
        Value at ``<cls>`` (``pad_value`` in pretraining and zero-shot use, 0 in the official
        fine-tuning tutorials).
    mask_value
        Input value at masked positions (official: -1).
    max_length
        Tokens per cell including ``<cls>``.
    n_bins
        Value bins, ``None`` for raw values.
    include_zero_genes
        Keep unexpressed genes as tokens with value 0.
    masking
        ``"masked"`` (values of a random subset hidden), ``"generative"`` (a random subset of genes
        enters without values and is generated), ``"none"`` (nothing hidden).
    mask_ratio
        Fraction of genes hidden / generated; a tuple draws one per minibatch (official
        pretraining: 0.25, 0.5, 0.75).
    seed
        Seed.
    token_modality
        Modality id of every vocabulary token, specials included (multi-omic models): values are binned per
        cell and modality, and minibatches carry ``mod_types``; ``None`` for single-modality models.
    binary_modalities
        Modalities whose nonzero values all become the top bin (binarised chromatin accessibility).
    cls
        Put ``<cls>`` first (every scGPT model but the perturbation generator, which sees genes only).
    token_flags
        Perturbation flag of every vocabulary token (perturbation models, :mod:`scgpt.data._screen`):
        minibatches carry ``pert_flags``; ``None`` for models without flags.
    """

    token_ids: np.ndarray
    gene_key: np.ndarray
    cls_id: int
    pad_id: int
    pad_value: float = -2.0
    cls_value: float = -2.0
    mask_value: float = -1.0
    max_length: int = 1200
    n_bins: int | None = 51
    include_zero_genes: bool = False
    masking: Masking = "masked"
    mask_ratio: float | tuple[float, ...] = 0.4
    seed: int = 0
    token_modality: np.ndarray | None = None
    binary_modalities: tuple[int, ...] = ()
    cls: bool = True
    token_flags: np.ndarray | None = None

    def ratio_for(self, epoch: int, batch_index: int) -> float:
        """The mask ratio of a minibatch (fixed, or drawn from the tuple by a keyed choice)."""
        if isinstance(self.mask_ratio, int | float):
            return float(self.mask_ratio)
        ratios = tuple(self.mask_ratio)
        return float(ratios[_mix(self.seed, epoch, batch_index, 17) % len(ratios)])

    def tokenize(self, X: sp.csr_matrix, *, seed: int) -> TokenizedCells:
        """Tokens of the rows of ``X`` (cells x genes).

        Genes in the vocabulary, binned values, at most ``max_length - 1`` per cell, every random choice
        keyed by ``seed`` and the cell.
        """
        return tokenize(
            X,
            self.token_ids,
            self.gene_key,
            max_genes=self.max_length - int(self.cls),
            n_bins=self.n_bins,
            seed=seed,
            include_zero_genes=self.include_zero_genes,
            groups=None if self.token_modality is None else self.token_modality[np.maximum(self.token_ids, 0)],
            binary_groups=self.binary_modalities,
        )

    def collate(
        self,
        cells: TokenizedCells,
        *,
        hidden: np.ndarray | None = None,
        hidden_cls: np.ndarray | None = None,
        batch_labels: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        index: np.ndarray | None = None,
        epoch: int = 0,
        batch_index: int = 0,
    ) -> CellBatch:
        """A padded minibatch of tokenised cells, ``<cls>`` first (unless ``cls=False``).

        ``hidden`` (bool per token entry) marks the values to predict: replaced by ``mask_value``
        with ``masking="masked"``, generated with ``masking="generative"``; ``hidden_cls`` (bool per
        cell) hides ``<cls>``'s value too. ``index`` is each cell's index in its dataset.
        """
        genes, target = pad_batch(
            cells,
            cls_id=self.cls_id,
            cls_value=self.cls_value,
            pad_id=self.pad_id,
            pad_value=self.pad_value,
            cls=self.cls,
        )
        predict = np.zeros(genes.shape, dtype=bool)
        if hidden is not None:
            rows, cols = entry_positions(cells.indptr, offset=int(self.cls))
            predict[rows[hidden], cols[hidden]] = True
        if hidden_cls is not None:
            predict[:, 0] = hidden_cls
        values = target.copy()
        gen = None
        if self.masking == "masked":
            values[predict] = self.mask_value
        elif self.masking == "generative" and hidden is not None:
            gen = torch.from_numpy(predict.copy())
        as_long = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
        g = torch.from_numpy(genes)
        return CellBatch(
            genes=g,
            values=torch.from_numpy(values),
            target=torch.from_numpy(target),
            padding_mask=g.eq(self.pad_id),
            predict_mask=torch.from_numpy(predict),
            gen_mask=gen,
            batch_labels=as_long(batch_labels),
            labels=as_long(labels),
            mod_types=None if self.token_modality is None else torch.from_numpy(self.token_modality[genes]),
            pert_flags=None if self.token_flags is None else torch.from_numpy(self.token_flags[genes]),
            cells=as_long(index),
            epoch=epoch,
            index=batch_index,
        )

    def __call__(
        self,
        X: sp.csr_matrix,
        *,
        epoch: int = 0,
        batch_index: int = 0,
        batch_labels: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        cells: np.ndarray | None = None,
    ) -> CellBatch:
        """Training minibatch of the rows of ``X`` (cells x genes); ``epoch`` varies sampling and masks."""
        epoch_seed = _mix(self.seed, epoch)
        tok = self.tokenize(X, seed=epoch_seed)
        hidden = hidden_cls = None
        if self.masking != "none":
            stream = STREAM_MASK if self.masking == "masked" else STREAM_SPLIT
            # the official random_mask_value may hide <cls> when its value is not the pad value (fine-tuning)
            with_cls = self.masking == "masked" and self.cls_value != self.pad_value
            hidden, hidden_cls = choose_positions(
                tok, self.ratio_for(epoch, batch_index), stream, _mix(epoch_seed, stream), with_cls=with_cls
            )
        return self.collate(
            tok,
            hidden=hidden,
            hidden_cls=hidden_cls,
            batch_labels=batch_labels,
            labels=labels,
            index=cells,
            epoch=epoch,
            batch_index=batch_index,
        )
