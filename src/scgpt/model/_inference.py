"""Outputs of :class:`~scgpt.model.ScGPT` on cells and genes: the public door from the tools into the model.

Every method is a short caller of the inference engine (:func:`~scgpt.model.run_inference`) and returns
arrays or a small dataclass; :mod:`scgpt.tl` builds AnnData fields from them. A model fine-tuned for a
task reads cells the way it was trained (:attr:`Task.inference <scgpt.model.Task.inference>`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from .._docs import doc_params
from .._logging import named
from ._engine import CellRows, GenePairs, InferenceResult, check_weights, rank_normalize, run_inference
from ._tasks import TASKS

if TYPE_CHECKING:
    from anndata import AnnData

    from ._perturbation import PerturbationPrediction

doc_max_length_auto = """\
max_length
    Tokens per cell including ``<cls>``; ``None``: 1,200 (the official default), or the fine-tuning length
    for a model fine-tuned for integration. Cells expressing more genes keep a seeded random subset."""


@dataclass
class AttentionMaps:
    """What :meth:`ScGPT.get_attention <scgpt.model.ScGPT.get_attention>` returns.

    Attributes
    ----------
    mean
        ``(n_groups, n_vars, n_vars)`` float64: the mean attention map of each group of cells over the genes of the
        input (row = query gene, column = key gene); NaN where two genes were never tokens of the same cell
        (genes outside the vocabulary, unexpressed genes without ``include_zero_genes``).
    counts
        Same shape, int64: the cells in which both genes were tokens.
    n_cells
        ``(n_groups,)`` cells per group.
    """

    mean: np.ndarray
    counts: np.ndarray
    n_cells: np.ndarray


class InferenceMixin:
    """The outputs of :class:`~scgpt.model.ScGPT`: embeddings, probabilities, attention, perturbation responses."""

    def _task_inference(self, *, latent: bool = False) -> dict[str, Any]:
        """Engine options of the task this model was fine-tuned for (``{}`` for a pretrained model)."""
        task = TASKS.get(self.registry_.get("task"))
        if task is None or (latent and not task.latent):
            return {}
        return task.inference_options(self.registry_)

    @doc_params(max_length=doc_max_length_auto)
    @named()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        *,
        gene_key: str | None = None,
        use_aliases: bool = True,
        layer: str | None = None,
        batch_key: str | None = None,
        max_length: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool | None = None,
        organism: str = "human",
        orthologs: str = "one2one",
        devices: int | str | list[int] | None = None,
        num_nodes: int = 1,
        strategy: str | Any | None = None,
        return_info: bool = False,
    ) -> np.ndarray | InferenceResult:
        """Cell embeddings, ``(n_obs, d_model)`` float32, L2-normalised (see :func:`scgpt.tl.embed`).

        A pretrained model gives the zero-shot embedding (the official ``embed_data``); a model fine-tuned for
        integration or joint multi-omic embedding reads cells as in its fine-tuning (its gene panel, unexpressed
        genes included, ``<cls>`` value 0, its ``max_length``).

        Parameters
        ----------
        adata
            Cells to embed (raw counts); default: the bound AnnData.
        {gene_key}
        {use_aliases}
        {layer}
        {batch_key}
        {max_length}
        {batch_size}
        {seed}
        {device}
        {dtype}
        {progress}
        {organism}
        {distributed}
        return_info
            Return the whole :class:`~scgpt.model.InferenceResult` (embeddings in ``output``, the gene match,
            tokens per cell, precision) instead of the embeddings alone.

        Returns
        -------
        The embeddings, in the order of ``adata.obs_names`` (on every process when ``devices`` is given).
        """
        adata = self._resolve_adata(adata)
        options = self._task_inference(latent=True)
        if max_length is not None:
            options["max_length"] = max_length
        options.setdefault("max_length", 1200)
        common = {
            "gene_key": gene_key, "use_aliases": use_aliases, "layer": layer, "batch_key": batch_key,
            "batch_size": batch_size, "seed": seed, "device": device, "dtype": dtype, "progress": progress,
            "organism": organism, "orthologs": orthologs,
        }  # fmt: skip
        if devices is not None:
            from ._distributed import run_sharded

            res = run_sharded(
                self, adata, devices=devices, num_nodes=num_nodes, strategy=strategy, **common, **options,
                )  # fmt: skip
        else:
            res = run_inference(self, adata, CellRows(normalize=True), **common, **options)
        return res if return_info else res.output

    @doc_params()
    @named()
    def predict_proba(
        self,
        adata: AnnData | None = None,
        *,
        gene_key: str | None = None,
        use_aliases: bool = True,
        layer: str | None = None,
        batch_key: str | None = None,
        max_length: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool | None = None,
        organism: str = "human",
        orthologs: str = "one2one",
    ) -> pd.DataFrame:
        """Cell-type probabilities of a classifier fine-tuned with ``finetune("annotation", ...)``.

        Cells are tokenised as in the annotation fine-tuning (``<cls>`` value 0, the fine-tuning ``max_length``).

        Parameters
        ----------
        adata
            Cells to classify (raw counts); default: the bound AnnData.
        {gene_key}
        {use_aliases}
        {layer}
        {batch_key}
        max_length
            Tokens per cell including ``<cls>``; ``None`` uses the length the classifier was fine-tuned with.
        {batch_size}
        {seed}
        {device}
        {dtype}
        {progress}
        {organism}

        Returns
        -------
        DataFrame cells x classes (``obs_names`` x the classifier's categories, in output order); rows sum to 1.
        """
        if not self.config.n_cls or "label_categories" not in self.registry_:
            raise ValueError(
                "This model is not a fine-tuned cell-type classifier: fine-tune one with "
                "model.finetune('annotation', reference, labels_key=...), or use tl.annotate(method='knn')."
            )
        adata = self._resolve_adata(adata)
        options = TASKS["annotation"].inference_options(self.registry_)
        if max_length is not None:
            options["max_length"] = max_length
        probs = run_inference(
            self,
            adata,
            CellRows(
                lambda net, emb: torch.softmax(net.cls_decoder(emb).float(), -1),
                width=self.config.n_cls,
                normalize=False,
            ),
            gene_key=gene_key,
            use_aliases=use_aliases,
            layer=layer,
            batch_key=batch_key,
            batch_size=batch_size,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=progress,
            organism=organism,
            orthologs=orthologs,
            **options,
        ).output
        return pd.DataFrame(probs, index=adata.obs_names.copy(), columns=pd.Index(self.registry_["label_categories"]))

    def get_gene_embeddings(self, genes: list[str] | pd.Index | None = None) -> pd.DataFrame:
        """Gene-token embeddings (embedding + LayerNorm, as the official GRN tutorial uses).

        Parameters
        ----------
        genes
            Tokens to return (unknown ones raise); ``None`` returns every gene token (no specials).

        Returns
        -------
        DataFrame, genes x ``d_model``.
        """
        if genes is None:
            tokens = [t for t in self.vocab if not (t.startswith("<") and t.endswith(">"))]
        else:
            tokens = [str(g) for g in genes]
            missing = [t for t in tokens if t not in self.vocab]
            if missing:
                raise KeyError(f"{len(missing)} genes are not in the vocabulary, e.g. {missing[:5]}.")
        check_weights(self.net, "get_gene_embeddings")
        ids = torch.as_tensor(self.vocab.lookup(tokens), device=self.device)
        with torch.inference_mode():
            parts = [self.net.encoder(ids[i : i + 8192]) for i in range(0, len(ids), 8192)]
        values = torch.cat(parts).float().cpu().numpy() if parts else np.zeros((0, self.config.d_model), np.float32)
        return pd.DataFrame(values, index=pd.Index(tokens, name="gene"))

    @doc_params()
    @named()
    def get_attention(
        self,
        adata: AnnData | None = None,
        *,
        layers: Sequence[int] = (-1,),
        heads: Literal["mean"] | Sequence[int] = "mean",
        softmax: bool = False,
        rank_normalize: bool = True,
        groups: np.ndarray | None = None,
        include_zero_genes: bool = True,
        tokens: Sequence[str] | None = None,
        gene_key: str | None = None,
        use_aliases: bool = True,
        layer: str | None = None,
        batch_key: str | None = None,
        max_length: int | None = None,
        batch_size: int = 16,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        progress: bool | None = None,
        organism: str = "human",
        orthologs: str = "one2one",
    ) -> AttentionMaps:
        """Mean attention maps between the genes of ``adata``, per group of cells (the official attention GRN).

        For each cell, the attention of the chosen ``layers`` (averaged) and ``heads`` between its gene tokens
        (raw ``q @ k.T`` scores by default, as the official ``Tutorial_Attention_GRN``), rank-normalised per cell
        and head by rows then columns (``rank_normalize``), averaged over the heads, then over the cells of each
        group.

        Parameters
        ----------
        adata
            Cells x genes (raw counts), subset to the genes of the network; default: the bound AnnData.
        layers
            Layer indices (negative counts from the end).
        heads
            ``"mean"`` over all heads, or the head indices to average.
        softmax
            Softmax attention weights instead of raw ``q @ k.T`` scores.
        rank_normalize
            The official rank normalisation per cell and head (:func:`~scgpt.model.rank_normalize`).
        groups
            Group code of each cell (``-1``: left out); ``None``: one group.
        include_zero_genes
            Also feed the genes a cell does not express (value 0), as the official tutorial.
        tokens
            Use only the genes matched to these vocabulary tokens; ``None``: every matched gene.
        {gene_key}
        {use_aliases}
        {layer}
        {batch_key}
        max_length
            Tokens per cell including ``<cls>``; ``None``: every gene of ``adata`` plus ``<cls>``.
        batch_size
            Cells per forward pass, an upper bound.
        {seed}
        {device}
        {dtype}
        {progress}
        {organism}

        Returns
        -------
        :class:`~scgpt.model.AttentionMaps` (``mean``, ``counts``, ``n_cells``).
        """
        adata = self._resolve_adata(adata)
        res = run_inference(
            self,
            adata,
            GenePairs(
                layers=layers,
                heads=heads,
                softmax=softmax,
                groups=groups,
                per_cell=rank_normalize_maps if rank_normalize else None,
            ),
            gene_key=gene_key,
            use_aliases=use_aliases,
            layer=layer,
            batch_key=batch_key,
            max_length=adata.n_vars + 1 if max_length is None else max_length,
            batch_size=batch_size,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=progress,
            include_zero_genes=include_zero_genes,
            tokens=tokens,
            organism=organism,
            orthologs=orthologs,
        )
        out = res.output
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = out["sums"] / out["counts"]
        mean[out["counts"] == 0] = np.nan
        return AttentionMaps(mean, out["counts"], out["n_cells"])

    @named()
    def predict_perturbation(
        self,
        adata: AnnData,
        perturbations: str | Sequence[str] | Sequence[Sequence[str]],
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
        """The mean expression profile after each perturbation, from a model fine-tuned for perturbation.

        The arrays behind :func:`scgpt.tl.predict_perturbation` (which documents the parameters and turns the
        result into an AnnData scored by :func:`scgpt.tl.evaluate_perturbation`).

        Returns
        -------
        :class:`~scgpt.model.PerturbationPrediction`: the labels, the ``(n_perturbations, n_vars)`` predicted
        mean profiles (log1p(normalize_total) space), the control mean, which genes are predicted, the target
        genes of each label, the targets never perturbed in fine-tuning, and how the prediction was made.
        """
        from ._perturbation import predict_perturbation

        return predict_perturbation(
            self,
            adata,
            perturbations,
            perturbation_key=perturbation_key,
            control=control,
            n_control_cells=n_control_cells,
            seed=seed,
            gene_chunk=gene_chunk,
            layer=layer,
            gene_key=gene_key,
            use_aliases=use_aliases,
            organism=organism,
            orthologs=orthologs,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            progress=progress,
        )

    def _resolve_adata(self, adata: AnnData | None) -> AnnData:
        if adata is None:
            adata = self.adata
        if adata is None:
            raise ValueError("Pass `adata` (no AnnData is bound to this model).")
        return adata


rank_normalize_maps = rank_normalize
"""The per-cell transform of :meth:`InferenceMixin.get_attention` (the parameter of the same name shadows it)."""
