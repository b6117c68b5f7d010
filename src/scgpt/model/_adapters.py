"""Parameter-efficient fine-tuning: LoRA adapters on the transformer, through the ``peft`` library.

``ScGPT.finetune(task, adata, adapter="lora")`` keeps every pretrained weight of the trunk (gene and
value encoders, transformer layers) fixed and trains

- low-rank adapters (``peft`` LoRA) on chosen linear layers of every transformer layer, by default the
  attention's input and output projections and both feed-forward linears (:data:`LAYER_MODULES`);
- every part outside the trunk in full (:data:`TASK_PARTS`): the task heads (classifier, expression and
  MVC decoders, the adversarial batch discriminator) and the task-specific conditioning (domain-specific
  BatchNorm, batch, perturbation, modality and generative-flag encoders);
- the embeddings of tokens new to the base model (the proteins or peaks of a multi-omic model, through
  ``peft``'s trainable tokens), the rest of the gene-embedding table staying fixed.

The attention projections are ``nn.Linear`` modules called as modules (:class:`scgpt.nn.SelfAttention`),
so the adapters on them change what the network computes on every path (full encoder and the ``<cls>``
shortcut); a projection applied functionally would never be adapted.

An adapter model saves only what it trained (``adapter.pt``: adapters, heads, the task's parts, a few
megabytes) with the name of its base model and the SHA-256 of the base's weights, and loads on top of
that base only. The SHA-256 is computed over the base network's state dict (every tensor, in key order,
with its name, dtype and shape), not over a file: it is the same whichever format (official flash-attn or
PyTorch layout, this package's ``model.pt``) the base was read from, and it also identifies bases that
exist only in memory (a multi-omic model made with :func:`scgpt.model.with_modalities`).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._files import torch_save
from .._logging import logger
from ..io._folder import ADAPTER_FILE

if TYPE_CHECKING:
    from ..nn import ScGPTNet
    from ._scgpt import ScGPT

FORMAT = "scgpt-scverse-adapter"
FORMAT_VERSION = 1
ADAPTERS = ("lora",)
LAYER_MODULES = ("in_proj", "out_proj", "linear1", "linear2")
"""Linear layers of each transformer layer that can carry an adapter (all of them by default)."""
TASK_PARTS = (
    "cls_decoder",
    "decoder",
    "mvc_decoder",
    "grad_reverse_discriminator",
    "dsbn",
    "bn",
    "batch_encoder",
    "mod_encoder",
    "pert_encoder",
    "flag_encoder",
)
"""Top-level parts of :class:`~scgpt.nn.ScGPTNet` trained in full under an adapter (heads and task conditioning)."""
INSTALL_HINT = 'pip install "peft>=0.17" (or pip install ".[peft]" in a clone of scgpt-scverse)'


def require_peft():
    """The ``peft`` module, or an ImportError with the install command."""
    try:
        import peft
    except ImportError:
        raise ImportError(f"adapter='lora' needs the peft library, which is not installed: {INSTALL_HINT}.") from None
    return peft


# ------------------------------------------------------------------ identity of a base model
def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor in key order, with its name, dtype and shape.

    Independent of the file format the weights were read from and of the device they sit on.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ adding, inspecting and merging adapters
def has_adapter(net: torch.nn.Module) -> bool:
    """Whether ``peft`` adapters are injected into the network."""
    return hasattr(net, "peft_config")


def _is_trained(key: str) -> bool:
    """Whether a parameter or state-dict key of an adapter network is trained (and saved)."""
    return ".lora_" in key or "trainable_tokens_delta" in key or key.split(".", 1)[0] in TASK_PARTS


def set_trainable(net: torch.nn.Module) -> None:
    """``requires_grad`` on the adapters and :data:`TASK_PARTS` of an adapter network, off elsewhere."""
    for name, p in net.named_parameters():
        p.requires_grad_(_is_trained(name))


def new_token_ids(model: ScGPT) -> list[int]:
    """Vocabulary ids of the tokens of non-RNA modalities (multi-omic models), trained under an adapter."""
    from ._multiomic import modality_names, token_modality

    ids = token_modality(model)
    if ids is None:
        return []
    first = model.mod_vocab[modality_names(model)[0]]
    specials = {model.mod_vocab[s] for s in model.mod_vocab.itos if s not in modality_names(model)}
    return [int(i) for i in np.flatnonzero((ids != first) & ~np.isin(ids, list(specials)))]


def _check_settings(kind: str, rank: int, alpha: float, dropout: float, modules: Sequence[str]) -> list[str]:
    if kind not in ADAPTERS:
        raise ValueError(f"adapter must be None or one of {ADAPTERS}, got {kind!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise ValueError(f"adapter_rank must be a positive integer, got {rank!r}.")
    if not alpha > 0:
        raise ValueError(f"adapter_alpha must be positive, got {alpha!r}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"adapter_dropout must be in [0, 1), got {dropout!r}.")
    modules = [modules] if isinstance(modules, str) else list(modules)
    bad = [m for m in modules if m not in LAYER_MODULES]
    if bad or not modules:
        raise ValueError(
            f"adapter_modules must name some of {LAYER_MODULES} (linear layers of each transformer layer), got "
            f"{modules!r}."
        )
    return modules


def inject(net: ScGPTNet, settings: Mapping[str, Any]) -> None:
    """Inject the adapters that ``settings`` describe into ``net`` (in place) and mark what trains."""
    peft = require_peft()
    pattern = r"transformer_encoder\.layers\.\d+\.(" + "|".join(
        {"in_proj": r"self_attn\.in_proj", "out_proj": r"self_attn\.out_proj"}.get(m, m) for m in settings["modules"]
    ) + ")"  # fmt: skip
    tokens = settings.get("token_indices") or None
    config = peft.LoraConfig(
        r=int(settings["rank"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings["dropout"]),
        target_modules=pattern,
        bias="none",
        trainable_token_indices={"encoder.embedding": list(tokens)} if tokens else None,
    )
    peft.inject_adapter_in_model(config, net)
    set_trainable(net)


def add_adapter(
    model: ScGPT,
    kind: str,
    *,
    base: ScGPT,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    modules: Sequence[str] | None = None,
) -> None:
    """Put adapters on ``model`` (the base with its task heads) in place and record the base's identity.

    Parameters
    ----------
    model
        The model to fine-tune (``base.adapt(...)``: the base's weights plus the task's new parts).
    kind
        ``"lora"``.
    base
        The pretrained model the adapters are trained on (its name and weights' SHA-256 are recorded).
    rank, alpha, dropout
        LoRA rank ``r``, scaling ``alpha`` (updates are scaled by ``alpha / r``) and dropout on the adapters' input.
    modules
        Linear layers of each transformer layer to adapt (default: :data:`LAYER_MODULES`).
    """
    if has_adapter(base.net):
        raise ValueError(
            "This model carries adapters already; merge them first (model.merge_adapter()) to fine-tune it again."
        )
    modules = _check_settings(kind, rank, alpha, dropout, LAYER_MODULES if modules is None else modules)
    settings = {
        "kind": kind,
        "rank": int(rank),
        "alpha": float(alpha),
        "dropout": float(dropout),
        "modules": modules,
        "token_indices": new_token_ids(model),
    }
    inject(model.net, settings)
    model.registry_["adapter"] = {
        **settings,
        "base": base.source_,
        "base_sha256": weights_sha256(base.net.state_dict()),
    }
    n_train, n_all = trained_parameters(model.net)
    logger.info(
        f"    {kind} adapters (rank {rank}) on {', '.join(modules)} of {model.config.n_layers} layers: "
        f"{n_train:,} of {n_all:,} parameters trained ({100 * n_train / n_all:.2f} %)"
    )


def trained_parameters(net: torch.nn.Module) -> tuple[int, int]:
    """``(trained, all)`` parameter counts; adapter matrices count as parameters of the model."""
    params = list(net.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merged_net(net: ScGPTNet) -> ScGPTNet:
    """A plain copy of ``net`` with its adapters merged into the base weights (``net`` itself when it has none)."""
    if not has_adapter(net):
        return net
    from peft.tuners.tuners_utils import BaseTunerLayer

    net = copy.deepcopy(net)
    wrappers: list[str] = []
    for name, module in net.named_modules():
        inside = any(name.startswith(w + ".") for w in wrappers)
        if not inside and (hasattr(module, "unload_and_optionally_merge_module") or isinstance(module, BaseTunerLayer)):
            wrappers.append(name)
    for name in wrappers:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        module = getattr(parent, child)
        if hasattr(module, "unload_and_optionally_merge_module"):  # trainable-token embeddings
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:  # a LoRA layer
            module.merge(safe_merge=True)
            plain = module.get_base_layer()
        setattr(parent, child, plain)
    del net.peft_config
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def merge(model: ScGPT) -> ScGPT:
    """A plain copy of an adapter model, with its adapters merged into the weights (see ``ScGPT.merge_adapter``)."""
    if not has_adapter(model.net):
        raise ValueError("This model has no adapter to merge (it was not fine-tuned with adapter='lora').")
    attrs = copy.deepcopy(model._attrs())
    registry = attrs["registry"]
    registry["merged_adapter"] = registry.pop("adapter")
    new = type(model)._from_parts(
        merged_net(model.net),
        model.vocab,
        args=copy.deepcopy(model.args_),
        mod_vocab=model.mod_vocab,
        source=model.source_,
        attrs=attrs,
    )
    new.adata = model.adata
    return new


# ------------------------------------------------------------------ saving and loading
def is_adapter_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding an ``adapter.pt``."""
    return (Path(path).expanduser() / ADAPTER_FILE).is_file()


def trained_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter fine-tune changed: adapters, new-token embeddings and :data:`TASK_PARTS`."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if _is_trained(k)}


def write_adapter(model: ScGPT, target: Path) -> None:
    """Write the ``adapter.pt`` of an adapter model to ``target``."""
    info = model.registry_["adapter"]
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "args": model.args_,
        "attrs": model._attrs(),
        "state_dict": trained_state(model.net),
    }
    payload["base"] = {"name": info["base"], "sha256": info["base_sha256"]}
    torch_save(payload, target)


def read_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of ``path/adapter.pt``."""
    from ..io._official import CheckpointError

    target = Path(path).expanduser() / ADAPTER_FILE
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{target} could not be read as a saved scgpt adapter: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{target} is not an adapter saved by scgpt (no '{FORMAT}' format marker).")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{target} was written by a newer scgpt (format {payload['format_version']}).")
    return payload


def load_adapter(
    cls: type[ScGPT],
    path: str | os.PathLike,
    *,
    base: ScGPT | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> ScGPT:
    """An adapter model: ``path/adapter.pt`` on top of its base model (see ``ScGPT.load``).

    ``base`` is the base model or where to load it from (default: the base's recorded name, a folder or
    ``"demo"``). A base whose weights differ from the one the adapters were trained on is refused.
    """
    from ..nn import ScGPTConfig

    path = Path(path).expanduser()
    payload = read_adapter(path)
    recorded = payload["base"]
    if base is None:
        name = recorded["name"]
        if name is None or (name != "demo" and not Path(name).expanduser().exists()):
            raise ValueError(
                f"{path / ADAPTER_FILE} holds adapters trained on the base model {name!r}, which is not found here; "
                "pass base= (the base model, or the folder it is in)."
            )
        base = name
    given = base if isinstance(base, cls) else cls.from_pretrained(base, device="cpu")
    sha = weights_sha256(given.net.state_dict())
    if sha != recorded["sha256"]:
        label = given.source_ if isinstance(base, cls) else str(base)
        raise ValueError(
            f"{path / ADAPTER_FILE} was trained on the base model {recorded['name']!r} (weights sha256 "
            f"{recorded['sha256'][:16]}...), but the base given ({label!r}) has other weights (sha256 {sha[:16]}...): "
            "load it on the base it was trained on (a multi-omic base: the same with_modalities(...) call)."
        )
    config = ScGPTConfig.from_dict(payload["config"])
    changes = {k: v for k, v in config.to_dict().items() if getattr(given.config, k) != v}
    with torch.random.fork_rng(devices=[]):  # the new parts' initialisation, overwritten below
        new = given.adapt(**changes)
    attrs = payload.get("attrs") or {}
    settings = attrs.get("registry", {}).get("adapter")
    if settings is None:
        from ..io._official import CheckpointError

        raise CheckpointError(f"{path / ADAPTER_FILE} records no adapter settings.")
    inject(new.net, settings)
    state = payload["state_dict"]
    expected = set(trained_state(new.net))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        from ..io._official import CheckpointError

        raise CheckpointError(
            f"{path / ADAPTER_FILE} does not fit its recorded settings (missing: {missing[:3]}, unexpected: "
            f"{unexpected[:3]}); the file was edited or damaged."
        )
    new.net.load_state_dict(state, strict=False)
    model = cls._from_parts(
        new.net.eval(), given.vocab, args=payload.get("args") or {}, mod_vocab=given.mod_vocab,
        source=attrs.get("source"), attrs=attrs,
    )  # fmt: skip
    model.to_device(device)
    return model
