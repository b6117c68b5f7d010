"""Data setup of :class:`~scgpt.model.ScGPT` (scvi-tools' ``setup_anndata``) and the coding of labels and batches.

:func:`label_codes` and :func:`batch_codes` turn an ``obs`` column into integer codes with clear errors
for missing values; fine-tuning, :func:`scgpt.tl.annotate` and reference indexes use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._docs import doc_params
from .._logging import named, warn
from ..data import check_adata, missing_values
from ..data._genes import gene_names
from ..data._orthologs import resolve_organism

if TYPE_CHECKING:
    from anndata import AnnData

SETUP_KEY = "_scgpt_setup"


def _obs_column(adata: AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs:
        raise KeyError(f"{what}={key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)}).")
    return adata.obs[key]


def _categorical(values: pd.Series) -> pd.Categorical:
    """String categories of a column: a categorical keeps its order (unused categories dropped), else sorted."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        order = [str(c) for c in values.cat.categories]
        return pd.Categorical(values.astype(str), categories=order)
    return pd.Categorical(values.astype(str))


def label_codes(adata: AnnData, labels_key: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(keep, codes, categories)`` of a label column: unlabelled cells are left out with a warning.

    Raises when no cell or a single cell type is labelled; warns for cell types with a single cell.
    """
    values = _obs_column(adata, labels_key, "labels_key")
    missing = missing_values(values)
    if missing.all():
        raise ValueError(f"obs[{labels_key!r}] holds no labels (all missing).")
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        warn(f"{int(missing.sum())} cells have no label in {labels_key!r} (first: {first!r}); they are left out.")
    cats = _categorical(values[~missing])
    if len(cats.categories) < 2:
        raise ValueError(
            f"obs[{labels_key!r}] has a single cell type ({cats.categories[0]!r}); a classifier needs two."
        )
    counts = pd.Series(cats).value_counts()
    rare = counts[counts < 2]
    if len(rare):
        warn(f"{len(rare)} cell types have a single cell ({list(rare.index[:5])}); they are kept.")
    return ~missing, np.asarray(cats.codes, dtype=np.int64), [str(c) for c in cats.categories]


def batch_codes(adata: AnnData, batch_key: str) -> tuple[np.ndarray, list[str]]:
    """``(codes, categories)`` of a batch column; missing batches are an error naming the first cell."""
    values = _obs_column(adata, batch_key, "batch_key")
    missing = missing_values(values)
    if missing.any():
        first = adata.obs_names[np.flatnonzero(missing)[0]]
        raise ValueError(
            f"obs[{batch_key!r}] has {int(missing.sum())} cells without a batch (first: {first!r}); give every cell a "
            "batch or drop those cells."
        )
    cats = _categorical(values)
    return np.asarray(cats.codes, dtype=np.int64), list(cats.categories)


class SetupMixin:
    """``setup_anndata`` and ``view_anndata_setup`` for :class:`~scgpt.model.ScGPT`."""

    _managers: dict[str, Any] = {}

    # ------------------------------------------------------------------ data setup
    @classmethod
    @doc_params()
    @named()
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_key: str | None = None,
        organism: str = "human",
        orthologs: str = "one2one",
    ) -> None:
        """Register the fields of an AnnData for :meth:`train`.

        Uses scvi-tools' :class:`~scvi.data.AnnDataManager` (count layer, categorical batch and
        label fields). The model's gene identity is its vocabulary: genes are matched to it by name
        (``var_names`` or ``var[gene_key]``, plus Ensembl ids and old symbols), not by position.
        :meth:`finetune` needs no setup.

        Parameters
        ----------
        adata
            Cells x genes with raw counts.
        layer
            Layer with raw counts; ``None`` uses ``adata.X``.
        batch_key
            ``obs`` column with batches (for DSBN, batch conditioning and the batch discriminator).
        labels_key
            ``obs`` column with cell-type labels (for the classification objective).
        gene_key
            ``var`` column with gene names; ``None`` uses ``var_names``.
        {organism}

        Returns
        -------
        ``None``. Sets ``adata.obs['_scvi_batch']``, ``adata.obs['_scvi_labels']``, ``adata.uns['_scvi_uuid']``,
        ``adata.uns['_scvi_manager_uuid']`` (scvi-tools' registry) and ``adata.uns['_scgpt_setup']``.
        """
        from scvi.data import AnnDataManager, fields

        check_adata(adata)
        gene_names(adata, gene_key)  # clear errors for missing keys / duplicated names
        if isinstance(organism, str):
            resolve_organism(organism)  # a clear error for an unknown species, before any work
        for key, what in ((batch_key, "batch_key"), (labels_key, "labels_key")):
            if key is not None:
                n_na = int(missing_values(_obs_column(adata, key, what)).sum())
                if n_na:
                    raise ValueError(
                        f"adata.obs[{key!r}] has {n_na} missing values; drop or fill those cells before setup_anndata "
                        "(model.finetune leaves unlabelled cells out itself)."
                    )
        setup_args = {"layer": layer, "batch_key": batch_key, "labels_key": labels_key, "gene_key": gene_key}
        if organism != "human" or orthologs != "one2one":  # human setups stay as they were
            setup_args.update(organism=organism, orthologs=orthologs)
        manager = AnnDataManager(
            fields=[
                fields.LayerField("X", layer, is_count_data=True),
                fields.CategoricalObsField("batch", batch_key),
                fields.CategoricalObsField("labels", labels_key),
            ],
            setup_method_args={"model_name": "ScGPT", "setup_args": setup_args},
        )
        manager.register_fields(adata)
        cls._managers[manager.adata_uuid] = manager
        adata.uns[SETUP_KEY] = {k: v for k, v in setup_args.items() if v is not None}

    @classmethod
    def _manager(cls, adata: AnnData):
        uuid = adata.uns.get("_scvi_uuid")
        if SETUP_KEY not in adata.uns or uuid not in cls._managers:
            raise ValueError("This AnnData is not set up: call scgpt.model.ScGPT.setup_anndata(adata, ...) first.")
        return cls._managers[uuid]

    def view_anndata_setup(self, adata: AnnData | None = None) -> None:
        """Print the registered fields and categories of an AnnData (default: the bound one)."""
        self._manager(self._resolve_adata(adata)).view_registry()


def _categories(manager, key: str) -> list[str] | None:
    setup = manager.registry["setup_args"]
    if setup.get(f"{key}_key" if key == "batch" else "labels_key") is None:
        return None
    return [str(c) for c in manager.get_state_registry(key)["categorical_mapping"]]


def _registered_codes(manager, adata: AnnData, key: str) -> np.ndarray:
    """Integer codes of a registered field read from ``adata`` itself.

    A subset or copy of a set-up AnnData shares its registry (same ``_scvi_uuid``), so the codes must
    come from the cells passed in, not from the AnnData that was registered.
    """
    field = manager.data_registry[key]
    return np.asarray(getattr(adata, field.attr_name)[field.attr_key]).ravel().astype(np.int64)
