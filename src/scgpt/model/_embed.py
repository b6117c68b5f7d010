"""The inference engine behind :func:`scgpt.tl.embed` and :meth:`ScGPT.get_latent_representation`.

Cells are read in chunks (bounded memory, backed files streamed), tokenised in vectorised code,
sorted by length and run in length-homogeneous minibatches so almost no padding is computed.
Results do not depend on the batch size, the chunking or the other cells: tokenisation is keyed
per cell (:mod:`scgpt.data._random`) and each cell is encoded independently.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ..data._tokenize import TokenizedCells, pad_batch, tokenize
from ..nn import ScGPTNet

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


def embed_chunks(
    net: ScGPTNet,
    chunks: Iterable[tuple[int, sp.csr_matrix]],
    n_obs: int,
    token_ids: np.ndarray,
    gene_key: np.ndarray,
    *,
    cls_id: int,
    pad_id: int,
    max_length: int = 1200,
    batch_size: int = 64,
    n_bins: int | None = 51,
    seed: int = 0,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    batch_labels: np.ndarray | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    cls_value: float | None = None,
    head: Callable | None = None,
    out_dim: int | None = None,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised ``<cls>`` embeddings ``(n_obs, d)`` float32 (or another per-cell output), and the tokens per cell.

    Parameters
    ----------
    net
        The network (not modified).
    chunks
        ``(first cell, CSR rows)`` blocks covering all ``n_obs`` cells, columns = genes.
    n_obs
        Number of cells.
    token_ids
        Vocabulary id of each gene column (``-1``: not used).
    gene_key
        Random-choice key of each gene column.
    cls_id, pad_id
        Ids of ``<cls>`` and ``<pad>``.
    max_length
        Tokens per cell including ``<cls>``; cells with more genes keep a seeded random subset.
    batch_size
        Cells per forward pass (an upper bound; results do not depend on it).
    n_bins
        Value bins (``None``: raw values).
    seed
        Seed of tie-breaks and gene sampling.
    device, dtype
        Where and in which precision the network runs.
    batch_labels
        ``(n_obs,)`` batch ids, for models conditioned on batches.
    max_tokens
        Padded tokens per forward pass; default: 2-4k on CPU, unlimited on GPU.
    progress
        Show a progress bar.
    cls_value
        Value at ``<cls>`` (default ``pad_value``, as the official zero-shot embedding; the
        fine-tuning tutorials use 0).
    head
        Maps ``(net, cell_emb)`` to the per-cell output (default: the cell embedding itself), e.g.
        the classifier logits.
    out_dim
        Width of the head's output (default ``d_model``).
    normalize
        L2-normalise each cell's output.

    Values must be non-negative and finite (callers check, see :func:`scgpt._anndata.check_values`).
    """
    pad_value = float(net.config.pad_value)
    cls_value = pad_value if cls_value is None else float(cls_value)
    if max_tokens is None and device.type == "cpu":
        max_tokens = CPU_TOKENS.get(dtype, 2048)
    out = np.zeros((n_obs, out_dim or net.config.d_model), dtype=np.float32)
    n_tokens = np.zeros(n_obs, dtype=np.int64)
    bar = tqdm(total=n_obs, unit="cell", desc="embedding cells", disable=not progress, leave=False)
    with torch.inference_mode():
        for start, X in chunks:
            cells: TokenizedCells = tokenize(X, token_ids, gene_key, max_genes=max_length - 1, n_bins=n_bins, seed=seed)
            n_tokens[start : start + len(cells)] = cells.lengths + 1
            for idx in length_batches(cells.lengths + 1, batch_size, max_tokens):
                genes, values = pad_batch(
                    cells.take(idx), cls_id=cls_id, cls_value=cls_value, pad_id=pad_id, pad_value=pad_value
                )
                g = torch.from_numpy(genes).to(device)
                v = torch.from_numpy(values).to(device=device, dtype=dtype)
                labels = None
                if batch_labels is not None:
                    labels = torch.from_numpy(np.asarray(batch_labels[start + idx], dtype=np.int64)).to(device)
                emb = net.cell_embedding(g, v, g.eq(pad_id), batch_labels=labels)
                if head is not None:
                    emb = head(net, emb)
                out[start + idx] = emb.float().cpu().numpy()
                bar.update(len(idx))
    bar.close()
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
    return out, n_tokens
