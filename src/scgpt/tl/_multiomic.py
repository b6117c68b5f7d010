"""MuData -> the cells x tokens AnnData a multi-omic scGPT model reads (used by :func:`scgpt.tl.integrate`).

The first modality (RNA) gives its highly variable genes that the model knows; every other modality gives
its features as tokens ``"<modality>:<feature>"`` (proteins: all of them; peaks: binarised, the most
variable kept within the token budget). The modalities' AnnData objects are only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._logging import logger
from ..data import GeneMatch, get_matrix, match_adata
from ..model import ScGPT, feature_token
from ._hvg import log1p_variance_rank

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def check_modalities(mdata: MuData, modalities: Sequence[str]) -> list[str]:
    """The modalities as a list, with clear errors for unknown names and cells not measured in all of them."""
    if isinstance(modalities, str) or len(modalities) < 2:
        raise ValueError(
            f"modalities={modalities!r}: name the RNA modality first, then at least one other, e.g. ('rna', 'prot')."
        )
    mods = list(modalities)
    rna = [m for m in mods[1:] if str(m).lower() in ("rna", "gex", "genes", "expression")]
    if rna:
        raise ValueError(
            f"modalities={tuple(modalities)!r}: the first modality is read as genes (the model's vocabulary) and "
            f"{rna[0]!r} is not first; name the RNA modality first, e.g. ({rna[0]!r}, {mods[0]!r})."
        )
    unknown = [m for m in mods if m not in mdata.mod]
    if unknown:
        raise KeyError(f"Modalities {unknown} are not in the MuData (modalities: {list(mdata.mod)}).")
    for m in mods:
        a = mdata.mod[m]
        if a.obs_names.has_duplicates:
            raise ValueError(f"Modality {m!r} has duplicated cell names; make them unique first.")
        present = mdata.obs_names.isin(a.obs_names)
        if not present.all() or a.n_obs != mdata.n_obs:
            n_missing = int((~present).sum()) + max(a.n_obs - int(present.sum()), 0)
            raise ValueError(
                f"Cells are not paired: {n_missing} of the MuData's {mdata.n_obs} cells are missing from or extra in "
                f"modality {m!r} ({a.n_obs} cells). A joint embedding needs every cell measured in every modality: "
                "keep the shared cells with muon.pp.intersect_obs(mdata) first."
            )
    return mods


def batch_values(mdata: MuData, batch_key: str) -> pd.Series:
    """``batch_key`` as a column of ``mdata.obs`` or ``"<modality>:<column>"``, in ``mdata.obs_names`` order.

    Columns are read where they are, never pulled with ``mdata.update()``.
    """
    if batch_key in mdata.obs:
        return mdata.obs[batch_key]
    mod, sep, column = batch_key.partition(":")
    if sep and mod in mdata.mod:
        obs = mdata.mod[mod].obs
        if column not in obs:
            raise KeyError(f"batch_key={batch_key!r}: {column!r} is not a column of mdata.mod[{mod!r}].obs.")
        return obs[column].reindex(mdata.obs_names)
    where = [m for m, a in mdata.mod.items() if batch_key in a.obs]
    hint = f"; it is in the obs of {where}: pass batch_key='{where[0]}:{batch_key}'" if where else ""
    raise KeyError(f"batch_key={batch_key!r} is not a column of mdata.obs{hint}.")


def _values(adata: AnnData, layer: str | None, cells: pd.Index) -> sp.csr_matrix:
    X = get_matrix(adata, layer if layer is not None and layer in adata.layers else None)
    X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
    order = adata.obs_names.get_indexer(cells)
    return X[order] if not np.array_equal(order, np.arange(adata.n_obs)) else X


def is_binary_modality(name: str, adata: AnnData) -> bool:
    """Chromatin accessibility: named ``atac``/``peaks`` or with ``feature_types`` "Peaks"."""
    if name.lower() in ("atac", "peaks", "chromatin"):
        return True
    types = adata.var.get("feature_types")
    return types is not None and len(types) > 0 and (types.astype(str).str.lower() == "peaks").all()


def joint_cells(
    mdata: MuData,
    model: ScGPT,
    modalities: list[str],
    *,
    tokens: Sequence[str] | None,
    rna_panel: np.ndarray | None,
    binary: Sequence[str],
    max_length: int,
    layer: str | None,
    gene_key: str | None,
    use_aliases: bool,
    obs: pd.DataFrame,
    organism: str = "human",
    orthologs: str = "one2one",
    match: GeneMatch | None = None,
) -> tuple[AnnData, dict[str, list[str]]]:
    """The cells x tokens AnnData of a MuData (counts) and the features per modality.

    ``tokens``: the token panel of a fine-tuned multi-omic model (features outside it are left out);
    ``None``: a new panel (``rna_panel`` columns of the RNA, every feature of the other modalities, the most
    variable ones when they exceed the token budget). ``match``: the RNA genes matched to the vocabulary
    already.
    """
    import anndata as ad

    first, others = modalities[0], modalities[1:]
    cells = mdata.obs_names
    rna = mdata.mod[first]
    if match is None:
        match = match_adata(
            rna, model.vocab, gene_key=gene_key, use_aliases=use_aliases, organism=organism, orthologs=orthologs,
            )  # fmt: skip
    keep = match.matched.copy()
    if tokens is not None:
        keep &= np.isin(match.ids, model.vocab.lookup(tokens))
    elif rna_panel is not None:
        panel_mask = np.zeros_like(keep)
        panel_mask[rna_panel] = True
        keep &= panel_mask
    cols = np.flatnonzero(keep)
    cols = cols[np.unique(match.ids[cols], return_index=True)[1]]  # one column per token
    cols.sort()
    if not len(cols):
        raise ValueError(f"Modality {first!r} has no gene in common with the model's gene panel.")
    blocks = [_values(rna, layer, cells)[:, cols]]
    names = list(model.vocab.lookup_tokens(match.ids[cols]))
    features: dict[str, list[str]] = {}
    budget = max_length - 1 - len(cols)
    for m in others:
        a = mdata.mod[m]
        feats = np.asarray(a.var_names.astype(str))
        X = _values(a, None, cells)
        toks = np.array([feature_token(m, f) for f in feats], dtype=object)
        if tokens is not None:
            idx = np.flatnonzero(np.isin(toks, np.asarray(list(tokens), dtype=object)))
        else:
            idx = np.arange(len(feats))
            share = max(budget // max(len(others) - others.index(m), 1), 0)
            if len(idx) > share:
                idx = log1p_variance_rank(X, share, binary=m in binary)
                logger.info(f"    {m}: the {share} most variable of {len(feats)} features fit the token budget")
        if not len(idx):
            raise ValueError(
                f"Modality {m!r} has no feature in common with the model ({len(feats)} features, e.g. "
                f"{list(feats[:3])}); the model was fine-tuned on other features."
            )
        budget -= len(idx)
        X = X[:, idx]
        blocks.append(X)  # counts: the model's collator puts every open peak of a binary modality in the top bin
        names += list(toks[idx])
        features[m] = list(feats[idx])
    joint = ad.AnnData(
        X=sp.hstack(blocks, format="csr", dtype=np.float32), obs=obs.copy(), var=pd.DataFrame(index=names)
    )
    joint.obs_names = cells
    return joint, features
