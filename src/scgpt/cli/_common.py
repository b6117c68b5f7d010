"""The ``scgpt`` command: embed cells, pretrain and fine-tune from a shell.

::

    scgpt embed    --model scGPT_human --input pbmc.h5ad --output pbmc_emb.h5ad --figure umap.png
    scgpt pretrain --input a.h5ad b.h5ad --output my_model --d-model 256 --n-layers 4 --max-epochs 5
    scgpt finetune --model scGPT_human --input ref.h5ad --output annot_model --recipe annotation --labels-key celltype

Every option can also come from a JSON or TOML file given with ``--config``; options on the
command line override it. Heavy modules (torch, scanpy, Lightning) are imported inside the
subcommands, so ``scgpt --help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from ._logging import logger
from ._settings import settings

if TYPE_CHECKING:
    from anndata import AnnData

    from .model import ScGPT

PBMC68K = "pbmc68k"
"""``--input`` value naming the bundled real cells (:func:`scgpt.datasets.pbmc68k_counts`)."""

MODEL_FILES = ("args.json", "vocab.json", "best_model.pt", "model.pt")
"""Files a training subcommand writes into ``--output`` (official folder + this package's ``model.pt``)."""

CHECKPOINTS = "checkpoints"
LAZY_CHUNK_SIZE = 64
"""Cells per contiguous chunk when shuffling on-disk files (``--lazy``)."""

# ``ScGPT.train`` arguments that map one to one onto options of the training subcommands.
TRAIN_KWARGS = (
    "max_epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "max_length",
    "train_size",
    "early_stopping",
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "checkpoint_every_n_steps",
    "seed",
)
ARCHITECTURE = ("d_model", "n_layers", "n_heads", "d_hid", "dropout")


class CLIError(Exception):
    """A user error: reported as one line ``scgpt: error: ...`` with exit status 2."""


# ============================================================================ parser
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the layout of descriptions and epilogs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # no "(default: None)" / "(default: False)" noise
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _devices(value: str) -> int | str:
    """``--devices``: a count (``2``), ``auto``, ``-1`` or a list of ids (``0,1``)."""
    return int(value) if value.lstrip("-").isdigit() else value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or TOML file of options (keys: long option names, with dashes or underscores; a table named "
        "after the subcommand may hold its own options). Command-line options override it; relative paths are "
        "relative to the working directory.",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")


def _add_data(p: argparse.ArgumentParser, *, several: bool) -> None:
    g = p.add_argument_group("data")
    if several:
        g.add_argument(
            "--input",
            nargs="+",
            required=True,
            metavar="FILE",
            help=f"one or more .h5ad files with raw counts (genes matched by name across files), or '{PBMC68K}' "
            "for 700 bundled real PBMCs",
        )
    else:
        g.add_argument(
            "--input",
            required=True,
            metavar="FILE",
            help=f".h5ad file with raw counts, or '{PBMC68K}' for 700 bundled real PBMCs",
        )
    g.add_argument("--layer", help="layer holding the raw counts (default: X)")
    g.add_argument("--gene-key", metavar="KEY", help="var column with gene symbols or Ensembl ids (default: var_names)")


def _add_training(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--output", required=True, metavar="DIR", help="folder to write the trained model to")
    g.add_argument("--overwrite", action="store_true", help="replace a model already in --output (else it is an error)")
    g.add_argument("--max-epochs", type=int, metavar="N", help="epochs (default: 10 when --max-steps is not given)")
    g.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (stops at whichever limit comes first)")
    g.add_argument("--batch-size", type=int, default=32, metavar="N", help="cells per minibatch per device")
    g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (AdamW when > 0)")
    g.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine", help="learning-rate curve")
    g.add_argument("--warmup-steps", type=int, default=0, metavar="N", help="warm-up steps of the cosine schedule")
    g.add_argument("--max-length", type=int, metavar="N", help="tokens per cell incl. <cls> (default: the recipe's)")
    g.add_argument("--train-size", type=float, default=0.9, help="fraction of cells trained on; the rest validates")
    g.add_argument("--early-stopping", action="store_true", help="stop when the validation loss stops improving")
    g.add_argument("--gradient-clip-val", type=float, metavar="X", help="clip gradient norms to X")
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT",
        help=f"continue an interrupted run from DIR/{CHECKPOINTS}/last.ckpt (or from CKPT); the weights end as "
        "after an uninterrupted run",
    )
    g.add_argument(
        "--checkpoint-every-n-steps", type=int, metavar="N", help="save last.ckpt every N steps (default: each epoch)"
    )
    g = p.add_argument_group("devices (PyTorch Lightning)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto")
    g.add_argument("--devices", type=_devices, default="auto", help="number of devices, a list of ids (0,1) or auto")
    g.add_argument("--strategy", default="auto", help="e.g. ddp for data-parallel training on several devices")
    g.add_argument("--num-nodes", type=int, default=1, metavar="N", help="machines (multi-node ddp)")
    g.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed (GPU)")
    g.add_argument("--accumulate-grad-batches", type=int, default=1, metavar="N", help="gradient accumulation")


TRAINING_EPILOG = f"""\
output folder DIR:
  args.json, vocab.json, best_model.pt   official scGPT model folder (loads in the official scgpt code)
  model.pt                               this package's format: also label/batch categories and loss history;
                                         ScGPT.from_pretrained(DIR) and --model DIR read this one
  {CHECKPOINTS}/last.ckpt                  Lightning checkpoint (for --resume)
  {CHECKPOINTS}/.../metrics.csv            per-step losses (the path is printed at the end)
  {CHECKPOINTS}/cli_args.json              the options: repeat the run with --config DIR/{CHECKPOINTS}/cli_args.json
"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Build the ``scgpt`` parser; also return its subcommand parsers by name."""
    parser = argparse.ArgumentParser(
        prog="scgpt",
        description="scGPT single-cell foundation model (scgpt-scverse): embed cells, pretrain, fine-tune.",
        epilog="Run 'scgpt COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"scgpt-scverse {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}

    # ---------------------------------------------------------------- embed
    p = sub.add_parser(
        "embed",
        formatter_class=_HelpFormatter,
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
    _add_data(p, several=False)
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
    _add_common(p)
    p.set_defaults(func=_cmd_embed)
    subparsers["embed"] = p

    # ---------------------------------------------------------------- pretrain
    p = sub.add_parser(
        "pretrain",
        formatter_class=_HelpFormatter,
        help="pretrain a model from scratch or continue pretraining",
        description="Pretrain scGPT on .h5ad files of raw counts: a new model (architecture options) or continued\n"
        "pretraining of --model.",
        epilog=TRAINING_EPILOG,
    )
    _add_data(p, several=True)
    p.add_argument(
        "--lazy",
        action="store_true",
        help="read the input files from disk during training instead of loading them (larger-than-memory data)",
    )
    p.add_argument("--model", metavar="PATH", help="model folder or 'demo' to continue from (default: a new model)")
    p.add_argument(
        "--recipe",
        choices=("pretrain", "pretrain-masked"),
        default="pretrain",
        help="generative pretraining (official) or masked-value pretraining",
    )
    g = p.add_argument_group("new model (without --model)")
    g.add_argument("--d-model", type=int, metavar="N", help="embedding width (default: 512)")
    g.add_argument("--n-layers", type=int, metavar="N", help="transformer layers (default: 12)")
    g.add_argument("--n-heads", type=int, metavar="N", help="attention heads (default: 8)")
    g.add_argument("--d-hid", type=int, metavar="N", help="feed-forward width (default: 512)")
    g.add_argument("--dropout", type=float, metavar="P", help="dropout (default: 0.2)")
    g.add_argument(
        "--vocab",
        default="inputs",
        metavar="inputs|census|FILE",
        help="gene vocabulary: the genes of the input files, the bundled CELLxGENE census vocabulary of scGPT_human, "
        "or a vocab.json",
    )
    _add_training(p)
    _add_common(p)
    p.set_defaults(func=_cmd_pretrain)
    subparsers["pretrain"] = p

    # ---------------------------------------------------------------- finetune
    p = sub.add_parser(
        "finetune",
        formatter_class=_HelpFormatter,
        help="fine-tune a model for cell-type annotation or integration",
        description="Fine-tune a pretrained model as in the official tutorials: 'annotation' adds a classification\n"
        "head over the --labels-key categories; 'integration' adds batch conditioning (DSBN), the adversarial batch\n"
        "discriminator and explicit zero probabilities over the --batch-key batches.",
        epilog=TRAINING_EPILOG,
    )
    p.add_argument("--model", required=True, metavar="PATH", help="pretrained model folder or 'demo'")
    _add_data(p, several=False)
    p.add_argument("--recipe", choices=("annotation", "integration"), required=True, help="what to fine-tune for")
    p.add_argument("--labels-key", metavar="KEY", help="obs column with cell types (annotation)")
    p.add_argument("--batch-key", metavar="KEY", help="obs column with batches (integration)")
    _add_training(p)
    _add_common(p)
    p.set_defaults(func=_cmd_finetune)
    subparsers["finetune"] = p
    return parser, subparsers


# ============================================================================ config files
def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"--config: no such file: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CLIError(f"{path} is not valid TOML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); use .toml for TOML") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} must hold a table/object of options, got {type(data).__name__}")
    return data


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """Check and convert a config value as the command line would."""

    def one(v: Any) -> Any:
        if isinstance(v, str) and action.type is not None:
            try:
                v = action.type(v)
            except (TypeError, ValueError):
                raise CLIError(f"{where}: invalid value {v!r}") from None
        if isinstance(v, dict | list):
            raise CLIError(f"{where}: expected a single value, got {v!r}")
        if action.choices is not None and v not in action.choices:
            raise CLIError(f"{where}: {v!r} is not one of {list(action.choices)}")
        return v

    if action.nargs == 0:  # store_true flags
        if not isinstance(value, bool):
            raise CLIError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        if not values and action.nargs == "+":
            raise CLIError(f"{where}: expected at least one value")
        return [one(v) for v in values]
    if action.nargs == "?" and isinstance(value, bool):  # --resume = true
        return value
    return one(value)


def _apply_config(argv: Sequence[str], subparsers: dict[str, argparse.ArgumentParser]) -> None:
    """Make the options of ``--config FILE`` the defaults of the chosen subcommand (command line wins)."""
    pre = argparse.ArgumentParser(prog="scgpt", add_help=False)
    pre.add_argument("--config")
    found, _ = pre.parse_known_args(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if found.config is None or command not in subparsers:
        return
    path = Path(found.config).expanduser()
    data = _read_config(path)
    options = {k: v for k, v in data.items() if k not in subparsers}  # top level, minus per-command tables
    section = data.get(command, {})
    if not isinstance(section, dict):
        raise CLIError(f"{path}: [{command}] must be a table of options")
    options.update(section)
    p = subparsers[command]
    actions = {a.dest: a for a in p._actions if a.option_strings}
    defaults = {}
    for key, value in options.items():
        dest = str(key).replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            raise CLIError(f"{path}: unknown option {key!r} for 'scgpt {command}'")
        action = actions[dest]
        defaults[dest] = _config_value(action, value, f"{path}: {key}")
        action.required = False  # given by the file; the command line may still override it
    p.set_defaults(**defaults)


# ============================================================================ helpers shared by the subcommands
@contextlib.contextmanager
def _verbosity(quiet: bool) -> Iterator[None]:
    """``--quiet``: warnings only and no progress bars (restored afterwards, for in-process use)."""
    level, progress = logger.level, settings.progress
    if quiet:
        logger.setLevel(logging.WARNING)
        settings.progress = False
    try:
        yield
    finally:
        logger.setLevel(level)
        settings.progress = progress


def _check_input(path: str) -> None:
    if path != PBMC68K and not Path(path).expanduser().is_file():
        raise CLIError(f"--input: no such file: {path}")


def _read_h5ad(path: str, *, backed: bool = False) -> AnnData:
    """Read an input file (``backed``: open it read-only on disk), or the bundled cells for ``pbmc68k``."""
    _check_input(path)
    if path == PBMC68K:
        if backed:
            raise CLIError(f"--input {PBMC68K} is held in memory; drop --backed/--lazy")
        from .datasets import pbmc68k_counts

        return pbmc68k_counts()
    import anndata as ad

    adata = ad.read_h5ad(Path(path).expanduser(), backed="r" if backed else None)
    logger.info(f"read {path}: {adata.n_obs:,} cells x {adata.n_vars:,} genes{' (backed)' if backed else ''}")
    return adata


def _check_model(path: str) -> None:
    if path != "demo" and not Path(path).expanduser().exists():
        raise CLIError(f"--model: no such folder: {path}")


def _load_model(path: str, *, generative: bool = False) -> ScGPT:
    from .model import ScGPT

    _check_model(path)
    model = ScGPT.from_pretrained(path, generative=generative)
    logger.info(f"loaded {model!r}")
    return model


def _counts(adata: AnnData, layer: str | None, gene_key: str | None) -> AnnData:
    """Return the counts of ``adata`` in ``X`` with gene names as ``var_names`` (no copy of the matrix)."""
    import anndata as ad
    import pandas as pd

    from ._anndata import get_matrix
    from .pp._genes import gene_names

    names = gene_names(adata, gene_key)  # errors for a missing key and duplicated names
    return ad.AnnData(X=get_matrix(adata, layer), obs=adata.obs, var=pd.DataFrame(index=pd.Index(names, name=None)))


def _read_training_data(paths: Sequence[str], layer: str | None, gene_key: str | None) -> AnnData:
    """Input files in memory, counts in ``X``; several files are joined by gene name (zeros where unmeasured)."""
    import anndata as ad
    import scipy.sparse as sp

    parts = [_counts(_read_h5ad(p), layer, gene_key) for p in paths]
    if len(parts) == 1:
        return parts[0]
    for a in parts:
        a.X = sp.csr_matrix(a.X)
    adata = ad.concat(parts, join="outer", fill_value=0, index_unique="-")
    logger.info(f"joined {len(parts)} files: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
    return adata


def _input_genes(paths: Sequence[str], gene_key: str | None) -> list[str]:
    """Gene names of the input files, in order of first appearance (read without loading the matrices)."""
    from .pp._genes import gene_names

    genes: dict[str, None] = {}
    for p in paths:
        adata = _read_h5ad(p, backed=True)
        genes.update(dict.fromkeys(gene_names(adata, gene_key)))
        if adata.isbacked:
            adata.file.close()
    return list(genes)


def _new_model(args: argparse.Namespace, adata: AnnData | None) -> ScGPT:
    """Build a freshly initialised model from the architecture and vocabulary options of ``pretrain``.

    ``adata``: the training data in memory, ``None`` with ``--lazy`` (gene names are then read from the files).
    """
    from .data import SPECIAL_TOKENS, GeneVocab
    from .model import ScGPT

    if args.vocab == "census":
        vocab = GeneVocab.default()
    elif args.vocab == "inputs":
        genes = adata.var_names if adata is not None else _input_genes(args.input, args.gene_key)
        vocab = GeneVocab([*(g for g in genes if g not in SPECIAL_TOKENS), *SPECIAL_TOKENS])
    else:
        if not Path(args.vocab).expanduser().is_file():
            raise CLIError(f"--vocab: no such file: {args.vocab} (or use 'inputs' or 'census')")
        vocab = GeneVocab.from_file(Path(args.vocab).expanduser())
    arch = {k: getattr(args, k) for k in ARCHITECTURE if getattr(args, k) is not None}
    model = ScGPT(vocab=vocab, generative=args.recipe == "pretrain", **arch)
    logger.info(f"new {model!r}")
    return model


def _prepare_output(args: argparse.Namespace) -> Path:
    """Check and create the output folder; record the options of the run in it."""
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output {args.output} is a file; give a folder")
    existing = [f for f in MODEL_FILES if (out / f).exists()]
    if existing and not (args.overwrite or args.resume):
        raise CLIError(
            f"--output {args.output} already holds a model ({', '.join(existing)}); "
            "pass --overwrite to replace it or --resume to continue its run"
        )
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    skip = ("func", "command", "traceback", "config")
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    record = json.dumps({args.command: options}, indent=2) + "\n"  # a --config file that repeats the run
    (out / CHECKPOINTS / "cli_args.json").write_text(record)
    return out


def _seed_init(seed: int) -> None:
    """Seed torch's global RNG, from which new models and new heads (``adapt``) draw their initial weights."""
    import torch

    torch.manual_seed(seed)


def _recipe(args: argparse.Namespace) -> Any:
    """Return the training recipe of ``--recipe``, with ``--max-length`` applied."""
    from .train import get_recipe

    recipe = get_recipe(args.recipe)
    return recipe if args.max_length is None else recipe.replace(max_length=args.max_length)


def _lazy_datamodule(model: ScGPT, args: argparse.Namespace, recipe: Any) -> Any:
    """Training data read from the input files during training (:class:`~scgpt.data.H5adCollection`)."""
    from .data import H5adCollection

    source = H5adCollection(args.input, model.vocab, gene_key=args.gene_key, layer=args.layer)
    logger.info(f"reading {source.n_obs:,} cells from {len(args.input)} file(s) on disk during training")
    return model.make_datamodule(
        source,
        recipe,
        batch_size=args.batch_size,
        train_size=args.train_size,
        seed=args.seed,
        chunk_size=LAZY_CHUNK_SIZE,
    )


def _train_and_save(
    model: ScGPT, args: argparse.Namespace, out: Path, *, adata: AnnData | None = None, datamodule: Any = None
) -> None:
    """``model.train`` with the training options, then both model formats into ``out`` and a summary line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    recipe = _recipe(args)
    kwargs = {k: getattr(args, k) for k in TRAIN_KWARGS}
    kwargs["max_steps"] = -1 if args.max_steps is None else args.max_steps
    ckpt_dir = out / CHECKPOINTS
    if args.resume is True and not (ckpt_dir / "last.ckpt").is_file():
        logger.info(f"--resume: no {ckpt_dir / 'last.ckpt'} yet; starting from the beginning")
    elif args.resume:
        logger.info(f"resuming from {ckpt_dir / 'last.ckpt' if args.resume is True else args.resume}")
    start = time.perf_counter()
    try:
        model.train(adata, recipe=recipe, checkpoint_dir=ckpt_dir, resume=args.resume, datamodule=datamodule, **kwargs)
    except MisconfigurationException as e:
        raise CLIError(str(e)) from None
    model.save_pretrained(out, overwrite=True)
    model.save(out, overwrite=True)
    logger.info(f"wrote {out}: official folder (args.json, vocab.json, best_model.pt) and model.pt")
    losses = {k: v[-1] for k, v in model.history_.items() if v and k in ("train_loss", "val_loss")}
    if not losses:  # stopped by --max-steps before an epoch ended
        losses = {
            k.removesuffix("_step"): float(v)
            for k, v in model.trainer_.callback_metrics.items()
            if k in ("train_loss", "train_loss_step", "val_loss")
        }
    loss_text = ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items())) or "no loss logged"
    print(
        f"scgpt {args.command}: {model.trainer_.global_step} steps in {time.perf_counter() - start:.1f}s, "
        f"{loss_text}; model in {out}, losses in {Path(model.trainer_.logger.log_dir) / 'metrics.csv'}"
    )


# ============================================================================ subcommands
def _cmd_embed(args: argparse.Namespace) -> None:
    model = args.model if args.model is not None else settings.default_model
    if model is None:
        raise CLIError("no model: pass --model PATH (an scGPT model folder, or 'demo') or set $SCGPT_MODEL")
    _check_model(model)
    _check_input(args.input)
    out_path = Path(args.output).expanduser()
    if args.backed and args.input != PBMC68K and out_path.resolve() == Path(args.input).expanduser().resolve():
        raise CLIError("with --backed, --output must differ from --input")
    import anndata as ad

    from .model import resolve_device
    from .tl import embed

    try:
        device = resolve_device(args.device)
    except RuntimeError as e:
        raise CLIError(str(e)) from None
    adata = _read_h5ad(args.input, backed=args.backed)
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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out_path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    logger.info(f"saved {path}")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    given = [f"--{k.replace('_', '-')}" for k in ARCHITECTURE if getattr(args, k) is not None]
    if args.model is not None and (given or args.vocab != "inputs"):
        raise CLIError(
            f"{', '.join(given + ['--vocab'] * (args.vocab != 'inputs'))}: only for a new model "
            "(the architecture and vocabulary of --model are kept)"
        )
    for p in args.input:
        _check_input(p)
        if args.lazy and p == PBMC68K:
            raise CLIError(f"--input {PBMC68K} is held in memory; drop --lazy")
    out = _prepare_output(args)
    adata = None if args.lazy else _read_training_data(args.input, args.layer, args.gene_key)
    _seed_init(args.seed)
    if args.model is None:
        model = _new_model(args, adata)
    else:
        model = _load_model(args.model, generative=args.recipe == "pretrain")
        if args.recipe == "pretrain" and not model.config.generative:  # e.g. a model.pt folder
            model = model.adapt(generative=True)
    if adata is None:
        _train_and_save(model, args, out, datamodule=_lazy_datamodule(model, args, _recipe(args)))
    else:
        model.setup_anndata(adata)
        _train_and_save(model, args, out, adata=adata)


def _categories(adata: AnnData, key: str, option: str) -> int:
    """Make ``obs[key]`` categorical without unused categories; the number of categories."""
    if key not in adata.obs:
        raise CLIError(f"{option} {key!r} is not an obs column (columns: {list(adata.obs.columns)})")
    adata.obs[key] = adata.obs[key].astype("category").cat.remove_unused_categories()
    return len(adata.obs[key].cat.categories)


def _cmd_finetune(args: argparse.Namespace) -> None:
    needed = {"annotation": ("labels_key", "--labels-key"), "integration": ("batch_key", "--batch-key")}
    dest, option = needed[args.recipe]
    if getattr(args, dest) is None:
        raise CLIError(f"--recipe {args.recipe} needs {option}")
    _check_input(args.input)
    out = _prepare_output(args)
    model = _load_model(args.model)
    adata = _counts(_read_h5ad(args.input), args.layer, args.gene_key)
    adata.obs = adata.obs.copy()  # categories are tidied below; the file's obs stays as it is
    n_labels = _categories(adata, args.labels_key, "--labels-key") if args.labels_key else None
    n_batches = _categories(adata, args.batch_key, "--batch-key") if args.batch_key else None
    if args.recipe == "annotation":
        changes: dict[str, Any] = {"n_cls": n_labels}
        logger.info(f"classification head over {n_labels} cell types of obs[{args.labels_key!r}]")
    else:
        changes = {
            "n_batch_labels": n_batches,
            "use_batch_labels": True,
            "batch_norm": "dsbn",
            "dab": True,
            "explicit_zero_prob": True,
        }
        if model.config.mvc_style is None:
            changes["mvc_style"] = "inner product"
        logger.info(f"batch conditioning over {n_batches} batches of obs[{args.batch_key!r}]")
    _seed_init(args.seed)
    model = model.adapt(**changes)
    model.setup_anndata(adata, labels_key=args.labels_key, batch_key=args.batch_key)
    _train_and_save(model, args, out, adata=adata)


# ============================================================================ entry point
def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scgpt`` command; returns the exit status (2 for user errors, reported in one line).

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    show_traceback = "--traceback" in argv[: next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))]
    try:
        _apply_config(argv, subparsers)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        func: Callable[[argparse.Namespace], None] = args.func
        with _verbosity(args.quiet):
            func(args)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (CLIError, OSError, ValueError, KeyError) as e:
        if show_traceback:
            raise
        print(f"scgpt: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
