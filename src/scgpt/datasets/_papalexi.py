"""A real CRISPR knockout screen shipped with the package: Papalexi et al. 2021, THP-1 cells."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

_FILE = "_resources/papalexi2021_thp1.h5ad"


def papalexi2021(*, drop_unassigned: bool = True) -> AnnData:
    """15,429 THP-1 cells of a real pooled CRISPR knockout screen (ECCITE-seq), raw counts over 299 genes.

    Papalexi et al., *Nature Genetics* 2021 (replicates 1 and 2): THP-1 cells stimulated with IFN-γ, each
    carrying a guide against one of 26 genes of the PD-L1 regulation pathways (or a non-targeting guide),
    with RNA measured on a targeted panel of 299 genes. Taken from the ``sceptredata`` example data
    (github.com/Katsevich-Lab/sceptredata, ``data/lowmoi_example_data.rda``, MIT licence); attribution in
    ``scgpt/datasets/_resources/NOTICE.md``.

    ``obs['perturbation']`` holds the knocked-out gene, ``"control"`` (non-targeting guide) or
    ``"unassigned"`` (the guide call was ambiguous: the top guide had fewer than 5 UMIs or under 80 % of the
    cell's guide UMIs). Of the 26 targets, 25 have cells (CD274 has none), and only 9 are among the 299
    measured genes (CMTM6, IFNGR2, JAK2, NFKBIA, STAT1, STAT2, STAT3, TNFRSF14, UBE2L6): the others change
    the expression of measured genes without being measured themselves.

    Parameters
    ----------
    drop_unassigned
        Leave out the 3,996 cells without a confident guide call (``"unassigned"``).

    Returns
    -------
    AnnData with raw UMI counts in ``X`` (CSR, float32), ``obs`` columns ``perturbation``, ``bio_rep``
    (``rep_1``, ``rep_2``), ``grna_top``, ``grna_top_umi``, ``grna_total_umi``, guide counts in
    ``obsm['grna_counts']`` and the guide → target map in ``uns['grna_target']``. A new object on each call.

    Examples
    --------
    >>> import scgpt
    >>> screen = scgpt.datasets.papalexi2021()
    >>> screen.shape
    (11433, 299)
    >>> int((screen.obs["perturbation"] == "control").sum())
    1323
    """
    import anndata as ad

    with resources.as_file(resources.files("scgpt.datasets").joinpath(_FILE)) as path:
        adata = ad.read_h5ad(path)
    if drop_unassigned:
        adata = adata[adata.obs["perturbation"] != "unassigned"].copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).astype("category")
    return adata
