"""Official scGPT model folders (``args.json`` + ``vocab.json`` + ``best_model.pt``).

Reading builds a :class:`~scgpt.nn.ScGPTConfig` from ``args.json`` for the sizes and from the
state-dict keys for which optional parts exist (the released ``args.json`` describes the
pretraining run, not the file: e.g. ``"MVC": true`` in folders without an MVC decoder).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import torch_save
from .._logging import warn
from ..data._vocab import PAD_TOKEN, GeneVocab
from ..nn import ScGPTConfig, ScGPTNet
from ._folder import ARGS_FILE, OFFICIAL_FILES, VOCAB_FILE, WEIGHTS_FILE, model_folder
from ._keymap import PRETRAINING_ONLY_KEYS, to_official, to_ours

_REQUIRED_ARGS = ("embsize", "nheads", "d_hid", "nlayers")


class CheckpointError(ValueError):
    """A model folder or checkpoint file that cannot be used as it is."""


class CheckpointWarning(UserWarning):
    """Some keys of a checkpoint did not load (missing, unexpected or of the wrong shape)."""


@dataclass
class OfficialCheckpoint:
    """Contents of an official model folder, in this package's terms."""

    config: ScGPTConfig
    vocab: GeneVocab
    state_dict: dict[str, Tensor]
    args: dict[str, Any]
    path: Path | None = None
    mod_vocab: GeneVocab | None = None


@dataclass
class LoadReport:
    """Keys that did not load cleanly."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Whether every model parameter loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self, source: str) -> str:
        """One human-readable summary."""
        lines = [f"Not every key of {source} loaded cleanly:"]
        if self.missing:
            lines.append(f"  missing from the checkpoint (left at their initial values): {self.missing}")
        if self.unexpected:
            lines.append(f"  in the checkpoint but not in the model (ignored): {self.unexpected}")
        for key, got, want in self.mismatched:
            lines.append(f"  shape mismatch for {key}: checkpoint {got}, model {want} (not loaded)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- reading
def _check_folder(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"No scGPT model folder at {str(path)!r}. Point to a folder holding {ARGS_FILE}, {VOCAB_FILE} and "
            f"{WEIGHTS_FILE}, as downloaded from the scGPT model zoo (e.g. scGPT_human)."
        )
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a file; expected the model folder that contains it.")
    missing = [f for f in (ARGS_FILE, VOCAB_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The scGPT model folder {str(path)!r} lacks {', '.join(missing)}; an official folder holds "
            f"{ARGS_FILE}, {VOCAB_FILE} and {WEIGHTS_FILE}."
        )


def read_args(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``args.json``."""
    path = Path(path)
    try:
        args = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not a text file: {e}") from e
    if not isinstance(args, dict):
        raise CheckpointError(f"{path} must hold a JSON object of training arguments, got {type(args).__name__}.")
    missing = [k for k in _REQUIRED_ARGS if k not in args]
    if missing:
        raise CheckpointError(f"{path} lacks the model-size arguments {missing} (needed: {list(_REQUIRED_ARGS)}).")
    bad = [k for k in _REQUIRED_ARGS if not isinstance(args[k], int) or isinstance(args[k], bool) or args[k] <= 0]
    if bad:
        raise CheckpointError(f"{path}: {', '.join(f'{k}={args[k]!r}' for k in bad)} must be positive integers.")
    return args


def read_state_dict(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Load a ``best_model.pt`` safely (``weights_only=True``) and check it holds tensors."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # zip (torch >= 1.6) or legacy pickle
        raise CheckpointError(
            f"{path} ({path.stat().st_size:,} bytes) could not be read as a PyTorch checkpoint: it starts with "
            f"{magic!r}, not a zip archive or a pickle (an HTML page or an incomplete download?)."
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds Python objects besides tensors, which are not loaded for safety "
            f"(torch.load weights_only=True). An official best_model.pt is a plain state_dict. Details: {e}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path} ({size:,} bytes) could not be read as a PyTorch checkpoint; it may be truncated (an "
            f"interrupted download) or not a checkpoint at all. Details: {e}"
        ) from e
    if isinstance(obj, dict):
        for wrapper in ("model_state_dict", "state_dict", "model"):  # common training-loop wrappers
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:5]}"
        raise CheckpointError(f"{path} does not hold a state_dict of tensors (got a {kind}).")
    if "encoder.embedding.weight" not in {to_ours(k) for k in obj}:
        raise CheckpointError(
            f"{path} does not look like an scGPT checkpoint: it has no 'encoder.embedding.weight' "
            f"(first keys: {list(obj)[:5]})."
        )
    return obj


def _layer_count(state: dict[str, Tensor]) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(r"transformer_encoder\.layers\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _linear_count(state: dict[str, Tensor], prefix: str) -> int:
    return sum(1 for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight") and v.ndim == 2)


def config_from_official(
    args: dict[str, Any], state: dict[str, Tensor], vocab: GeneVocab, *, generative: bool = False
) -> ScGPTConfig:
    """Architecture of an official checkpoint: sizes from ``args``, optional parts from ``state`` keys.

    ``generative=True`` keeps the generative-pretraining flag embedding (``flag_encoder``), which
    inference does not use, e.g. to continue pretraining.
    """
    has = lambda prefix: any(k.startswith(prefix) for k in state)  # noqa: E731
    d = int(args["embsize"])
    pad_token = args.get("pad_token", PAD_TOKEN)
    if pad_token not in vocab:
        raise CheckpointError(f"The vocabulary lacks the padding token {pad_token!r} named in args.json.")
    n_emb = state["encoder.embedding.weight"].shape[0]
    if n_emb != len(vocab):
        raise CheckpointError(
            f"vocab.json has {len(vocab):,} tokens but the gene embedding table in the weights has {n_emb:,} rows; "
            "the vocabulary does not belong to these weights."
        )
    style = args.get("input_emb_style", "continuous")
    n_input_bins = None
    if style == "category":  # the official category encoder embeds n_bins bins, <pad> (n_bins) and <mask> (n_bins + 1)
        n_bins = int(args.get("n_bins", 51))
        n_input_bins = state["value_encoder.embedding.weight"].shape[0] if has("value_encoder.embedding") else None
        if n_input_bins is not None and n_input_bins != n_bins + 2:
            raise CheckpointError(
                f"args.json says n_bins={n_bins}, but the value embedding of the weights has {n_input_bins} rows "
                f"(n_bins + 2 = {n_bins + 2} expected): the values would be binned for another encoder."
            )
        n_input_bins = n_input_bins or n_bins + 2

    n_batch = None
    batch_norm = None
    n_dsbn = len({k.split(".")[2] for k in state if k.startswith("dsbn.bns.")})
    if n_dsbn:
        batch_norm, n_batch = "dsbn", n_dsbn
    elif has("bn."):
        batch_norm = "batchnorm"
    if has("batch_encoder."):
        n_batch = state["batch_encoder.embedding.weight"].shape[0]
    if has("grad_reverse_discriminator."):
        n_batch = n_batch or state["grad_reverse_discriminator.out_layer.weight"].shape[0]

    n_mod = mod_pad = None
    if has("mod_encoder."):
        n_mod = state["mod_encoder.embedding.weight"].shape[0]
        mod_vocab = args.get("mod_vocab")
        mod_pad = mod_vocab.get(pad_token) if isinstance(mod_vocab, dict) else None

    mvc_style = None
    mvc_conditioned = False
    if has("mvc_decoder."):
        g2q = state["mvc_decoder.gene2query.weight"]
        if "mvc_decoder.W.weight" in state:
            mvc_style = args.get("mvc_decoder_style", "inner product")
            if not str(mvc_style).startswith("inner product"):
                mvc_style = "inner product"
        elif g2q.shape[0] == 64 and state["mvc_decoder.fc1.weight"].shape[1] != g2q.shape[0]:
            mvc_style = "concat query"
        else:
            mvc_style = "sum query"
        mvc_conditioned = g2q.shape[1] == 2 * d

    affine = has("decoder.coeff_decoder.")
    zero_prob = has("decoder.zero_logit.") or has("decoder.coeff_decoder.zero_logit.")
    n_cls = state["cls_decoder.out_layer.weight"].shape[0] if has("cls_decoder.") else None
    head = "cls_decoder._decoder." if n_cls else "grad_reverse_discriminator._decoder."
    n_layers_cls = _linear_count(state, head) + 1 if has(head) else int(args.get("n_layers_cls", 3))

    return ScGPTConfig(
        n_tokens=len(vocab),
        pad_token_id=vocab[pad_token],
        d_model=d,
        n_heads=int(args["nheads"]),
        d_hid=int(args["d_hid"]),
        n_layers=int(args["nlayers"]),
        dropout=float(args.get("dropout", 0.2)),
        attn_dropout=None if args.get("attn_dropout") is None else float(args["attn_dropout"]),
        pad_value=float(args.get("pad_value", -2)),
        pre_norm=bool(args.get("pre_norm", False)),
        input_emb_style=style,
        n_input_bins=n_input_bins,
        cell_emb_style=args.get("cell_emb_style", "cls"),
        n_batch_labels=n_batch,
        use_batch_labels=has("batch_encoder."),
        batch_norm=batch_norm,
        dsbn_affine=any(k.startswith("dsbn.bns.0.weight") for k in state),
        n_modalities=n_mod,
        mod_pad_id=mod_pad,
        n_pert_flags=state["pert_encoder.weight"].shape[0] if "pert_encoder.weight" in state else None,
        pert_pad_id=int(args.get("pert_pad_id", 0)),
        expr_decoder="affine" if affine else "mlp",
        expr_decoder_activation=args.get("decoder_activation") if affine else None,
        expr_decoder_adaptive_bias=bool(args.get("decoder_adaptive_bias", False)) if affine else False,
        explicit_zero_prob=zero_prob,
        mvc_style=mvc_style,
        mvc_conditioned_query=mvc_conditioned,
        n_cls=n_cls,
        n_layers_cls=n_layers_cls,
        dab=has("grad_reverse_discriminator."),
        generative=generative,
    )


def read_official(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu", generative: bool = False
) -> OfficialCheckpoint:
    """Read an official scGPT model folder.

    Parameters
    ----------
    path
        Folder with ``args.json``, ``vocab.json`` and ``best_model.pt``.
    map_location
        Where tensors are loaded.
    generative
        Keep the generative-pretraining flag embedding (``flag_encoder``; ignored by default since
        inference never uses it).

    Returns
    -------
    The inferred config, the vocabulary, the state dict with keys renamed to this package's
    layout (flash-attn ``Wqkv`` -> ``in_proj_*``), and the raw ``args``.
    """
    path = Path(path).expanduser()
    _check_folder(path)
    args = read_args(path / ARGS_FILE)
    try:
        vocab = GeneVocab.from_file(path / VOCAB_FILE)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    raw = read_state_dict(path / WEIGHTS_FILE, map_location=map_location)
    state = {to_ours(k): v for k, v in raw.items()}
    if n := _layer_count(state):
        if n != int(args["nlayers"]):
            warn(
                f"{path / ARGS_FILE} says nlayers={args['nlayers']} but the weights have {n} layers; "
                "the weights' layer count is used.",
                CheckpointWarning,
            )
            args = {**args, "nlayers": n}
    try:
        config = config_from_official(args, state, vocab, generative=generative)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path / ARGS_FILE} describes a model that cannot be built: {e}") from None
    mod_vocab = GeneVocab(args["mod_vocab"]) if isinstance(args.get("mod_vocab"), dict) else None
    return OfficialCheckpoint(config, vocab, state, args, path, mod_vocab)


HEADS = ("decoder.", "mvc_decoder.", "cls_decoder.", "grad_reverse_discriminator.", "flag_encoder.")
"""Optional output heads: a checkpoint without them still gives correct embeddings."""


def check_finite(state: dict[str, Tensor], source: str) -> None:
    """Raise for NaN or infinite weights (every output of such a model would be NaN), naming the tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or infinite values in {len(bad)} tensors (e.g. {bad[:3]}); the weights are damaged "
            "(a diverged training run or a corrupt file) and would make every output NaN."
        )


def load_state_dict_reported(
    net: torch.nn.Module,
    state: dict[str, Tensor],
    *,
    strict: bool = False,
    source: str = "the checkpoint",
    ignore: frozenset[str] | set[str] = PRETRAINING_ONLY_KEYS,
) -> LoadReport:
    """Load what matches by name and shape; report the rest in one warning (or error if ``strict``).

    Only the optional output heads (:data:`HEADS`) may be missing or mismatched: a difference in the
    encoder, the transformer or the conditioning means that ``args.json`` contradicts the weights (sizes,
    ``input_emb_style``, ``n_bins``), and the model would run mostly on random weights, so it is always
    an error. NaN or infinite weights are an error too.
    """
    check_finite(state, source)
    own = net.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in state.items():
        if key not in own:
            (report.ignored if key in ignore else report.unexpected).append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state]
    core = [k for k in [*report.missing, *(m[0] for m in report.mismatched)] if not k.startswith(HEADS)]
    if core:
        raise CheckpointError(
            report.message(source)
            + f"\n{len(core)} of these are not optional heads (e.g. {core[:3]}): the model described by args.json "
            "(sizes, input_emb_style, n_bins) does not match the weights, and would run mostly on random weights."
        )
    if not report.clean and strict:
        raise CheckpointError(report.message(source))
    net.load_state_dict(usable, strict=False)
    if not report.clean:
        warn(report.message(source), CheckpointWarning)
    return report


def load_official(
    path: str | os.PathLike, *, strict: bool = False, map_location: str | torch.device = "cpu", generative: bool = False
) -> tuple[ScGPTNet, OfficialCheckpoint, LoadReport]:
    """Build an :class:`~scgpt.nn.ScGPTNet` from an official folder and load its weights (eval mode)."""
    ckpt = read_official(path, map_location=map_location, generative=generative)
    net = ScGPTNet(ckpt.config)
    report = load_state_dict_reported(net, ckpt.state_dict, strict=strict, source=str(ckpt.path / WEIGHTS_FILE))
    return net.eval(), ckpt, report


# ---------------------------------------------------------------------------- writing
def official_args(config: ScGPTConfig, base: dict[str, Any] | None = None, mod_vocab: GeneVocab | None = None) -> dict:
    """``args.json`` content for a config, updating ``base`` (e.g. the args the model was loaded with)."""
    args = dict(base or {})
    args.update(
        embsize=config.d_model,
        nheads=config.n_heads,
        d_hid=config.d_hid,
        nlayers=config.n_layers,
        n_layers_cls=config.n_layers_cls,
        dropout=config.dropout,
        pad_token=args.get("pad_token", PAD_TOKEN),
        pad_value=int(config.pad_value) if float(config.pad_value).is_integer() else config.pad_value,
        input_emb_style=config.input_emb_style,
        cell_emb_style=config.cell_emb_style,
    )
    args.setdefault("n_bins", 51)
    if config.pre_norm:
        args["pre_norm"] = True
    if config.attn_dropout is not None:
        args["attn_dropout"] = config.attn_dropout
    if config.mvc_style:
        args["mvc_decoder_style"] = config.mvc_style
    if config.n_pert_flags:
        args["pert_pad_id"] = config.pert_pad_id
    if config.n_cls:
        args["n_cls"] = config.n_cls
    if mod_vocab is not None:
        args["mod_vocab"] = dict(zip(mod_vocab, range(len(mod_vocab))))
    return args


def official_state_dict(net: torch.nn.Module, *, attention_layout: str = "torch") -> dict[str, Tensor]:
    """The network's weights under official key names (``attention_layout`` ``"torch"`` or ``"flash"``)."""
    return {to_official(k, attention_layout=attention_layout): v.detach().cpu() for k, v in net.state_dict().items()}


def write_official(
    net: ScGPTNet,
    vocab: GeneVocab,
    paths: tuple[Path, Path, Path],
    *,
    args: dict[str, Any] | None = None,
    mod_vocab: GeneVocab | None = None,
    attention_layout: str = "torch",
) -> None:
    """Write ``args.json``, ``vocab.json`` and ``best_model.pt`` of an official folder to the three ``paths``."""
    if len(vocab) != net.config.n_tokens:
        raise ValueError(f"vocab has {len(vocab)} tokens but the network embeds {net.config.n_tokens}.")
    args_path, vocab_path, weights_path = paths
    args_path.write_text(json.dumps(official_args(net.config, args, mod_vocab), indent=2) + "\n")
    vocab.to_json(vocab_path)
    torch_save(official_state_dict(net, attention_layout=attention_layout), weights_path)


def save_official(
    net: ScGPTNet,
    vocab: GeneVocab,
    path: str | os.PathLike,
    *,
    args: dict[str, Any] | None = None,
    mod_vocab: GeneVocab | None = None,
    attention_layout: str = "torch",
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write an official model folder that the official ``scgpt`` code (and :func:`read_official`) loads.

    The three files are written to temporary names and moved into place together, so a failed write
    leaves the folder as it was. A folder holds one model: with ``overwrite=True`` a model already in
    it (in either format) is replaced, its ``model.pt`` included.

    Parameters
    ----------
    net
        The network.
    vocab
        Its gene vocabulary (size must match the embedding table).
    path
        Folder to write.
    args
        ``args.json`` content to start from (e.g. the one the model was loaded with); sizes are
        always written from ``net.config``.
    mod_vocab
        Modality vocabulary of a multi-omic model.
    attention_layout
        ``"torch"`` (``self_attn.in_proj_*``, what the official code saves without flash-attn) or
        ``"flash"`` (``self_attn.Wqkv.*``, the layout of the released weights).
    overwrite
        Replace a model already in the folder.
    extra_files
        ``{file name: text}`` written in the same group (e.g. the model card ``README.md``).
    """
    extra = dict(extra_files or {})
    with model_folder(path, (*OFFICIAL_FILES, *extra), overwrite=overwrite) as temps:
        write_official(
            net, vocab, temps[: len(OFFICIAL_FILES)], args=args, mod_vocab=mod_vocab, attention_layout=attention_layout
        )
        for tmp, text in zip(temps[len(OFFICIAL_FILES) :], extra.values(), strict=True):
            tmp.write_text(text)
    return Path(path).expanduser()
