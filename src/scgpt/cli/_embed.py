"""``scgpt embed``: zero-shot cell embeddings (:func:`scgpt.tl.embed`) into an ``.h5ad``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import atomic_path
from .._logging import logger
from .._settings import settings
from ._common import PBMC68K, CLIError, HelpFormatter, add_common, add_data, check_input, check_model, read_h5ad

if TYPE_CHECKING:
    from anndata import AnnData


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``embed`` subcommand to ``sub``."""
    p = sub.add_parser(
        "embed",
        formatter_class=HelpFormatter,
        help="zero-shot cell embeddings (scgpt.tl.embed) into an .h5ad",
        description="Compute zero-shot scGPT cell embeddings and write them to obsm[KEY_ADDED] of a new .h5ad.\n\n"
        "The input is read into memory and written back whole with the embeddings added. With --backed it is\n"
        "streamed from disk instead (bounded memory) and OUTPUT holds obs, var, obsm and uns only (no expression\n"
        "matrix); join it to the input by obs_names.",
    )
    p.add_argument(
        "--model",
        metavar="PATH",
        help="official scGPT model folder (e.g. scGPT_human), a folder written by 'scgpt pretrain/finetune', or "
        "'demo' (default: $SCGPT_MODEL)",
    )
    add_data(p, several=False)
    p.add_argument("--output", required=True, metavar="FILE", help=".h5ad to write")
    p.add_argument("--backed", action="store_true", help="stream the input from disk (see above)")
    p.add_argument("--key-added", default="X_scGPT", metavar="KEY", help="obsm key of the embeddings")
    p.add_argument("--batch-key", metavar="KEY", help="obs column with batches (only for batch-conditioned models)")
    p.add_argument("--no-aliases", action="store_true", help="match gene names exactly (as the official code)")
    p.add_argument("--max-length", type=int, default=1200, metavar="N", help="tokens per cell incl. <cls>")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="cells per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="precision")
    g = p.add_argument_group("figure")
    g.add_argument(
        "--figure",
        metavar="PNG",
        help="also compute neighbors and a UMAP of the embeddings (stored in obsm['X_umap']) and save a plot",
    )
    g.add_argument(
        "--color",
        nargs="+",
        metavar="COLUMN",
        help="obs columns (or genes) coloring the UMAP (default: the first categorical obs column)",
    )
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> None:
    model = args.model if args.model is not None else settings.default_model
    if model is None:
        raise CLIError("no model: pass --model PATH (an scGPT model folder, or 'demo') or set $SCGPT_MODEL")
    check_model(model)
    check_input(args.input)
    out_path = Path(args.output).expanduser()
    if args.backed and args.input != PBMC68K and out_path.resolve() == Path(args.input).expanduser().resolve():
        raise CLIError("with --backed, --output must differ from --input")
    import anndata as ad

    from ..model import resolve_device
    from ..tl import embed

    device = resolve_device(args.device)  # a clear error before any reading
    adata = read_h5ad(args.input, backed=args.backed)
    embed(
        adata,
        model,
        gene_key=args.gene_key,
        use_aliases=not args.no_aliases,
        layer=args.layer,
        batch_key=args.batch_key,
        max_length=args.max_length,
        batch_size=args.batch_size,
        key_added=args.key_added,
        seed=args.seed,
        device=device,
        dtype=args.dtype,
    )
    if adata.isbacked:  # the expression matrix stays in the input file
        result = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm), uns=dict(adata.uns))
        adata.file.close()
        adata = result
    if args.figure:
        _umap_figure(adata, args.key_added, Path(args.figure).expanduser(), args.color, seed=args.seed)
    with atomic_path(out_path) as tmp:  # the previous file (the input itself with --output = --input) stays intact
        adata.write_h5ad(tmp)
    emb = adata.obsm[args.key_added]
    figure = f", UMAP in {args.figure}" if args.figure else ""
    print(f"scgpt embed: {emb.shape[0]:,} cells -> {out_path} (obsm[{args.key_added!r}], {emb.shape[1]} dims){figure}")


def _umap_figure(adata: AnnData, key: str, path: Path, colors: list[str] | None, *, seed: int) -> None:
    """Neighbors and UMAP of ``obsm[key]`` (written to ``adata``) and a PNG of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    if colors is None:
        categorical = [c for c in adata.obs.columns if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
        colors = categorical[:1]
    missing = [c for c in colors if c not in adata.obs and c not in adata.var_names]
    if missing:
        raise CLIError(f"--color: {missing} are neither obs columns nor genes (obs columns: {list(adata.obs)})")
    logger.info("computing neighbors and UMAP of the embeddings")
    sc.pp.neighbors(adata, use_rep=key, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    fig = sc.pl.umap(adata, color=colors or None, show=False, return_fig=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    logger.info(f"saved {path}")
