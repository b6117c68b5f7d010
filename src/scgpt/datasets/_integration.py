"""Real PBMC data for batch and multi-omic integration, shipped with the package."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData


def pbmc_two_sources() -> AnnData:
    """1,202 PBMCs from two real sources x 764 shared genes, raw UMI counts, 5 coarse cell types.

    Two independent PBMC data sets, measured in different labs with different protocols, on the genes
    both have: a real technical batch effect with cell types shared across the batches.

    - ``pbmc68k_reduced`` (687 cells): scanpy's bundled ``pbmc68k_reduced`` (10x Genomics PBMC 68k;
      scanpy, BSD-3 licence) with counts recovered exactly (:func:`scgpt.datasets.pbmc68k_counts`). Its
      annotated ``bulk_labels`` are mapped to coarse classes: the five CD4/CD8 T labels to
      ``T cell``, ``CD56+ NK`` to ``NK cell``, ``CD19+ B`` to ``B cell``, ``CD14+ Monocyte`` to
      ``CD14 monocyte``, ``Dendritic`` to ``dendritic cell``; the 13 ``CD34+`` cells are dropped.
    - ``celltypist_sample`` (515 of 559 cells): the example matrix of celltypist 1.7.1
      (``celltypist/data/samples/sample_cell_by_gene.csv``; Teichmann Lab, MIT licence), unlabelled.
      Labels are **derived from marker genes**, on all 32,786 genes before subsetting: per cell,
      ``log1p(counts / total * 1e4)``; the score of a class is the mean over its markers (T: CD3D,
      CD3E, CD2, IL7R; NK: NKG7, GNLY, KLRD1, minus the mean of CD3D/CD3E/CD3G; B: MS4A1, CD79A, CD79B;
      CD14 monocyte: CD14, LYZ, S100A8, S100A9, FCN1; dendritic: FCER1A, CST3, CLEC10A). Each cell
      gets the best-scoring class; the 44 cells whose best score is below 0.75 or within 0.25 of the
      second best are dropped. No cell of this sample expresses FCER1A, CLEC10A or CD1C, so none is
      labelled ``dendritic cell``.

    Cells per class (pbmc68k_reduced / celltypist_sample): T cell 192 / 71, NK cell 31 / 50, B cell
    95 / 14, CD14 monocyte 129 / 380, dendritic cell 240 / 0. Marker-derived labels are an
    approximation (no ground truth); ``obs['label_origin']`` says which labels are which. Built by
    ``scripts/build_integration_data.py``; attribution in ``scgpt/datasets/_resources/NOTICE.md``.

    Returns
    -------
    AnnData with counts in ``X`` (CSR, float32, integer values) and ``obs`` columns ``source``
    (``pbmc68k_reduced``, ``celltypist_sample``: the batch), ``cell_type`` (``T cell``, ``NK cell``,
    ``B cell``, ``CD14 monocyte``, ``dendritic cell``), ``label_origin`` (``annotated``,
    ``marker-derived``) and ``original_label`` (pbmc68k ``bulk_labels``; missing for celltypist
    cells). Cell names are prefixed by their source. ``uns['cell_type_markers']`` and
    ``uns['marker_label_thresholds']`` record the marker labelling. A new object on each call.

    Examples
    --------
    >>> import scgpt
    >>> adata = scgpt.datasets.pbmc_two_sources()
    >>> adata.shape
    (1202, 764)
    >>> adata.obs["source"].value_counts().to_dict()
    {'pbmc68k_reduced': 687, 'celltypist_sample': 515}
    """
    import anndata as ad

    ref = resources.files("scgpt.datasets").joinpath("_resources/pbmc_two_sources.h5ad")
    with resources.as_file(ref) as path:
        return ad.read_h5ad(path)


def pbmc_cite_seq() -> MuData:
    """400 PBMCs of two real 10x CITE-seq runs: RNA (14,520 genes) and 14 surface proteins, raw counts.

    200 cells each of the 10x Genomics ``pbmc_5k_protein_v3`` and ``pbmc_10k_protein_v3`` runs
    (TotalSeq-B antibodies), as distributed in the test data of scvi-tools
    (github.com/scverse/scvi-tools, ``tests/test_data/``, BSD-3 licence). The two runs are two batches.
    RNA is restricted to the genes both runs have, minus those with no count in the 400 cells;
    proteins to the 14 antibodies both panels have (CD3, CD4, CD8a, CD14, CD15, CD16, CD19, CD25,
    CD45RA, CD45RO, CD56, CD127, PD-1, TIGIT; names without the ``_TotalSeqB`` suffix).

    ``obs['protein_label']`` is **derived from the proteins** (no ground truth): CLR per cell,
    ``log1p(x) - mean(log1p(x))`` over the cell's 14 proteins (kept in ``mdata['prot'].layers['clr']``),
    then gates at the deepest valley of a Gaussian density (bandwidth 0.25) of each protein's CLR
    values, pooled over both runs, between 0 and 2.5: CD3 > 1.18, CD4 > 0.77, CD8a > 1.96,
    CD14 > 1.88, CD19 > 1.07, CD56 > 1.26 (also in ``uns['protein_gates']``). ``CD4 T`` = CD3+ CD4+
    CD8a-, ``CD8 T`` = CD3+ CD8a+ CD4-; among CD3- cells positive for exactly one of CD14, CD19, CD56:
    ``CD14 monocyte``, ``B cell``, ``NK cell``; everything else ``other``. Cells per label
    (pbmc5k / pbmc10k): CD4 T 88 / 72, CD8 T 14 / 29, CD14 monocyte 56 / 52, B cell 14 / 15,
    NK cell 12 / 22, other 16 / 10.

    Four protein names equal gene names (CD4, CD14, CD19, TIGIT), so the global ``var_names`` are not
    unique: index features within a modality (``mdata['prot'][:, 'CD4']``). Built by
    ``scripts/build_integration_data.py``; attribution in ``scgpt/datasets/_resources/NOTICE.md``.

    Returns
    -------
    MuData with modalities ``rna`` (CSR float32 counts) and ``prot`` (dense float32 counts, layer
    ``clr``), paired cell by cell (same ``obs_names`` in the same order, prefixed by run).
    ``mdata.obs`` and each modality's ``obs`` hold ``run`` (``pbmc5k``, ``pbmc10k``) and
    ``protein_label`` (``CD4 T``, ``CD8 T``, ``CD14 monocyte``, ``B cell``, ``NK cell``, ``other``).
    A new object on each call.

    Examples
    --------
    >>> import scgpt
    >>> mdata = scgpt.datasets.pbmc_cite_seq()
    >>> mdata["rna"].shape, mdata["prot"].shape
    ((400, 14520), (400, 14))
    >>> int((mdata.obs["protein_label"] == "CD4 T").sum())
    160
    """
    import mudata as md

    ref = resources.files("scgpt.datasets").joinpath("_resources/pbmc_cite_seq.h5mu")
    with resources.as_file(ref) as path, _no_pull(md), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="var_names are not unique", category=UserWarning)
        return md.read_h5mu(path)


def _no_pull(md):
    """Read the file's global ``obs`` as stored, without ``rna:run``-style copies (mudata < 0.4 default)."""
    try:
        return md.set_options(pull_on_update=False)
    except ValueError:  # the option is gone (mudata >= 0.4 no longer pulls on update)
        return nullcontext()
