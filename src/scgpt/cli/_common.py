"""What the subcommands of ``scgpt`` share: option groups, config files, input and output handling, errors.

Heavy modules (torch, scanpy, Lightning) are imported inside functions, so ``scgpt --help`` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import write_text
from .._logging import logger
from .._settings import settings

if TYPE_CHECKING:
    from anndata import AnnData

    from ..model import ScGPT

PBMC68K = "pbmc68k"
"""``--input`` value naming the bundled real cells (:func:`scgpt.datasets.pbmc68k_counts`)."""

MODEL_FILES = ("args.json", "vocab.json", "best_model.pt", "model.pt", "adapter.pt")
"""Files a training subcommand writes into ``--output`` (official folder + this package's ``model.pt``, or the
``adapter.pt`` of ``scgpt finetune --adapter lora``)."""

CHECKPOINTS = "checkpoints"

# Options of the training subcommands passed on as they are to ScGPT.train / ScGPT.finetune.
TRAIN_KWARGS = (
    "max_epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "max_length",
    "early_stopping",
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_checkpointing",
    "checkpoint_every_n_steps",
    "seed",
)


class CLIError(Exception):
    """A user error: reported as one line ``scgpt: error: ...`` with exit status 2."""


class Interrupted(Exception):
    """A command stopped by SIGTERM or SIGINT: reported in one line, exit status ``128 + signal`` (143, 130)."""

    def __init__(self, signum: int, what: str = "") -> None:
        self.signal, self.exit_code = signum, 128 + signum
        super().__init__(what)


# ============================================================================ parser
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the layout of descriptions and epilogs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # no "(default: None)" / "(default: False)" noise
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _devices(value: str) -> int | str:
    """``--devices``: a count (``2``), ``auto``, ``-1`` or a list of ids (``0,1``)."""
    return int(value) if value.lstrip("-").isdigit() else value


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or TOML file of options (keys: long option names, with dashes or underscores; a table named "
        "after the subcommand may hold its own options). Command-line options override it; relative paths are "
        "relative to the working directory.",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")


def add_data(p: argparse.ArgumentParser, *, several: bool) -> None:
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
            help=f".h5ad file or .zarr AnnData store with raw counts, or '{PBMC68K}' for 700 bundled real PBMCs",
        )
    g.add_argument("--layer", help="layer holding the raw counts (default: X)")
    g.add_argument("--gene-key", metavar="KEY", help="var column with gene symbols or Ensembl ids (default: var_names)")


def add_organism(p: argparse.ArgumentParser) -> None:
    """``--organism`` and ``--orthologs``: another species' genes read as their human orthologs."""
    p.add_argument(
        "--organism",
        default="human",
        metavar="SPECIES",
        help="species of the genes: human, mouse, macaque, cynomolgus, pig, rat, ... (or a Latin name); another "
        "species' genes are read as their human orthologs (bundled tables; see scgpt.pp.align_vocab)",
    )
    p.add_argument(
        "--orthologs",
        choices=("one2one", "all"),
        default="one2one",
        help="with --organism: one-to-one orthologs only, or all (counts of several genes with one human "
        "ortholog summed)",
    )


def species_options(args: argparse.Namespace) -> dict:
    """``organism``/``orthologs`` of the command line: empty for human genes, with clear errors."""
    from ..data import resolve_organism

    try:
        organism = resolve_organism(args.organism)
    except ValueError as e:
        raise CLIError(f"--organism {args.organism}: {e.args[0]}") from None
    if organism == "human":
        if args.orthologs != "one2one":
            raise CLIError("--orthologs is for another species' genes: pass --organism too")
        return {}
    return {"organism": organism, "orthologs": args.orthologs}


def add_training(p: argparse.ArgumentParser, *, finetune: bool) -> None:
    """Training options; for ``finetune`` the defaults are the task's (shown as 'the task's')."""
    task = " (default: the task's)" if finetune else ""
    g = p.add_argument_group("training")
    g.add_argument("--output", required=True, metavar="DIR", help="folder to write the trained model to")
    g.add_argument("--overwrite", action="store_true", help="replace a model already in --output (else it is an error)")
    g.add_argument(
        "--max-epochs", type=int, metavar="N", help=f"epochs{task or ' (default: 10 when --max-steps is not given)'}"
    )
    g.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (stops at whichever limit comes first)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=None if finetune else 32,
        metavar="N",
        help=f"cells per minibatch per device{task}",
    )
    g.add_argument("--lr", type=float, default=None if finetune else 1e-4, help=f"peak learning rate{task}")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (AdamW when > 0)")
    g.add_argument(
        "--schedule",
        choices=("cosine", "step", "constant"),
        default=None if finetune else "cosine",
        help=f"learning-rate curve{task}",
    )
    g.add_argument("--warmup-steps", type=int, default=0, metavar="N", help="warm-up steps of the cosine schedule")
    g.add_argument("--max-length", type=int, metavar="N", help="tokens per cell incl. <cls> (default: the task's)")
    if finetune:
        g.add_argument(
            "--validation-size",
            type=float,
            metavar="X",
            help="fraction of cells held out for validation (default: 0.1 with early stopping, else 0)",
        )
        g.add_argument(
            "--early-stopping",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="stop when the validation loss stops improving (default: the task's)",
        )
    else:
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
        "--checkpoint-every-n-steps",
        type=int,
        metavar="N",
        help="also save last.ckpt every N optimiser steps (it is saved at each epoch end in any case)",
    )
    g = p.add_argument_group("devices (PyTorch Lightning)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto")
    g.add_argument("--devices", type=_devices, default="auto", help="number of devices, a list of ids (0,1) or auto")
    g.add_argument("--strategy", default="auto", help="e.g. ddp for data-parallel training on several devices")
    g.add_argument("--num-nodes", type=int, default=1, metavar="N", help="machines (multi-node ddp)")
    g.add_argument("--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed (GPU)")
    g.add_argument("--accumulate-grad-batches", type=int, default=1, metavar="N", help="gradient accumulation")
    g.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each layer's activations in the backward pass: far less memory, about a third more time",
    )
    if finetune:
        g = p.add_argument_group("parameter-efficient fine-tuning")
        g.add_argument(
            "--adapter",
            choices=("lora",),
            help="train LoRA adapters and the task's heads only (the peft package); --output then holds "
            "adapter.pt, loaded on top of --model",
        )
        g.add_argument("--adapter-rank", type=int, default=8, metavar="R", help="LoRA rank")
        g.add_argument("--adapter-alpha", type=float, default=16.0, help="LoRA scaling (updates scaled by alpha/rank)")
        g.add_argument("--adapter-dropout", type=float, default=0.0, help="dropout on the adapters' input")
        g.add_argument(
            "--freeze-layers",
            type=int,
            default=0,
            metavar="N",
            help="keep the gene/value encoders and the first N transformer layers fixed (no adapters)",
        )


TRAINING_EPILOG = f"""\
output folder DIR:
  args.json, vocab.json, best_model.pt   official scGPT model folder (loads in the official scgpt code)
  model.pt                               this package's format: also label/batch categories and loss history;
                                         ScGPT.from_pretrained(DIR) and --model DIR read this one
  adapter.pt                             instead of the three above with --adapter lora: adapters and heads only
                                         (megabytes), loaded on top of the --model they were trained on
  {CHECKPOINTS}/last.ckpt                  Lightning checkpoint (for --resume)
  {CHECKPOINTS}/.../metrics.csv            per-step losses (the path is printed at the end)
  {CHECKPOINTS}/cli_args.json              the options: repeat the run with --config DIR/{CHECKPOINTS}/cli_args.json
"""


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


def apply_config(argv: Sequence[str], subparsers: dict[str, argparse.ArgumentParser]) -> None:
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
def verbosity(quiet: bool) -> Iterator[None]:
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


def check_input(path: str, *, soma: bool = False) -> None:
    """A clear error for a missing ``--input`` file (an ``.h5ad`` file or a ``.zarr`` AnnData store).

    With ``soma``, a TileDB-SOMA experiment (a folder or a remote URI) is accepted too.
    """
    from ..data import is_zarr_store

    if path == PBMC68K or Path(path).expanduser().is_file() or is_zarr_store(path):
        return
    if soma:
        from ..data import is_soma_experiment

        if is_soma_experiment(path):
            return
        raise CLIError(
            f"--input: no such file: {path} (an .h5ad file, a .zarr AnnData store or a TileDB-SOMA experiment)"
        )
    raise CLIError(f"--input: no such file: {path} (an .h5ad file or a .zarr AnnData store)")


def read_h5ad(path: str, *, backed: bool = False) -> AnnData:
    """Read an input ``.h5ad`` file or ``.zarr`` AnnData store, or the bundled cells for ``pbmc68k``.

    With ``backed`` the expression matrices stay on disk (:func:`scgpt._anndata.open_on_disk`).
    """
    check_input(path)
    if str(path).lower().endswith(".h5mu"):
        raise CLIError(
            f"--input {path} is a MuData file (.h5mu) and the command reads one AnnData (.h5ad or .zarr); for "
            "several modalities use Python: scgpt.tl.integrate(mudata.read_h5mu(PATH), MODEL, modalities=(...))"
        )
    if path == PBMC68K:
        if backed:
            raise CLIError(f"--input {PBMC68K} is held in memory; drop --backed/--lazy")
        from ..datasets import pbmc68k_counts

        return pbmc68k_counts()
    import anndata as ad

    from ..data import is_zarr_store, open_on_disk

    if backed:  # the matrices stay on disk: .h5ad opened backed, .zarr stores read a block of rows at a time
        adata = open_on_disk(path)
    elif is_zarr_store(path):
        adata = ad.read_zarr(Path(path).expanduser())
    else:
        adata = ad.read_h5ad(Path(path).expanduser())
    logger.info(f"read {path}: {adata.n_obs:,} cells x {adata.n_vars:,} genes{' (backed)' if backed else ''}")
    return adata


def check_model(path: str) -> None:
    """A clear error for a missing ``--model`` folder that is no published model's name either (with close names)."""
    from ..hub import is_published, suggest

    if path != "demo" and not Path(path).expanduser().exists() and not is_published(path):
        close = suggest(path) if "/" not in path else []
        hint = f"; did you mean {' or '.join(map(repr, close))}? ('scgpt models' lists the published models)"
        raise CLIError(f"--model: no such folder: {path}" + (hint if close else ""))


def load_model(path: str, *, generative: bool = False) -> ScGPT:
    """The model of ``--model`` (a folder, a published model's name, or ``demo``)."""
    from ..model import ScGPT

    check_model(path)
    model = ScGPT.from_pretrained(path, generative=generative)
    logger.info(f"loaded {model!r}")
    return model


def counts_adata(adata: AnnData, layer: str | None, gene_key: str | None) -> AnnData:
    """Return the counts of ``adata`` in ``X`` with gene names as ``var_names`` (no copy of the matrix)."""
    import anndata as ad
    import pandas as pd

    from ..data import gene_names, get_matrix

    names = gene_names(adata, gene_key)  # errors for a missing key and duplicated names
    return ad.AnnData(X=get_matrix(adata, layer), obs=adata.obs, var=pd.DataFrame(index=pd.Index(names, name=None)))


def read_training_data(paths: Sequence[str], layer: str | None, gene_key: str | None) -> AnnData:
    """Input files in memory, counts in ``X``; several files are joined by gene name (zeros where unmeasured)."""
    import anndata as ad
    import scipy.sparse as sp

    parts = [counts_adata(read_h5ad(p), layer, gene_key) for p in paths]
    if len(parts) == 1:
        return parts[0]
    for a in parts:
        a.X = sp.csr_matrix(a.X)
    adata = ad.concat(parts, join="outer", fill_value=0, index_unique="-")
    logger.info(f"joined {len(parts)} files: {adata.n_obs:,} cells x {adata.n_vars:,} genes")
    return adata


def prepare_output(args: argparse.Namespace) -> Path:
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
    write_text(out / CHECKPOINTS / "cli_args.json", record)
    return out


def train_and_save(train: Callable[..., ScGPT], args: argparse.Namespace, out: Path, **extra: Any) -> None:
    """Run ``train(**training options)``, write the model it returns into ``out`` in both formats, print a summary.

    ``train`` is ``ScGPT.train`` or ``ScGPT.finetune`` bound to the model and the data; ``extra`` adds options.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ..train import PLAN_OPTIONS, TrainingDiverged, TrainingInterrupted, no_checkpoint

    kwargs = {k: getattr(args, k) for k in TRAIN_KWARGS}
    kwargs["max_steps"] = -1 if args.max_steps is None else args.max_steps
    kwargs.update(extra)
    if getattr(getattr(train, "func", train), "__name__", "") == "train":  # ScGPT.train: the plan's own options
        kwargs["plan_kwargs"] = {k: kwargs.pop(k) for k in PLAN_OPTIONS if k in kwargs and kwargs[k] is not None}
        for k in PLAN_OPTIONS:
            kwargs.pop(k, None)
    ckpt_dir = out / CHECKPOINTS
    resume = args.resume
    if resume is True and not (ckpt_dir / "last.ckpt").is_file():
        logger.warning(f"--resume: {no_checkpoint(ckpt_dir)}; training starts over from step 0")
        resume = False
    elif resume:
        logger.info(f"resuming from {ckpt_dir / 'last.ckpt' if resume is True else resume}")
    start = time.perf_counter()
    from ..model import TrainingOutOfMemoryError

    try:
        model = train(checkpoint_dir=ckpt_dir, resume=resume, **kwargs)
    except (MisconfigurationException, TrainingDiverged, TrainingOutOfMemoryError) as e:
        raise CLIError(str(e)) from None
    except TrainingInterrupted as e:
        where = f"the checkpoint is {e.checkpoint}" if e.checkpoint else "no checkpoint was written yet"
        raise Interrupted(
            e.signal, f"training stopped at step {e.step}; {where}; run the same command with --resume to continue"
        ) from None
    if "adapter" in model.registry_:  # what was trained, a few megabytes; loads on top of --model
        model.save(out, overwrite=True)
        logger.info(f"wrote {out}: adapter.pt (adapters and heads; ScGPT.from_pretrained(DIR) loads it on its base)")
    else:
        model.save(out, overwrite=True, official=True)  # one model, both formats, replaced together
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
