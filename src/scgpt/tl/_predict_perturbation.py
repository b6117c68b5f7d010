"""``scgpt.tl.predict_perturbation``: mean expression after a perturbation, predicted by a fine-tuned scGPT model."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._docs import doc_params
from .._face import provenance
from .._logging import logger, named, warn
from ..model import ScGPT, resolve_model
from ._perturbation_baselines import prediction_anndata

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

COLLAPSE_PEARSON = 0.99
CHUNK_NOTE = (
    "Genes beyond gene_chunk tokens are run in chunks, each with the target genes: genes of different chunks do not "
    "attend to each other (the official model runs the whole panel as one sequence). With one chunk the run is exact."
)
OUTSIDE_VOCAB_NOTE = "Genes outside the model's vocabulary are not predicted: their value is the control mean."


def _collapsed_pairs(delta: np.ndarray, names: list[str]) -> tuple[list[tuple[str, str, float]], float | None]:
    """Pairs of perturbations whose predicted deltas correlate above :data:`COLLAPSE_PEARSON`, and the highest r."""
    if len(names) < 2 or delta.shape[1] < 2:
        return [], None
    centred = delta - delta.mean(1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    ok = norm > 0
    r = np.full((len(names), len(names)), np.nan)
    r[np.ix_(ok, ok)] = (centred[ok] @ centred[ok].T) / np.outer(norm[ok], norm[ok])
    iu = np.triu_indices(len(names), 1)
    values = r[iu]
    pairs = [(names[i], names[j], float(v)) for i, j, v in zip(*iu, values) if v > COLLAPSE_PEARSON]
    finite = values[np.isfinite(values)]
    return pairs, float(finite.max()) if len(finite) else None


@doc_params()
@named()
def predict_perturbation(
    adata: AnnData,
    model: ScGPT | str | os.PathLike | None,
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
) -> AnnData:
    """Predict the mean expression profile after each perturbation with a model fine-tuned for perturbation.

    Each requested perturbation is predicted from the same seeded sample of control cells of ``adata``:
    every control cell's log1p(normalize_total(counts, 1e4)) values enter with the target gene(s) flagged
    (a target in the vocabulary but not measured enters as an extra token with value 0), and the
    predictions are averaged over the cells (the official ``pred_perturb``). The result has the format of
    :func:`scgpt.tl.perturbation_baseline`, so :func:`scgpt.tl.evaluate_perturbation` scores both alike.

    Parameters
    ----------
    adata
        Cells with raw counts (or log1p data marked by ``uns["log1p"]``); its control cells are the inputs and
        its genes the output columns. Other cells are not used.
    {model}
        It must be fine-tuned with ``model.finetune("perturbation", ...)`` (or be an official perturbation model).
    perturbations
        Labels (``"JAK2"``, ``"JAK2+STAT1"``) or gene lists (``["JAK2", "STAT1"]``); they need not occur in
        ``adata``. Every target gene must be in the model's vocabulary.
    perturbation_key
        ``obs`` column with the perturbation labels; ``None``: the one the model was fine-tuned with
        (default ``"perturbation"``).
    control
        Label of control cells; ``None``: the model's (default ``"control"``).
    n_control_cells
        Control cells to predict from (a seeded sample; all when there are fewer).
    seed
        Seed of the control-cell sample and of the gene chunks.
    gene_chunk
        Tokens per sequence; ``None``: the fine-tuning ``max_length`` (1536 by default). A longer panel is
        split in chunks of this many tokens, the target genes in every chunk, so a 20k-gene panel runs in
        bounded memory; genes of different chunks then do not attend to each other (an approximation of the
        official full-sequence run). When all genes fit, the run is one full sequence.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    {gene_key}
    {use_aliases}
    {organism}
    {batch_size}
    {device}
    {dtype}
    {progress}

    Returns
    -------
    AnnData, one row per requested perturbation (``obs_names`` as given; gene lists joined by ``"+"``), genes
    = ``adata.var_names``: ``X`` = predicted mean profile in log1p(normalize_total(counts, 1e4)) space,
    ``layers["delta"]`` = prediction minus the mean of all control cells of ``adata`` (``var["control_mean"]``),
    ``var["predicted"]`` (``False`` for genes outside the model's vocabulary, whose value is the control mean),
    ``obs["n_targets"]``, ``obs["n_unseen_targets"]`` (targets never perturbed in fine-tuning) and
    ``uns["perturbation_prediction"] = {{"method": "scgpt", "params": {{...}}}}``.

    Warns when target genes were never perturbed in fine-tuning, and when predictions of different
    perturbations are nearly identical (Pearson > 0.99 between their deltas, official issue #277).

    Examples
    --------
    >>> gen = scgpt.model.ScGPT.from_pretrained("scGPT_human").finetune("perturbation", screen)  # doctest: +SKIP
    >>> pred = scgpt.tl.predict_perturbation(screen, gen, ["JAK2", "JAK2+STAT1"])  # doctest: +SKIP
    >>> scgpt.tl.evaluate_perturbation(screen, pred)  # doctest: +SKIP
    """
    start = time.perf_counter()
    fn = "predict_perturbation"
    if perturbations is None or (not isinstance(perturbations, str) and len(perturbations) == 0):
        raise ValueError(
            f"{fn}: perturbations={perturbations!r} names none; pass the perturbations to predict, e.g. 'JAK2', "
            "['JAK2', 'JAK2+STAT1'] or [['JAK2', 'STAT1']]."
        )
    model_obj, model_name = resolve_model(model)
    res = model_obj.predict_perturbation(
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
    names, X, ctrl_mean, unseen = res.names, res.X, res.control_mean, res.unseen
    if unseen:
        examples = "; ".join(f"{n}: {', '.join(g)}" for n, g in list(unseen.items())[:5])
        warn(
            f"{fn}: {len(unseen)} of {len(names)} perturbations target genes never perturbed in fine-tuning "
            f"({examples}{' ...' if len(unseen) > 5 else ''}); the model has not learnt their effect and "
            "extrapolates from their gene embedding. Compare with scgpt.tl.perturbation_baseline."
        )
    informative = res.predicted & ~res.is_target
    delta = X[:, informative] - ctrl_mean[informative]
    collapsed, max_r = _collapsed_pairs(delta, names)
    if collapsed:
        i, j, r = max(collapsed, key=lambda p: p[2])
        n_pairs = len(names) * (len(names) - 1) // 2
        warn(
            f"{fn}: the predicted changes of {len(collapsed)} of {n_pairs} pairs of perturbations are nearly identical "
            f"(Pearson > {COLLAPSE_PEARSON} between their deltas outside the target genes; e.g. {i} and {j}: r = "
            f"{r:.3f}): the model predicts about the same response whatever the target (official issue #277). "
            "Compare with scgpt.tl.perturbation_baseline(method='train_mean')."
        )
    info = res.info
    params: dict[str, Any] = {
        "method": "scgpt",
        **provenance(model_obj, model_name),
        **{k: info[k] for k in ("perturbation_key", "control", "n_control_cells", "n_control_cells_available")},
        "seed": seed,
        "organism": organism,
        "orthologs": orthologs,
        **{k: info[k] for k in ("gene_chunk", "n_chunks", "layer", "batch_size", "dtype", "n_genes_predicted")},
        **{k: info[k] for k in ("n_genes_not_in_vocabulary", "genes_not_in_vocabulary_examples", "unmeasured_targets")},
        "max_pairwise_delta_pearson": max_r,
        "note": f"{OUTSIDE_VOCAB_NOTE} {CHUNK_NOTE} Deltas are against the mean of all control cells of adata.",
    }
    if "n_genes_outside_training_panel" in info:
        params["n_genes_outside_training_panel"] = info["n_genes_outside_training_panel"]
    key = info["perturbation_key"]
    pred = prediction_anndata(X, names, adata.var_names, ctrl_mean, params, method="scgpt", perturbation_key=key)
    pred.var["predicted"] = res.predicted
    pred.obs["n_unseen_targets"] = [len(unseen.get(n, [])) for n in names]
    logger.info(
        f"{fn}: {len(names)} perturbations from {info['n_control_cells']} control cells over "
        f"{info['n_genes_predicted']} genes "
        f"(max {max(info['n_chunks'])} chunk(s) of <= {info['gene_chunk']} tokens; {time.perf_counter() - start:.1f}s)"
    )
    return pred
