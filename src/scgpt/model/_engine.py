"""The inference engine: every task runs the model over cells through :func:`run_inference`.

Cells are read in chunks (bounded memory; backed files are streamed), tokenised once per chunk by
the same :class:`~scgpt.data.Collator` as training (so batch labels, modality ids and perturbation
flags travel with the tokens), sorted by length and run in length-homogeneous minibatches, so almost
no padding is computed. Each minibatch goes to an :class:`Accumulator`, which decides what to compute
and what to keep:

- :class:`CellRows`: one row per cell (embeddings, class probabilities);
- :class:`GeneValues`: one value per cell (or group of cells) and gene (predicted expression);
- :class:`GenePairs`: gene x gene sums per group of cells (attention maps of chosen layers/heads).

Results never depend on the batch size, the chunking or the other cells: tokenisation is keyed per
cell (:mod:`scgpt.data._random`) and each cell is encoded on its own (padding is masked).

Memory: one chunk of rows, one minibatch of at most ``max_tokens`` padded tokens (on CPU by default;
PyTorch's SDPA kernels never hold the ``L x L`` attention matrix, so a 20k-gene cell runs alone in
a pass of bounded size), and the accumulator's output. Explicit attention maps (:class:`GenePairs`)
are computed in chunks of query genes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._logging import caller, named, warn
from .._settings import settings
from ..data import check_adata, check_values, get_matrix, looks_like_counts, missing_values, read_rows, stored_per_row
from ..data._collate import CellBatch, Collator
from ..data._genes import GeneMatch, match_adata
from ..nn import Encoded, ScGPTNet
from ._adapters import merged_net
from ._device import resolve_device, resolve_dtype
from ._multiomic import binary_modalities, token_modality

if TYPE_CHECKING:
    from anndata import AnnData

    from ._scgpt import ScGPT


def default_chunk_size(batch_size: int) -> int:
    """Cells read (and tokenised) at a time by :func:`run_inference` when no ``chunks`` are given."""
    return max(2048, 16 * batch_size)


def chunk_grid(n_obs: int, chunk_size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` row ranges of ``chunk_size`` cells (the last one shorter) covering ``n_obs``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    return [(s, min(s + chunk_size, n_obs)) for s in range(0, n_obs, chunk_size)]


#: Tokens per forward pass on CPU: small enough for activations to stay in cache (measured
#: fastest on a 2-core x86 CPU at 1-4k tokens), large enough to keep the matrix units busy.
CPU_TOKENS = {torch.float32: 2048, torch.bfloat16: 4096}


def inference_net(net: ScGPTNet, device: torch.device, dtype: torch.dtype) -> ScGPTNet:
    """The network on ``device`` in eval mode; a cast copy when ``dtype`` differs from its parameters'."""
    param = next(net.parameters())
    if param.dtype != dtype:
        net = copy.deepcopy(net).to(device=device, dtype=dtype)
    elif param.device != device:
        net = net.to(device)
    return net.eval()


def length_batches(lengths: np.ndarray, max_cells: int, max_tokens: int | None) -> Iterator[np.ndarray]:
    """Indices of cells in minibatches of similar length, longest first.

    Each minibatch has at most ``max_cells`` cells and ``max_tokens`` padded tokens (a single cell may
    exceed ``max_tokens``).
    """
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        longest = int(lengths[order[i]])
        n = max_cells if max_tokens is None else max(1, min(max_cells, max_tokens // max(longest, 1)))
        yield order[i : i + n]
        i += n


def batch_label_codes(model: ScGPT, adata: AnnData, batch_key: str | None) -> tuple[np.ndarray | None, list[str]]:
    """Integer batch labels for models conditioned on batches, in the categories the model was trained on.

    Returns the codes and the batches the model never saw; their cells get code ``n_batch_labels``, the
    averaged batch of :meth:`scgpt.nn.ScGPTNet.with_average_batch` (with a warning naming them).
    """
    c = model.config
    if not c.batch_conditioned:
        if batch_key is not None:
            warn("batch_key is ignored: this model is not conditioned on batches.")
        return None, []
    if batch_key is None:
        raise ValueError(
            f"This model is conditioned on {c.n_batch_labels} batches (batch encoder or DSBN); pass `batch_key=`, "
            "the obs column holding each cell's batch."
        )
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not a column of adata.obs.")
    known = model.registry_.get("batch_categories")
    missing = missing_values(adata.obs[batch_key])
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        raise ValueError(f"obs[{batch_key!r}] has {int(missing.sum())} cells without a batch (first: {first!r}).")
    values = adata.obs[batch_key].astype(str).to_numpy()
    if known is None:  # an official checkpoint: its batches are known only by number
        known = sorted(set(values))
        if len(known) > c.n_batch_labels:
            raise ValueError(f"batch_key={batch_key!r} has more batches than the {c.n_batch_labels} the model knows.")
    codes = pd.Index(known).get_indexer(values).astype(np.int64)
    unseen = sorted(set(values[codes < 0]))
    if unseen:
        warn(
            f"{len(unseen)} batches were not seen in training ({unseen[:5]}); their cells are normalised with the "
            f"average of the {c.n_batch_labels} known batches' statistics (known: {list(known)[:5]})."
        )
        codes[codes < 0] = c.n_batch_labels
    return codes, unseen


# ---------------------------------------------------------------------------- accumulators
@dataclass
class Run:
    """What an accumulator learns about a run before the first minibatch.

    Attributes
    ----------
    n_obs
        Cells in the input.
    n_genes
        Gene columns of the input.
    token_to_gene
        ``(n_tokens,)`` gene column of each vocabulary token (``-1``: not a gene of the input, e.g. ``<cls>``),
        on the run's device.
    device, dtype
        Where and in which precision the network runs.
    """

    n_obs: int
    n_genes: int
    token_to_gene: Tensor
    device: torch.device
    dtype: torch.dtype


class Accumulator:
    """Receives every minibatch of a run and builds one output (subclass and override the three methods)."""

    def begin(self, run: Run) -> None:
        """Allocate the output for ``run``."""
        self.run = run

    def add(self, net: ScGPTNet, batch: CellBatch) -> None:  # pragma: no cover - abstract
        """Process one minibatch; ``batch.cells`` holds the cells' row indices in the input."""
        raise NotImplementedError

    def end_chunk(self, start: int, stop: int) -> None:
        """Called once every cell of the chunk of rows ``start:stop`` was added (default: nothing to do).

        Accumulators that write results as they go (e.g. out-of-core embeddings) override it.
        """

    def result(self) -> Any:  # pragma: no cover - abstract
        """The output, once every cell was added."""
        raise NotImplementedError


def _conditions(net: ScGPTNet, batch: CellBatch) -> dict[str, Tensor | None]:
    return batch.inputs(net.config.batch_conditioned)


class CellRows(Accumulator):
    """One row per cell: the cell embedding, or ``head(net, cell_embedding)`` (e.g. class probabilities).

    The result is an ``(n_obs, width)`` float32 array.

    Parameters
    ----------
    head
        Maps the network and the cell embeddings ``(B, d)`` to ``(B, width)``; ``None`` keeps the embedding.
    width
        Width of the head's output (default ``d_model``).
    normalize
        L2-normalise each row.
    """

    def __init__(
        self, head: Callable[[ScGPTNet, Tensor], Tensor] | None = None, *, width: int | None = None, normalize: bool
    ) -> None:
        self.head, self.width, self.normalize = head, width, normalize

    def begin(self, run: Run) -> None:
        super().begin(run)
        self.out: np.ndarray | None = None

    def add(self, net: ScGPTNet, batch: CellBatch) -> None:
        emb = net.cell_embedding(batch.genes, batch.values, **_conditions(net, batch))
        if self.head is not None:
            emb = self.head(net, emb)
        if self.out is None:
            self.out = np.zeros((self.run.n_obs, self.width or emb.shape[1]), dtype=np.float32)
        self.out[batch.cells.cpu().numpy()] = emb.float().cpu().numpy()

    def result(self) -> np.ndarray:
        out = self.out if self.out is not None else np.zeros((self.run.n_obs, self.width or 0), np.float32)
        if self.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
        return out


def _expression(net: ScGPTNet, enc: Encoded) -> Tensor:
    return net.expression(enc)[0]


def _group_rows(groups: np.ndarray | None, n_obs: int) -> tuple[np.ndarray, int]:
    """Group code of every cell (each cell its own group without ``groups``) and the number of groups."""
    if groups is None:
        return np.arange(n_obs, dtype=np.int64), n_obs
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (n_obs,):
        raise ValueError(f"groups must hold one code per cell ({n_obs}), got shape {groups.shape}.")
    return groups, int(groups.max(initial=-1)) + 1


class GeneValues(Accumulator):
    """One value per cell (or group of cells) and gene of the input, e.g. predicted expression.

    The result is ``(n_rows, n_genes)`` float32: the mean over the cells of a row in which the gene was a
    token; NaN where it never was (genes outside the vocabulary, unexpressed genes without
    ``include_zero_genes``, genes dropped above ``max_length``).

    Parameters
    ----------
    head
        Maps the network and the encoded minibatch to one value per token ``(B, L)``; default: the
        expression decoder.
    groups
        Group code of each cell, ``(n_obs,)`` (``-1``: left out); values are averaged per group.
        ``None``: one row per cell.
    """

    def __init__(
        self, head: Callable[[ScGPTNet, Encoded], Tensor] = _expression, *, groups: np.ndarray | None = None
    ) -> None:
        self.head, self.groups = head, groups

    def begin(self, run: Run) -> None:
        super().begin(run)
        self.rows, n_rows = _group_rows(self.groups, run.n_obs)
        self.sums = torch.zeros(n_rows * run.n_genes, dtype=torch.float64)
        self.counts = torch.zeros(n_rows * run.n_genes, dtype=torch.int64)

    def add(self, net: ScGPTNet, batch: CellBatch) -> None:
        rows = torch.from_numpy(self.rows[batch.cells.cpu().numpy()])
        enc = net.encode(batch.genes, batch.values, **_conditions(net, batch))
        values = self.head(net, enc).double().cpu()  # (B, L)
        cols = self.run.token_to_gene[batch.genes].cpu()  # (B, L), -1 at <cls>, pads and unknown genes
        keep = (cols >= 0) & (rows[:, None] >= 0)
        flat = (rows[:, None] * self.run.n_genes + cols)[keep]
        self.sums.index_add_(0, flat, values[keep])
        self.counts.index_add_(0, flat, torch.ones_like(flat))

    def result(self) -> np.ndarray:
        mean = self.sums / self.counts.clamp(min=1)
        mean[self.counts == 0] = float("nan")
        return mean.view(-1, self.run.n_genes).float().numpy()


def _ranks(x: Tensor, dim: int) -> Tensor:
    """0-based ranks of the values along ``dim`` (``argsort(argsort(x))``, the second sort done as a scatter).

    On CPU numpy's default sort does the work (several times faster than torch's); ties get an order fixed by
    the values, as the official code's ``numpy.argsort``.
    """
    n = x.shape[dim]
    if x.device.type == "cpu":
        a = np.moveaxis(x.numpy(), dim, -1)
        order = np.argsort(a, axis=-1)
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n), order.shape), axis=-1)
        return torch.from_numpy(np.moveaxis(ranks, -1, dim))
    order = x.argsort(dim=dim, stable=True)
    shape = [1] * x.dim()
    shape[dim] = n
    return torch.empty_like(order).scatter_(dim, order, torch.arange(n, device=x.device).view(shape).expand_as(order))


def rank_normalize(maps: Tensor, is_gene: Tensor) -> Tensor:
    """The official attention-GRN normalisation: ranks within each row, then within each column, over gene tokens.

    Each cell's map (per head) is restricted to its gene tokens (``n`` of them); every row is replaced by the
    ranks of its values divided by ``n`` (``argsort(argsort(row)) / n``: 0 for the smallest, ``(n - 1) / n`` for
    the largest), then every column of the result likewise; the column step breaks ties (equal row ranks) by
    row order, as a stable sort. Entries outside gene tokens are 0. ``maps``: ``(B, H, L, L)``; ``is_gene``:
    ``(B, L)``.
    """
    if maps.device.type == "cpu" and maps.shape[-1] < 2**15 - 1:
        return torch.from_numpy(_rank_normalize_numpy(maps.numpy(), is_gene.numpy()))
    return _rank_normalize_tensor(maps, is_gene)


def _rank_normalize_tensor(maps: Tensor, is_gene: Tensor) -> Tensor:
    """:func:`rank_normalize` in batched tensor operations (any device; used on GPUs)."""
    L = maps.shape[-1]
    pair = is_gene[:, None, :, None] & is_gene[:, None, None, :]
    n = is_gene.sum(1)[:, None, None, None]
    # rows: non-gene entries sort first (-inf), so gene entries take ranks L - n ... L - 1
    rows = _ranks(maps.masked_fill(~pair, float("-inf")), -1) - (L - n)
    # columns: sort unique integer keys (row rank, then row index), non-gene rows first
    row_index = torch.arange(L, device=maps.device).view(1, 1, L, 1)
    key = torch.where(pair, rows + 1, 0) * L + row_index
    cols = _ranks(key, -2) - (L - n)
    return torch.where(pair, cols.to(maps.dtype) / n.clamp(min=1).to(maps.dtype), torch.zeros_like(maps))


def _ranks_along_last(order: np.ndarray) -> np.ndarray:
    """``int16`` ranks from an argsort ``order`` along the last axis (the second sort as a scatter)."""
    ranks = np.empty(order.shape, dtype=np.int16)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(order.shape[-1], dtype=np.int16), order.shape), -1)
    return ranks


def _rank_normalize_numpy(maps: np.ndarray, is_gene: np.ndarray) -> np.ndarray:
    """:func:`rank_normalize` on CPU arrays, one cell at a time, the same numbers as the tensor version.

    The row step sorts the very rows the tensor version sorts (non-gene entries at ``-inf``, numpy's default
    sort), so ties keep the order numpy gives them. The column step ranks unique keys (row rank, row index):
    that is a stable sort of the row ranks alone, done here as numpy's radix sort of ``int16`` keys along
    contiguous rows of the transposed map (hence ``L < 32767``).
    """
    B, H, L, _ = maps.shape
    out = np.zeros_like(maps)
    steps = np.arange(L, dtype=np.int16)
    for b in range(B):
        g = is_gene[b]
        n = int(g.sum())
        if n == 0:
            continue
        pair = g[:, None] & g[None, :]
        rows = _ranks_along_last(np.argsort(np.where(pair, maps[b], -np.inf).astype(maps.dtype, copy=False), -1))
        # gene entries: 1 ... n (row rank among gene entries + 1); non-gene rows: 0, so they sort first
        key = np.where(pair, rows - np.int16(L - n - 1), np.int16(0)).astype(np.int16, copy=False)
        key_t = np.ascontiguousarray(key.swapaxes(-1, -2))  # (H, column, row)
        order = np.argsort(key_t, axis=-1, kind="stable")
        cols_t = np.empty(order.shape, dtype=np.int16)
        np.put_along_axis(cols_t, order, np.broadcast_to(steps, order.shape), -1)
        cols = cols_t.swapaxes(-1, -2)
        value = (cols - np.int16(L - n)).astype(maps.dtype) / np.asarray(max(n, 1), dtype=maps.dtype)
        out[b] = np.where(pair, value, np.zeros((), dtype=maps.dtype))
    return out


class GenePairs(Accumulator):
    """Gene x gene sums of attention maps per group of cells, from the explicit attention path.

    For each cell, the attention weights of the chosen ``layers`` (averaged over them) and ``heads``
    between its gene tokens are optionally transformed per cell and head, averaged over the heads, then added to
    its group's ``(n_genes, n_genes)`` sum, row = query gene, column = key gene. ``<cls>``, padding and
    genes outside the input are left out. The result is a dict: ``sums`` ``(n_groups, n_genes, n_genes)``
    float64, ``counts`` of the cells in which both genes were tokens (same shape, int64), and
    ``n_cells`` per group.

    Parameters
    ----------
    layers
        Layer indices (negative counts from the end).
    heads
        ``"mean"`` over all heads, or the head indices to average.
    softmax
        ``False``: raw ``q @ k.T`` products, as the official attention-GRN tutorial.
    groups
        Group code of each cell, ``(n_obs,)`` (``-1``: left out); ``None``: one group of all cells.
    per_cell
        Maps one minibatch's per-head maps ``(B, H, L, L)`` (``H`` chosen heads, averaged over ``layers``)
        and its token mask ``(B, L)`` (``True`` at gene tokens) to transformed maps of the same shape, before
        the heads are averaged; e.g. the official rank normalisation (:func:`rank_normalize`).
    query_chunk
        Query genes per block of the explicit attention (bounds memory at ``B x heads x query_chunk x L``).
    """

    def __init__(
        self,
        *,
        layers: Sequence[int] = (-1,),
        heads: Literal["mean"] | Sequence[int] = "mean",
        softmax: bool = True,
        groups: np.ndarray | None = None,
        per_cell: Callable[[Tensor, Tensor], Tensor] | None = None,
        query_chunk: int | None = 256,
    ) -> None:
        self.layers, self.heads, self.softmax = tuple(layers), heads, softmax
        self.groups, self.per_cell, self.query_chunk = groups, per_cell, query_chunk

    def begin(self, run: Run) -> None:
        super().begin(run)
        if self.groups is None:
            self.rows, n_groups = np.zeros(run.n_obs, dtype=np.int64), 1
        else:
            self.rows, n_groups = _group_rows(self.groups, run.n_obs)
        G = run.n_genes
        self.sums = torch.zeros(n_groups * G * G, dtype=torch.float64)
        self.counts = torch.zeros(n_groups * G * G, dtype=torch.int64)
        self.n_cells = np.bincount(self.rows[self.rows >= 0], minlength=n_groups)

    def add(self, net: ScGPTNet, batch: CellBatch) -> None:
        B, L = batch.genes.shape
        n_heads = net.config.n_heads
        head_idx = list(range(n_heads)) if self.heads == "mean" else list(self.heads)
        bad = [h for h in head_idx if not 0 <= h < n_heads]
        if bad:
            raise IndexError(f"Head indices {bad} are out of range for a model with {n_heads} heads.")
        per_head = self.per_cell is not None  # keep the head axis only when a transform needs it
        shape = (B, len(head_idx), L, L) if per_head else (B, L, L)
        maps = torch.zeros(shape, dtype=torch.float32, device=batch.genes.device)
        blocks = net.attention(
            batch.genes,
            batch.values,
            layers=self.layers,
            softmax=self.softmax,
            query_chunk=self.query_chunk,
            **_conditions(net, batch),
        )
        n_layers = len({i % net.config.n_layers for i in self.layers})
        for _, rows, weights in blocks:  # (B, h, q, L)
            chosen = weights[:, head_idx].float()
            if per_head:
                maps[:, :, rows] += chosen / n_layers
            else:
                maps[:, rows] += chosen.mean(1) / n_layers
        cols = self.run.token_to_gene[batch.genes]  # (B, L)
        is_gene = cols >= 0
        if per_head:
            maps = self.per_cell(maps, is_gene).mean(1)
        group = torch.from_numpy(self.rows[batch.cells.cpu().numpy()]).to(cols.device)
        pair = is_gene[:, :, None] & is_gene[:, None, :] & (group >= 0)[:, None, None]
        G = self.run.n_genes
        flat = (group[:, None, None] * G * G + cols[:, :, None] * G + cols[:, None, :])[pair].cpu()
        self.sums.index_add_(0, flat, maps[pair].double().cpu())
        self.counts.index_add_(0, flat, torch.ones_like(flat))

    def result(self) -> dict[str, Any]:
        G = self.run.n_genes
        return {
            "sums": self.sums.view(-1, G, G).numpy(),
            "counts": self.counts.view(-1, G, G).numpy(),
            "n_cells": self.n_cells,
        }


# ---------------------------------------------------------------------------- the run
class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, show: bool):
    """A tqdm bar, or a stand-in when progress is off (tqdm.auto would still warn in notebooks without ipywidgets)."""
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", desc=desc, leave=False)


@dataclass
class InferenceResult:
    """What :func:`run_inference` produced.

    Attributes
    ----------
    output
        The accumulator's result.
    match
        How the input's genes matched the vocabulary.
    n_tokens
        ``(n_obs,)`` tokens per cell including ``<cls>``.
    dtype
        Precision the network ran in (``"float32"``, ``"bfloat16"``, ``"float16"``).
    """

    output: Any
    match: GeneMatch
    n_tokens: np.ndarray
    dtype: str


def check_weights(net: torch.nn.Module, fn: str, *, writing: bool = False) -> None:
    """Refuse a network with NaN or infinite weights, whose every output would be NaN (one pass over the weights).

    ``writing``: the caller was about to save the network; the message says that nothing was written.
    """
    from ..nn._model import nonfinite_tensors

    bad = nonfinite_tensors(net.state_dict().items())
    if bad:
        raise ValueError(
            f"{fn}: the model's weights hold NaN or infinite values in {len(bad)} tensors (e.g. {bad[:3]}), so every "
            f"output would be NaN{'; nothing was written' if writing else ''}. The model is damaged (a diverged "
            "training run, or an edit of its weights): load it again, or fine-tune again with a lower learning rate."
        )


ANNOUNCE_SECONDS = 10.0
"""Runs estimated to take longer than this are announced before they start (work, duration, knobs)."""


def _announce(model, adata, layer, match, chunks, max_length, include_zero_genes, cls, device, dtype) -> None:
    """Log the cells, tokens, FLOPs and estimated duration of a run before it starts (longer runs only)."""
    from ._estimate import ANNOUNCE_MIN_CELLS, announce, estimate

    n = sum(b - a for a, b in chunks)
    if n < ANNOUNCE_MIN_CELLS:
        return
    if include_zero_genes:
        tokens = np.full(n, min(int(match.matched.sum()) + int(cls), max_length), dtype=np.float64)
    else:
        try:  # expressed genes per cell, from the row pointers alone (no values read)
            per_row = stored_per_row(adata, layer)
            per_row = np.concatenate([per_row[a:b] for a, b in chunks])
        except Exception:  # noqa: BLE001 - an estimate only: a reader without row counts falls back to the cap
            per_row = np.full(n, max_length)
        tokens = np.minimum(per_row + int(cls), max_length).astype(np.float64)
    flops, seconds = estimate(model.config, tokens, device=device, dtype=dtype)
    if seconds >= ANNOUNCE_SECONDS:
        what = f"running the model over {n:,} cells ({tokens.mean():,.0f} tokens per cell on average)"
        announce(what, flops, seconds, device=device, knobs="max_length=, fewer cells, or a GPU")


@named()
def run_inference(
    model: ScGPT,
    adata: AnnData,
    accumulator: Accumulator,
    *,
    gene_key: str | None = None,
    use_aliases: bool = True,
    layer: str | None = None,
    batch_key: str | None = None,
    max_length: int = 1200,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool | None = None,
    organism: str = "human",
    orthologs: str = "one2one",
    include_zero_genes: bool = False,
    cls_value: float | None = None,
    n_bins: int | None | Literal["model"] = "model",
    expect_counts: bool = True,
    max_tokens: int | None = None,
    tokens: Sequence[str] | None = None,
    chunks: Sequence[tuple[int, int]] | None = None,
    cls: bool = True,
    token_flags: np.ndarray | None = None,
    announce: bool = True,
) -> InferenceResult:
    """Run ``model`` over the cells of ``adata`` (in memory or backed) and feed every minibatch to ``accumulator``.

    Parameters
    ----------
    model
        The model (not modified; run in eval mode on ``device`` in ``dtype``).
    adata
        Cells x genes; values must be non-negative and finite.
    accumulator
        What to compute and keep (:class:`CellRows`, :class:`GeneValues`, :class:`GenePairs`).
    gene_key, use_aliases, layer, batch_key, max_length, batch_size, seed, device, dtype, progress
        See :func:`scgpt.tl.embed`.
    organism, orthologs
        The species of the genes and which of their human orthologs are read (:func:`scgpt.pp.align_vocab`);
        genes that share a token (``orthologs="all"``) have their counts summed by the collator.
    include_zero_genes
        Also feed the in-vocabulary genes a cell does not express (value 0), as the fine-tuning tutorials.
    cls_value
        Value at ``<cls>`` (default ``pad_value``, as the official zero-shot embedding; fine-tuned tasks use 0).
    n_bins
        Value bins; ``"model"`` takes the model's (51 for the released models); ``None`` feeds raw values.
    expect_counts
        Warn when the values do not look like counts.
    max_tokens
        Padded tokens per forward pass; default: 2-4k on CPU, unlimited on GPU.
    tokens
        Use only the genes matched to these vocabulary tokens (e.g. the gene panel a model was fine-tuned
        on, with ``include_zero_genes``); ``None``: every matched gene.
    chunks
        Run only these ``(start, stop)`` row ranges, each read and tokenised at once (its cells sorted by
        length into minibatches), in this order; the accumulator's :meth:`~Accumulator.end_chunk` follows
        each. Default: all cells, in chunks of :func:`default_chunk_size`. Cells outside them are not read
        (their ``n_tokens`` stay 0). Used to share cells between processes and to resume out-of-core runs.
    cls
        Put ``<cls>`` first (``False`` for perturbation models, which see genes only).
    token_flags
        Perturbation flag of every vocabulary token (perturbation models: 1 on the target genes).
    announce
        Log the work and its estimated duration before a run that takes more than a few seconds.
    """
    fn = caller()
    check_adata(adata)
    if max_length < 1 + int(cls):
        need = "2 (<cls> and one gene)" if cls else "1 (one gene)"
        raise ValueError(f"{fn}: max_length must be at least {need}, got {max_length}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    get_matrix(adata, layer)  # clear error for a missing layer before any work
    check_weights(model.net, fn)
    match = match_adata(
        adata, model.vocab, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs
    )
    if tokens is not None:
        match = match.restricted_to(model.vocab.lookup(tokens))
    keys = np.zeros(adata.n_vars, dtype=np.uint64)
    keys[match.matched] = model.vocab.gene_keys()[match.ids[match.matched]]
    labels, unseen = batch_label_codes(model, adata, batch_key)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    net = inference_net(merged_net(model.net).with_average_batch() if unseen else model.net, dev, dt)
    c = net.config
    collator = Collator(
        token_ids=match.ids,
        gene_key=keys,
        cls_id=model.vocab.cls_id,
        pad_id=model.vocab.pad_id,
        pad_value=c.pad_value,
        cls_value=c.pad_value if cls_value is None else float(cls_value),
        max_length=max_length,
        n_bins=int(model.args_.get("n_bins", 51)) if n_bins == "model" else n_bins,
        include_zero_genes=include_zero_genes,
        masking="none",
        seed=seed,
        token_modality=token_modality(model),
        binary_modalities=binary_modalities(model),
        cls=cls,
        token_flags=token_flags,
    )
    token_to_gene = torch.from_numpy(match.gene_of_token(len(model.vocab)))  # first gene of a shared token
    accumulator.begin(Run(adata.n_obs, adata.n_vars, token_to_gene.to(dev), dev, dt))
    if max_tokens is None and dev.type == "cpu":
        max_tokens = CPU_TOKENS.get(dt, 2048)
    if chunks is None:
        chunks = chunk_grid(adata.n_obs, default_chunk_size(batch_size))
    chunks = [(int(a), int(b)) for a, b in chunks]
    bad = [(a, b) for a, b in chunks if not 0 <= a < b <= adata.n_obs]
    if bad:
        raise ValueError(
            f"chunks must be row ranges (start, stop) with 0 <= start < stop <= {adata.n_obs}; got {bad[0]}."
        )
    what = f"layer {layer!r}" if layer else "adata.X"
    matrix = get_matrix(adata, layer)
    n_tokens = np.zeros(adata.n_obs, dtype=np.int64)
    total = sum(b - a for a, b in chunks)
    if announce:
        _announce(model, adata, layer, match, chunks, max_length, include_zero_genes, cls, dev, dt)
    bar = _progress_bar(total, f"{fn}: cells", settings.progress if progress is None else progress)
    was_training = model.net.training
    try:
        with torch.inference_mode():
            for i, (start, stop) in enumerate(chunks):
                X = read_rows(matrix, start, stop)
                check_values(X, what=what, start=start)
                if i == 0 and expect_counts and not looks_like_counts(X):
                    warn(
                        "The expression values do not look like raw counts; scGPT's zero-shot embedding expects raw "
                        "counts (pass `layer=` if counts are in a layer). Results from normalised values differ only "
                        "by binning ties, but scaled or centred values cannot be used."
                    )
                cells = collator.tokenize(X, seed=seed)
                n_tokens[start : start + len(cells)] = cells.lengths + int(cls)
                for idx in length_batches(cells.lengths + int(cls), batch_size, max_tokens):
                    batch = collator.collate(
                        cells.take(idx),
                        batch_labels=None if labels is None else labels[start + idx],
                        index=start + idx,
                    ).to(dev)
                    batch.values = batch.values.to(dt)
                    accumulator.add(net, batch)
                    bar.update(len(idx))
                accumulator.end_chunk(start, stop)
    finally:
        bar.close()
        model.net.train(was_training)
    n_empty = int((n_tokens == 1).sum()) if cls else 0
    if n_empty:
        warn(
            f"{n_empty} cells express none of the model's genes; they are run from <cls> alone (all such cells "
            "get the same result)."
        )
    return InferenceResult(accumulator.result(), match, n_tokens, str(dt).replace("torch.", ""))
