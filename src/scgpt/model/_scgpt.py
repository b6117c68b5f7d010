"""``scgpt.model.ScGPT``: an scGPT network with its vocabulary, in the style of scvi-tools models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data._genes import default_vocab
from ..data._vocab import GeneVocab
from ..io import load_official, save_official
from ..io._native import MODEL_FILE, NativeCheckpoint, is_native, load_native, load_native_weights, write_native
from ..io._official import WEIGHTS_FILE, write_official
from ..nn import ScGPTConfig, ScGPTNet
from ._adapters import has_adapter, is_adapter_folder
from ._device import resolve_device
from ._engine import check_weights
from ._finetune import FinetuneMixin
from ._inference import InferenceMixin
from ._setup import SetupMixin
from ._training import TrainingMixin

if TYPE_CHECKING:
    from anndata import AnnData

DEMO = "demo"
REGISTRY_KEY = "scgpt_registry"
"""Key of the task registry (``registry_``) in ``args.json`` of an official folder (the official code ignores it)."""


def _json_ready(value: Any, where: str) -> Any:
    """``value`` with numpy scalars and arrays, tuples and paths made plain JSON (a clear error for anything else)."""
    import json

    import numpy as np

    def plain(v: Any) -> Any:
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        raise TypeError(f"{where} holds a {type(v).__name__}, which args.json cannot store: {v!r}")

    return json.loads(json.dumps(value, default=plain))


OFFICIAL_RECORD = "official_files"
"""Key, in a ``model.pt``'s attributes, of the SHA-256 of the official files saved with it (``save(official=True)``)."""


def _check_one_model(folder: Path, recorded: dict[str, str] | None) -> None:
    """Refuse a folder whose ``model.pt`` sits beside official files that were not saved with it.

    ``save(official=True)`` records the SHA-256 of the ``args.json``, ``vocab.json`` and ``best_model.pt`` it writes;
    official files that are missing from that record or differ from it (an official folder copied by hand over a
    folder written by :meth:`ScGPT.save`) make two different models in one folder, and neither may win silently.
    """
    from ..io._folder import OFFICIAL_FILES

    present = [f for f in OFFICIAL_FILES if (folder / f).is_file()]
    if not present:
        return
    from ..hub import file_sha256

    recorded = recorded or {}
    foreign = [f for f in present if recorded.get(f) != file_sha256(folder / f)]
    if foreign:
        raise ValueError(
            f"{folder} holds two different models: {MODEL_FILE} and {', '.join(foreign)}, which were not saved with "
            f"it (an official folder copied over one written by ScGPT.save?). Remove {MODEL_FILE} to load the "
            f"official model, or remove {', '.join(OFFICIAL_FILES)} to load {MODEL_FILE}."
        )


def _demo_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("scgpt.model").joinpath("_demo")))


class ScGPT(SetupMixin, InferenceMixin, TrainingMixin, FinetuneMixin):
    """An scGPT model: network, gene vocabulary and what was learnt about the data it was set up with.

    Create one from published weights with :meth:`from_pretrained` (an official folder such as
    ``scGPT_human``, a folder written by :meth:`save`, or ``"demo"``), or a fresh one for
    pretraining with ``ScGPT(vocab=..., **architecture)``.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata` (optional; bind data later with the methods that take it).
    vocab
        Gene vocabulary (default: the bundled whole-human vocabulary).
    **config
        Architecture, see :class:`scgpt.nn.ScGPTConfig` (``d_model``, ``n_layers``, ...).

    Examples
    --------
    >>> model = scgpt.model.ScGPT.from_pretrained("path/to/scGPT_human")  # doctest: +SKIP
    >>> adata.obsm["X_scGPT"] = model.get_latent_representation(adata)  # doctest: +SKIP
    >>> clf = model.finetune("annotation", reference, labels_key="cell_type")  # doctest: +SKIP
    >>> probs = clf.predict_proba(query)  # doctest: +SKIP
    """

    def __init__(self, adata: AnnData | None = None, *, vocab: GeneVocab | None = None, **config: Any) -> None:
        if vocab is None:
            vocab = GeneVocab(default_vocab().itos)
        config.setdefault("n_tokens", len(vocab))
        config.setdefault("pad_token_id", vocab.pad_id)
        self._init(ScGPTNet(ScGPTConfig(**config)), vocab)
        if adata is not None:
            self.adata = adata

    def _init(
        self,
        net: ScGPTNet,
        vocab: GeneVocab,
        *,
        args: dict | None = None,
        mod_vocab: GeneVocab | None = None,
        source: str | None = None,
        attrs: dict | None = None,
    ) -> None:
        if len(vocab) != net.config.n_tokens:
            raise ValueError(f"The vocabulary has {len(vocab)} tokens but the network embeds {net.config.n_tokens}.")
        self.net = net
        self.vocab = vocab
        self.args_ = dict(args or {})
        self.mod_vocab = mod_vocab
        self.source_ = source
        attrs = attrs or {}
        self.history_: dict[str, list[float]] = attrs.get("history", {})
        self.registry_: dict[str, Any] = attrs.get("registry", {})
        self.is_trained_: bool = attrs.get("is_trained", source is not None)
        self.base_model_: dict[str, Any] | None = attrs.get("base_model")
        self.weights_file_: Path | None = None  # the file the weights were read from, while they are unchanged
        self.adata: AnnData | None = None

    @classmethod
    def _from_parts(cls, net: ScGPTNet, vocab: GeneVocab, **kwargs: Any) -> ScGPT:
        self = cls.__new__(cls)
        self._init(net, vocab, **kwargs)
        return self

    def _become(self, other: ScGPT) -> None:
        """Take over another model's network, vocabulary and records (``finetune(..., inplace=True)``)."""
        self.__dict__.clear()
        self.__dict__.update(other.__dict__)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> ScGPTConfig:
        """The network architecture."""
        return self.net.config

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.net.parameters()).device

    def to_device(self, device: str | torch.device | None = None) -> ScGPT:
        """Move the weights (``None``: best available device). Returns ``self``."""
        self.net.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        c = self.config
        n = self.net.num_parameters()
        src = f", from {self.source_!r}" if self.source_ else ""
        task = self.registry_.get("task")
        if task is not None:
            classes = self.registry_.get("label_categories")
            src += f", fine-tuned for {task!r}" + (f" ({len(classes)} classes)" if classes else "")
        adapter = self.registry_.get("adapter")
        if adapter is not None:
            src += f", {adapter['kind']} adapters of rank {adapter['rank']}"
        size = f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"
        return (
            f"ScGPT({c.n_layers} layers x {c.d_model} wide, {c.n_heads} heads, {len(self.vocab):,} tokens, "
            f"{size} parameters{src})"
        )

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        adata: AnnData | None = None,
        strict: bool = False,
        device: str | torch.device | None = None,
        generative: bool = False,
        base: ScGPT | str | os.PathLike | None = None,
    ) -> ScGPT:
        """Load published weights.

        Parameters
        ----------
        path
            An official scGPT folder (``args.json``, ``vocab.json``, ``best_model.pt``; flash-attn or
            PyTorch attention names), a folder written by :meth:`save`, the name of a published model
            (``"scGPT_human"``, see :func:`scgpt.hub.list_models`: downloaded into the cache on first use,
            verified) or ``"demo"`` for the small demo model bundled with the package. A local folder of
            the same name wins.
        adata
            AnnData to bind (set up with :meth:`setup_anndata`).
        strict
            Raise instead of warn when keys are missing, unexpected or of the wrong shape.
        device
            Where to put the weights (``None``: best available).
        generative
            Keep the generative-pretraining flag embedding of the released weights (``flag_encoder``,
            unused by inference), to continue generative pretraining.
        base
            For a folder holding an ``adapter.pt`` (a fine-tune with ``adapter="lora"``): the base model
            the adapters were trained on, or where to load it from (default: the name recorded in the file).

        Returns
        -------
        The model, in eval mode. Keys that did not load are reported in one warning.
        """
        from .. import hub

        src = Path(path).expanduser()
        published = None if str(path) == DEMO else hub.resolve(path)  # downloads a published model once
        if str(path) == DEMO and not src.exists():
            src, name = _demo_path(), DEMO
        elif published is not None:
            src, name = published
        else:
            name = str(src)
            hint = hub.suggest(str(path)) if isinstance(path, str) and not src.exists() and "/" not in str(path) else []
            if hint:
                raise FileNotFoundError(
                    f"No scGPT model folder at {str(path)!r}, and no published model of that name; did you mean "
                    f"{' or '.join(map(repr, hint))}? (scgpt.hub.list_models() lists the published models.)"
                )
        if is_native(src) or is_adapter_folder(src):
            return cls.load(src, adata=adata, device=device, base=base)
        net, ckpt, _ = load_official(src, strict=strict, generative=generative)
        args = dict(ckpt.args)
        registry = args.pop(REGISTRY_KEY, None)  # the task it was fine-tuned for, written by save_pretrained
        attrs = {"registry": registry} if isinstance(registry, dict) else None
        self = cls._from_parts(net, ckpt.vocab, args=args, mod_vocab=ckpt.mod_vocab, source=name, attrs=attrs)
        self._loaded_from(src / WEIGHTS_FILE)
        self.to_device(device)
        if adata is not None:
            self.adata = adata
        return self

    def save_pretrained(
        self,
        path: str | os.PathLike,
        *,
        attention_layout: str = "torch",
        overwrite: bool = False,
        merged: bool = False,
    ) -> Path:
        """Write an official scGPT folder (``args.json``, ``vocab.json``, ``best_model.pt``).

        The official ``scgpt`` package and :meth:`from_pretrained` load it; weights round-trip bit
        for bit. A fine-tuned model's ``registry_`` (its task, gene panel, label and batch categories,
        ``batch_key``, modalities) is kept in ``args.json`` under ``"scgpt_registry"`` (the official code
        ignores it), so :meth:`from_pretrained` gives a model that knows its task again.
        ``attention_layout="flash"`` writes the flash-attn ``Wqkv`` names of the released
        weights instead of PyTorch's ``in_proj_*``. A folder holds one model: ``overwrite=True``
        replaces a model already there, in either format (a ``model.pt`` is removed). The files are
        written to temporary names first, so a failed write leaves the previous model intact. Weights with
        NaN or infinite values (a diverged training run) are refused.

        A model card, ``README.md``, is written beside the weights (base model and the SHA-256 of its
        weights, task, training data, objectives and hyperparameters, losses, package versions, licence;
        :meth:`card_info`), unless the folder holds a ``README.md`` written by someone else.

        A model fine-tuned with adapters needs ``merged=True``: the official format holds plain weights,
        so the adapters are merged into them (:meth:`merge_adapter`).
        """
        check_weights(self.net, "save_pretrained", writing=True)
        if has_adapter(self.net):
            if not merged:
                raise ValueError(
                    "This model carries adapters, which the official format cannot hold: pass merged=True to write "
                    "the merged weights, or use save() to write the adapters alone."
                )
            return self.merge_adapter().save_pretrained(path, attention_layout=attention_layout, overwrite=overwrite)
        return save_official(
            self.net,
            self.vocab,
            path,
            args=self._official_args(),
            mod_vocab=self.mod_vocab,
            attention_layout=attention_layout,
            overwrite=overwrite,
            extra_files=self._card_files(path, "official"),
        )

    def _official_args(self) -> dict[str, Any]:
        """``args.json`` content: the model's args, and the task registry of a fine-tuned model.

        The registry goes under :data:`REGISTRY_KEY`, so that a model saved in the official layout still knows its
        task, panel and categories.
        """
        args = {k: v for k, v in self.args_.items() if k != REGISTRY_KEY}
        if self.registry_:
            args[REGISTRY_KEY] = _json_ready(self.registry_, "registry_")
        return args

    def merge_adapter(self) -> ScGPT:
        """A plain copy of a model fine-tuned with adapters, the adapters merged into its weights.

        Its outputs equal this model's (to float rounding); it saves in every format and runs without
        ``peft``. This model is not modified.

        Returns
        -------
        The merged model; ``registry_["merged_adapter"]`` records the adapter settings and the base model.
        """
        from ._adapters import merge

        return merge(self)

    def _attrs(self) -> dict[str, Any]:
        return {
            "history": self.history_,
            "registry": self.registry_,
            "is_trained": self.is_trained_,
            "source": self.source_,
            "base_model": self.base_model(),
        }

    # ------------------------------------------------------------------ provenance and model cards
    def _loaded_from(self, weights: Path) -> None:
        """Remember the weights file (and its size and mtime: a file replaced later is not these weights)."""
        st = weights.stat()
        self.weights_file_ = weights
        self._weights_stamp = (st.st_size, st.st_mtime_ns)

    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights file this model was loaded from (``None`` if it was built or trained in memory).

        Computed once per file and cached by path, size and modification time (:func:`scgpt.hub.file_sha256`).
        ``None`` too when the file was replaced since it was loaded.
        """
        path = self.weights_file_
        if path is None or not Path(path).is_file():
            return None
        st = Path(path).stat()
        if (st.st_size, st.st_mtime_ns) != getattr(self, "_weights_stamp", None):
            return None
        from ..hub import file_sha256

        return file_sha256(path)

    def base_model(self) -> dict[str, Any]:
        """The published weights this model started from: ``{"name", "weights_sha256"}`` (``None`` where unknown).

        For a model loaded from a folder it is the folder itself (or the published name); a fine-tuned copy
        (:meth:`finetune`, :meth:`adapt`) keeps the model it was made from, also through :meth:`save`.
        """
        if self.base_model_ is not None:
            return dict(self.base_model_)
        return {"name": self.source_, "weights_sha256": self.weights_sha256()}

    def provenance(self, name: str | None = None) -> dict[str, Any]:
        """What a result records about the model that made it (for ``uns[key]["params"]``).

        Parameters
        ----------
        name
            How the model was given (a published name or a path; default: where it was loaded from).

        Returns
        -------
        ``{"scgpt_version", "model", "weights_sha256"}``; ``weights_sha256`` is that of the weights file the
        model was loaded from, ``None`` for a model built or trained in memory.
        """
        from .. import __version__

        return {"scgpt_version": __version__, "model": name or self.source_, "weights_sha256": self.weights_sha256()}

    def card_info(self, name: str | None = None) -> dict[str, Any]:
        """The facts of this model's card (``README.md``, written by :meth:`save_pretrained` and :meth:`save`).

        Parameters
        ----------
        name
            Title of the card (default: the folder name when saving).

        Returns
        -------
        Plain data for :func:`scgpt.hub.render_card`: base model and its weights' SHA-256, task, architecture,
        training data (label and batch categories, gene panel), recipe, loss history, evaluation results kept
        in ``registry_``, package versions and, for a published base model, its licence and citation.
        """
        import platform
        from datetime import UTC, datetime
        from importlib import metadata

        from .. import __version__, hub

        base = self.base_model()
        info: dict[str, Any] = {
            "name": name,
            "base_model": base.get("name"),
            "base_model_sha256": base.get("weights_sha256"),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if isinstance(base.get("name"), str) and hub.is_published(base["name"]):
            entry = hub.get_entry(base["name"])
            info.update(base_licence=entry.licence, base_citation=entry.citation)
        r = self.registry_
        c = self.config
        heads = [k for k in ("n_cls", "n_batch_labels") if getattr(c, k, None)]
        info["task"] = r.get("task") or (r.get("last_recipe") or {}).get("name")
        info["architecture"] = {
            "n_layers": c.n_layers, "d_model": c.d_model, "n_heads": c.n_heads, "vocab_size": len(self.vocab),
            "n_params": self.net.num_parameters(), "heads": [f"{k}={getattr(c, k)}" for k in heads],
        }  # fmt: skip
        info["training_data"] = {
            "labels_key": r.get("labels_key"),
            "label_categories": list(r.get("label_categories") or []),
            "batch_key": r.get("batch_key"),
            "batch_categories": list(r.get("batch_categories") or []),
            "n_tokens": len(r["tokens"]) if r.get("tokens") else None,
            "n_cells": r.get("n_cells"),
        }
        info["recipe"] = dict(r.get("last_recipe") or {})
        info["history"] = {k: list(v) for k, v in self.history_.items() if isinstance(v, list)}
        evaluation = {}
        for section, value in r.items():
            if isinstance(value, dict) and section != "last_recipe":
                evaluation.update({
                    f"{section}: {k}": f"{v:.4g}" if isinstance(v, float) else v
                    for k, v in value.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and any(
                        w in k for w in ("val", "test", "pearson", "accuracy", "f1", "score")
                    )
                })  # fmt: skip
        info["evaluation"] = evaluation
        versions = {"scgpt-scverse": __version__, "python": platform.python_version()}
        for dist in ("torch", "lightning", "anndata", "scanpy", "numpy"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        info["versions"] = versions
        return info

    def _card_files(self, path: str | os.PathLike, fmt: str) -> dict[str, str]:
        """``{"README.md": card text}`` for a save into ``path``; empty when a README.md there is someone else's."""
        from ..hub import CARD_FILE, is_card, render_card

        folder = Path(path).expanduser()
        if (folder / CARD_FILE).exists() and not is_card(folder / CARD_FILE):
            from .._logging import logger

            logger.info(f"    {folder / CARD_FILE} was not written by scgpt: left as it is (no model card written)")
            return {}
        info = self.card_info(folder.name)
        info.update(path=str(folder), format=fmt)
        return {CARD_FILE: render_card(info)}

    def save(
        self,
        dir_path: str | os.PathLike,
        *,
        overwrite: bool = False,
        save_anndata: bool = False,
        official: bool = False,
        merged: bool = False,
    ) -> Path:
        """Save in this package's format (``dir_path/model.pt``), with training history and data setup.

        A folder holds one model: ``overwrite=True`` replaces a model already there, in either format.
        All files are written to temporary names and moved into place together, so a failed write
        leaves the previous model intact. A model card, ``README.md``, is written with them (see
        :meth:`save_pretrained`). Weights with NaN or infinite values (a diverged training run) are refused.

        Parameters
        ----------
        dir_path
            Folder to write.
        overwrite
            Replace a model already in the folder.
        save_anndata
            Also write the bound AnnData as ``dir_path/adata.h5ad``.
        official
            Also write the official files of the same model (``args.json``, ``vocab.json``,
            ``best_model.pt``), for the official code; :meth:`from_pretrained` reads ``model.pt``, which
            records their SHA-256: official files in the folder that differ from the record (copied over it by
            hand) make :meth:`load` and :meth:`from_pretrained` refuse the folder rather than pick one model.
        merged
            For a model fine-tuned with adapters (``finetune(..., adapter="lora")``): ``False`` writes only what
            the fine-tune trained (``dir_path/adapter.pt``: adapters, heads, the task's parts, with the base
            model's name and weights' SHA-256; :meth:`load` puts it back on that base); ``True`` writes the
            plain model with the adapters merged into the weights (:meth:`merge_adapter`).
        """
        from ..io._folder import ANNDATA_FILE, OFFICIAL_FILES, model_folder

        if save_anndata and self.adata is None:
            raise ValueError("save_anndata=True but no AnnData is bound to the model.")
        check_weights(self.net, "save", writing=True)
        if has_adapter(self.net):
            if merged:
                return self.merge_adapter().save(
                    dir_path, overwrite=overwrite, save_anndata=save_anndata, official=official
                )
            return self._save_adapter(dir_path, overwrite=overwrite, save_anndata=save_anndata, official=official)
        card = self._card_files(dir_path, "native + official" if official else "native")
        files = [MODEL_FILE, *(OFFICIAL_FILES if official else ()), *((ANNDATA_FILE,) if save_anndata else ())]
        files += list(card)
        ckpt = NativeCheckpoint(
            self.config, self.vocab, self.net.state_dict(), self.args_, self.mod_vocab, self._attrs()
        )
        with model_folder(dir_path, files, overwrite=overwrite) as temps:
            paths = dict(zip(files, temps, strict=True))
            if official:  # first, so that model.pt records which official files were saved with it
                from ..hub import compute_sha256

                write_official(
                    self.net, self.vocab, tuple(paths[f] for f in OFFICIAL_FILES), args=self._official_args(),
                    mod_vocab=self.mod_vocab,
                )  # fmt: skip
                ckpt.attrs[OFFICIAL_RECORD] = {f: compute_sha256(paths[f]) for f in OFFICIAL_FILES}
            write_native(ckpt, paths[MODEL_FILE])
            if save_anndata:
                self.adata.write_h5ad(paths[ANNDATA_FILE])
            for fname, text in card.items():
                paths[fname].write_text(text)
        return Path(dir_path).expanduser()

    def _save_adapter(
        self, dir_path: str | os.PathLike, *, overwrite: bool, save_anndata: bool, official: bool
    ) -> Path:
        """``save`` of an adapter model: ``adapter.pt`` (what the fine-tune trained) and its model card."""
        from ..io._folder import ADAPTER_FILE, ANNDATA_FILE, model_folder
        from ._adapters import write_adapter

        if official:
            raise ValueError(
                "The official format cannot hold adapters: pass merged=True to write the merged model, or "
                "official=False to write the adapters alone (adapter.pt)."
            )
        card = self._card_files(dir_path, "adapter")
        files = [ADAPTER_FILE, *((ANNDATA_FILE,) if save_anndata else ()), *card]
        with model_folder(dir_path, files, overwrite=overwrite) as temps:
            paths = dict(zip(files, temps, strict=True))
            write_adapter(self, paths[ADAPTER_FILE])
            if save_anndata:
                self.adata.write_h5ad(paths[ANNDATA_FILE])
            for fname, text in card.items():
                paths[fname].write_text(text)
        return Path(dir_path).expanduser()

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        *,
        adata: AnnData | None = None,
        device: str | torch.device | None = None,
        base: ScGPT | str | os.PathLike | None = None,
    ) -> ScGPT:
        """Load a model written by :meth:`save`.

        ``adata`` is the AnnData to bind; without it, an ``adata.h5ad`` saved in the folder is read.
        A folder holding an ``adapter.pt`` loads on top of ``base``, the base model the adapters were trained on
        or where to load it from (default: the name recorded in the file); another base is refused.
        """
        dir_path = Path(dir_path).expanduser()
        if is_adapter_folder(dir_path) and not is_native(dir_path):
            from ..io._folder import ADAPTER_FILE
            from ._adapters import load_adapter

            self = load_adapter(cls, dir_path, base=base, device=device)
            self._loaded_from(dir_path / ADAPTER_FILE)  # provenance: the adapter file (it records its base)
            return self._bind_saved(dir_path, adata)
        ckpt = load_native(dir_path)
        _check_one_model(dir_path, ckpt.attrs.get(OFFICIAL_RECORD))
        net = ScGPTNet(ckpt.config)
        load_native_weights(net, ckpt, dir_path)
        attrs = ckpt.attrs
        self = cls._from_parts(
            net.eval(), ckpt.vocab, args=ckpt.args, mod_vocab=ckpt.mod_vocab, source=attrs.get("source"), attrs=attrs
        )
        self._loaded_from(dir_path / MODEL_FILE)
        if self.base_model_ is None:  # saved before base models were recorded: the base's hash is not known
            self.base_model_ = {"name": self.source_, "weights_sha256": None}
        self.to_device(device)
        return self._bind_saved(dir_path, adata)

    def _bind_saved(self, dir_path: Path, adata: AnnData | None) -> ScGPT:
        """Bind ``adata``, or the ``adata.h5ad`` saved in ``dir_path``; returns ``self``."""
        if adata is None and (dir_path / "adata.h5ad").is_file():
            import anndata as ad

            adata = ad.read_h5ad(dir_path / "adata.h5ad")
        if adata is not None:
            self.adata = adata
        return self
