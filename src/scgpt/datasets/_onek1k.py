"""PBMCs of 30 OneK1K donors, shipped with the package."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

#: Ten donors held out as the query of the annotation benchmark and tutorial (a seeded draw, fixed here);
#: the bundled demo model never saw their cells in pretraining.
ONEK1K_QUERY_DONORS = ("SAMP4", "SAMP7", "SAMP9", "SAMP14", "SAMP15", "SAMP22", "SAMP27", "SAMP30", "SAMP33", "SAMP38")


def onek1k() -> AnnData:
    """5,734 PBMCs of 30 donors x 1,000 genes, raw UMI counts, 4 labelled cell types.

    A subset of the OneK1K cohort (Yazar et al., *Science* 2022) distributed with scDesignPop
    (github.com/chrisycd/scDesignPop, ``data/example_sce.rda``, MIT licence); see
    ``scgpt/datasets/_resources/NOTICE.md``. Genes are Ensembl ids (they match the scGPT vocabulary
    through the bundled id table). :data:`ONEK1K_QUERY_DONORS` names the ten donors held out in the
    annotation benchmark and tutorial.

    Returns
    -------
    AnnData with counts in ``X`` (CSR, float32), ``obs['cell_type']`` (``cd4nc``, ``bmem``, ``monoc``,
    ``mononc``), ``obs['indiv']`` (donor), ``obs['sex']`` and ``obs['age']``.
    """
    import anndata as ad

    ref = resources.files("scgpt.datasets").joinpath("_resources/onek1k_pbmc_30donors.h5ad")
    with resources.as_file(ref) as path:
        return ad.read_h5ad(path)
