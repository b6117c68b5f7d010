"""``scgpt embed``: zero-shot cell embeddings (:func:`scgpt.tl.embed`) into an ``.h5ad``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import atomic_path
from .._logging import logger
from .._settings import settings
from ._common import (
    PBMC68K,
    CLIError,
    HelpFormatter,
    Interrupted,
    _devices,
    add_common,
    add_data,
    add_organism,
    check_input,
    check_model,
    read_h5ad,
    species_options,
)

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
        "matrix); join it to the input by obs_names. With --backed the embeddings are also written as they are\n"
        "computed, CHUNK_SIZE cells at a time, into the folder OUTPUT.parts, and copied into OUTPUT at the end\n"
        "(neither the matrix nor all embeddings are held in memory). An interrupted run resumes from the chunks\n"
        "written when the same command is run again.\n\n"
        "--devices N runs N processes per machine (GPUs, or CPU processes with --device cpu) with Lightning\n"
        "DDP: started by this command, or by torchrun/srun (then pass the processes per node they start).\n\n"
        "INPUT may also be a TileDB-SOMA experiment (a folder, or a URI such as s3://...), e.g. a copy of the\n"
        "CELLxGENE Census: --layer names its X layer (default: raw), --obs-filter selects cells, and with\n"
        "--backed every process reads only its share of the cells from the experiment.",
    )
    p.add_argument(
        "--model",
        metavar="PATH",
        help="a published model's name (e.g. scGPT_human, downloaded on first use; 'scgpt models' lists them), an "
        "official scGPT model folder, a folder written by 'scgpt pretrain/finetune', or 'demo' (default: "
        "$SCGPT_MODEL)",
    )
    add_data(p, several=False)
    g = p.add_argument_group("TileDB-SOMA input (e.g. the CELLxGENE Census)")
    g.add_argument("--measurement", default="RNA", help="measurement holding the genes")
    g.add_argument(
        "--obs-filter",
        metavar="EXPR",
        help="SOMA value filter selecting cells, e.g. \"tissue_general == 'blood' and is_primary_data == True\"",
    )
    g.add_argument(
        "--soma-config",
        nargs="+",
        metavar="KEY=VALUE",
        help="TileDB configuration options, e.g. vfs.s3.region=us-west-2 vfs.s3.no_sign_request=true (the Census)",
    )
    g.add_argument(
        "--obs-columns",
        nargs="+",
        metavar="COLUMN",
        help="obs columns to read and write to OUTPUT (default: all; soma_joinid is always kept)",
    )
    p.add_argument("--output", required=True, metavar="FILE", help=".h5ad to write")
    p.add_argument("--backed", action="store_true", help="stream the input from disk (see above)")
    p.add_argument(
        "--max-cells",
        type=int,
        metavar="N",
        help="embed only the first N cells of the input (a quick check of an install or a model; not with --backed)",
    )
    p.add_argument("--key-added", default="X_scGPT", metavar="KEY", help="obsm key of the embeddings")
    p.add_argument("--batch-key", metavar="KEY", help="obs column with batches (only for batch-conditioned models)")
    p.add_argument("--no-aliases", action="store_true", help="match gene names exactly (as the official code)")
    add_organism(p)
    p.add_argument("--max-length", type=int, default=1200, metavar="N", help="tokens per cell incl. <cls>")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="cells per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="precision")
    g = p.add_argument_group("several processes and out-of-core output")
    g.add_argument(
        "--devices", type=_devices, metavar="N", help="processes per machine (Lightning DDP; default: this one alone)"
    )
    g.add_argument("--num-nodes", type=int, default=1, metavar="M", help="machines (multi-node, under srun/torchrun)")
    g.add_argument("--strategy", default="ddp", help="Lightning strategy with --devices (ddp)")
    g.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        metavar="N",
        help="with --backed: cells per chunk written to OUTPUT.parts (the unit of resuming)",
    )
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
        raise CLIError(
            "no model: pass --model NAME or PATH (a published model such as scGPT_human, a model folder, or 'demo') "
            "or set $SCGPT_MODEL"
        )
    check_model(model)
    check_input(args.input, soma=True)
    species = _species_options(args)
    out_path = Path(args.output).expanduser()
    if out_path.is_dir():  # e.g. --output = a .zarr --input: refused now, not after every cell is embedded
        same = " (it is the --input)" if out_path.resolve() == Path(args.input).expanduser().resolve() else ""
        raise CLIError(f"--output {args.output} is a folder{same}; the output is an .h5ad file: give a file name")
    if args.backed and args.input != PBMC68K and out_path.resolve() == Path(args.input).expanduser().resolve():
        raise CLIError("with --backed, --output must differ from --input")
    if args.chunk_size < 1:
        raise CLIError(f"--chunk-size must be positive, got {args.chunk_size}")
    if args.max_cells is not None and (args.max_cells < 1 or args.backed):
        raise CLIError(
            f"--max-cells must be positive, got {args.max_cells}" if args.max_cells < 1
            else "--max-cells selects cells of an input read into memory; drop --backed"
        )  # fmt: skip
    from ..model import global_rank, resolve_device
    from ..tl import embed

    device = resolve_device(args.device)  # a clear error before any reading
    if args.devices is not None:
        device = args.device or device.type  # the kind of device; the GPUs are chosen by --devices
    adata, layer, selection = _read_input(args)
    if args.max_cells is not None and args.max_cells < adata.n_obs:
        adata = adata[: args.max_cells].copy()
        logger.info(f"embedding the first {adata.n_obs:,} cells (--max-cells)")
    if args.backed:
        return _run_out_of_core(args, model, adata, layer, selection, device, out_path, species)
    embed(
        adata,
        model,
        gene_key=args.gene_key,
        use_aliases=not args.no_aliases,
        **species,
        layer=layer,
        batch_key=args.batch_key,
        max_length=args.max_length,
        batch_size=args.batch_size,
        key_added=args.key_added,
        seed=args.seed,
        device=device,
        dtype=args.dtype,
        **_distributed_options(args),
    )
    if global_rank() != 0:  # rank 0 writes the result
        return
    _finish(args, adata, out_path)


def _read_input(args: argparse.Namespace) -> tuple[AnnData, str | None, dict]:
    """The input AnnData, the layer to embed and what selected the cells (empty for files).

    A TileDB-SOMA experiment's layer becomes its ``X``; its layer, measurement and filter are part of the identity
    that a resumed run must match.
    """
    from ..data import is_soma_experiment

    soma_options = {
        "--obs-filter": args.obs_filter,
        "--obs-columns": args.obs_columns,
        "--soma-config": args.soma_config,
    }
    if not is_soma_experiment(args.input):
        given = [name for name, value in soma_options.items() if value is not None]
        if args.measurement != "RNA":
            given.append("--measurement")
        if given:
            raise CLIError(
                f"{', '.join(given)}: only for a TileDB-SOMA experiment, and --input {args.input} is not one"
            )
        return read_h5ad(args.input, backed=args.backed), args.layer, {}
    from ..data import open_soma

    bad = [item for item in args.soma_config or [] if "=" not in item]
    if bad:
        raise CLIError(f"--soma-config takes KEY=VALUE options, got {bad[0]!r}")
    config = dict(item.split("=", 1) for item in args.soma_config or [])
    try:
        adata = open_soma(
            args.input,
            measurement=args.measurement,
            layer=args.layer or "raw",
            obs_value_filter=args.obs_filter,
            obs_columns=args.obs_columns,
            context=config or None,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:
        message = str(e.args[0] if e.args else e).replace("obs_value_filter=", "--obs-filter ")
        raise CLIError(f"--input {args.input}: {message}") from None
    how = "streamed from the experiment" if args.backed else "read into memory"
    logger.info(f"opened {args.input}: {adata.n_obs:,} cells x {adata.n_vars:,} genes ({how})")
    if not args.backed:
        adata.X = adata.X.to_memory()
    selection = {"soma_layer": args.layer or "raw", "measurement": args.measurement, "obs_filter": args.obs_filter}
    return adata, None, selection


def _species_options(args: argparse.Namespace) -> dict:
    """``organism``/``orthologs`` for the embedding: empty for human genes (so that earlier runs resume as before)."""
    return species_options(args)


def _distributed_options(args: argparse.Namespace) -> dict:
    if args.devices is None:
        return {}
    return {"devices": args.devices, "num_nodes": args.num_nodes, "strategy": args.strategy}


def _run_out_of_core(
    args: argparse.Namespace,
    model_name: str,
    adata: AnnData,
    layer: str | None,
    selection: dict,
    device,
    out_path: Path,
    species: dict,
) -> None:
    """``--backed``: embeddings into the chunk folder OUTPUT.parts (resuming from it), then into OUTPUT."""
    import time

    import anndata as ad

    from ..model import embed_to_store, input_identity, mean_tokens, read_embeddings, resolve_model, write_h5ad

    start = time.perf_counter()
    model, name = resolve_model(model_name)
    parts = out_path.with_name(out_path.name + ".parts")
    options = {
        "gene_key": args.gene_key,
        "use_aliases": not args.no_aliases,
        "layer": layer,
        "batch_key": args.batch_key,
        "max_length": args.max_length,
        "seed": args.seed,
        "dtype": args.dtype,
        **species,
    }
    identity = {"input": input_identity(args.input), **options, **selection}
    logger.info(f"computing scGPT embeddings of {adata.n_obs:,} cells chunk by chunk into {parts}")
    try:
        run = embed_to_store(
            model,
            adata,
            parts,
            identity=identity,
            chunk_size=args.chunk_size,
            device=device,
            batch_size=args.batch_size,
            **options,
            **_distributed_options(args),
        )
    except (Interrupted, KeyboardInterrupt) as e:
        from ..model import ChunkStore

        store = ChunkStore(parts)
        n_done = len(list(parts.glob("chunk_*.npz"))) if parts.is_dir() else 0
        signum = e.signal if isinstance(e, Interrupted) else 2
        raise Interrupted(
            signum,
            f"{n_done} chunks are written in {store.folder}; run the same command again to resume from them",
        ) from None
    if run.rank != 0:  # rank 0 writes the result
        adata.file.close()
        return
    rep = run.match.report()
    params = {
        **model.provenance(name),  # scgpt_version, model, weights_sha256
        **options,
        "batch_size": args.batch_size,
        "genes": False,
    }
    uns = {
        "params": params,
        "n_genes_matched": rep["n_matched"],
        "n_genes": rep["n_genes"],
        "mean_tokens_per_cell": mean_tokens(run.store),
    }
    if "organism" in rep:
        uns["orthologs_report"] = {k: rep[k] for k in ("orthology", "by_reason", "n_by_id", "n_summed")}
    if args.figure:  # the UMAP needs every embedding in memory
        result = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy(), uns={args.key_added: uns})
        result.obsm[args.key_added] = read_embeddings(run.store)
        adata.file.close()
        _finish(args, result, out_path)
    else:
        n, d = write_h5ad(adata, run.store, out_path, key=args.key_added, uns=uns)
        adata.file.close()
        logger.info(f"    finished ({time.perf_counter() - start:.1f}s)")
        print(f"scgpt embed: {n:,} cells -> {out_path} (obsm[{args.key_added!r}], {d} dims)")
    run.store.remove()


def _finish(args: argparse.Namespace, adata: AnnData, out_path: Path) -> None:
    """Write the result (with a UMAP figure on request) and print a summary."""
    import anndata as ad

    if adata.isbacked:  # the expression matrix stays in the input file
        result = ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm), uns=dict(adata.uns))
        adata.file.close()
        adata = result
    if args.figure:
        model = args.model if args.model is not None else settings.default_model
        _umap_figure(adata, args.key_added, Path(args.figure).expanduser(), args.color, seed=args.seed, model=model)
    with atomic_path(out_path) as tmp:  # the previous file (the input itself with --output = --input) stays intact
        adata.write_h5ad(tmp)
    emb = adata.obsm[args.key_added]
    figure = f", UMAP in {args.figure}" if args.figure else ""
    print(f"scgpt embed: {emb.shape[0]:,} cells -> {out_path} (obsm[{args.key_added!r}], {emb.shape[1]} dims){figure}")


def _umap_figure(
    adata: AnnData, key: str, path: Path, colors: list[str] | None, *, seed: int, model: str = "scGPT"
) -> None:
    """Neighbors and UMAP of ``obsm[key]`` (written to ``adata``) and a PNG of it.

    The figure names the model and the embedding (``UMAP of <model> embeddings (obsm[key]), n cells``) and each
    panel the column that colours it (``coloured by <column>``).
    """
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
    titles = [f"coloured by {c}" for c in colors] if colors else "no obs column to colour by (--color)"
    fig = sc.pl.umap(adata, color=colors or None, title=titles, show=False, return_fig=True)
    name = Path(str(model)).name or str(model)  # a folder: its name, not the whole path
    fig.suptitle(f"UMAP of {name} embeddings (obsm[{key!r}]), {adata.n_obs:,} cells", y=1.02)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    logger.info(f"saved {path}")
