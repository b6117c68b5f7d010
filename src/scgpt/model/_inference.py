"""Outputs of :class:`~scgpt.model.ScGPT` on cells and genes: short callers of the inference engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .._docs import doc_params
from ._distributed import doc_distributed, run_sharded
from ._engine import CellRows, inference_options, run_inference

if TYPE_CHECKING:
    from anndata import AnnData


class InferenceMixin:
    """``get_latent_representation``, ``predict_proba`` and ``get_gene_embeddings`` for :class:`~scgpt.model.ScGPT`."""

    @doc_params(distributed=doc_distributed)
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        *,
        gene_key: str | None = None,
        use_aliases: bool = True,
        layer: str | None = None,
        batch_key: str | None = None,
        max_length: int = 1200,
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
    ) -> np.ndarray:
        """Zero-shot cell embeddings, ``(n_obs, d_model)`` float32, L2-normalised (see :func:`scgpt.tl.embed`).

        Parameters
        ----------
        adata
            Cells to embed (raw counts); default: the bound AnnData.
        {inference}
        {organism}
        {distributed}

        Returns
        -------
        The embeddings, in the order of ``adata.obs_names`` (on every process when ``devices`` is given).
        """
        adata = self._resolve_adata(adata)
        if devices is not None:
            return run_sharded(
                self,
                adata,
                devices=devices,
                num_nodes=num_nodes,
                strategy=strategy,
                **inference_options(locals()),
                organism=organism,
                orthologs=orthologs,
                fn="get_latent_representation",
            ).output
        return run_inference(
            self,
            adata,
            CellRows(normalize=True),
            **inference_options(locals()),
            organism=organism,
            orthologs=orthologs,
            fn="get_latent_representation",
        ).output

    @doc_params()
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
        if max_length is None:
            max_length = int(self.registry_.get("last_recipe", {}).get("max_length", 3001))
        probs = run_inference(
            self,
            adata,
            CellRows(
                lambda net, emb: torch.softmax(net.cls_decoder(emb).float(), -1),
                width=self.config.n_cls,
                normalize=False,
            ),
            **inference_options(locals()),
            cls_value=0.0,
            fn="predict_proba",
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
        ids = torch.as_tensor(self.vocab.lookup(tokens), device=self.device)
        with torch.inference_mode():
            parts = [self.net.encoder(ids[i : i + 8192]) for i in range(0, len(ids), 8192)]
        values = torch.cat(parts).float().cpu().numpy() if parts else np.zeros((0, self.config.d_model), np.float32)
        return pd.DataFrame(values, index=pd.Index(tokens, name="gene"))

    def _resolve_adata(self, adata: AnnData | None) -> AnnData:
        if adata is None:
            adata = self.adata
        if adata is None:
            raise ValueError("Pass `adata` (no AnnData is bound to this model).")
        return adata
