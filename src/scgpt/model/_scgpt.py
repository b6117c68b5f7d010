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
from ..io._official import write_official
from ..nn import ScGPTConfig, ScGPTNet
from ._adapters import has_adapter, is_adapter_folder
from ._device import resolve_device
from ._inference import InferenceMixin
from ._training import TrainingMixin

if TYPE_CHECKING:
    from anndata import AnnData

DEMO = "demo"


def _demo_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("scgpt.model").joinpath("_demo")))


class ScGPT(InferenceMixin, TrainingMixin):
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
        self.adata: AnnData | None = None

    @classmethod
    def _from_parts(cls, net: ScGPTNet, vocab: GeneVocab, **kwargs: Any) -> ScGPT:
        self = cls.__new__(cls)
        self._init(net, vocab, **kwargs)
        return self

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
            PyTorch attention names), a folder written by :meth:`save`, or ``"demo"`` for the small
            demo model bundled with the package (a folder named ``demo`` that exists wins).
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
        src = Path(path).expanduser()
        if str(path) == DEMO and not src.exists():
            src, name = _demo_path(), DEMO
        else:
            name = str(src)
        if is_native(src) or is_adapter_folder(src):
            return cls.load(src, adata=adata, device=device, base=base)
        net, ckpt, _ = load_official(src, strict=strict, generative=generative)
        self = cls._from_parts(net, ckpt.vocab, args=ckpt.args, mod_vocab=ckpt.mod_vocab, source=name)
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
        for bit. ``attention_layout="flash"`` writes the flash-attn ``Wqkv`` names of the released
        weights instead of PyTorch's ``in_proj_*``. A folder holds one model: ``overwrite=True``
        replaces a model already there, in either format (a ``model.pt`` is removed). The files are
        written to temporary names first, so a failed write leaves the previous model intact.
        A model fine-tuned with adapters needs ``merged=True``: the official format holds plain weights,
        so the adapters are merged into them (:meth:`merge_adapter`).
        """
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
            args=self.args_,
            mod_vocab=self.mod_vocab,
            attention_layout=attention_layout,
            overwrite=overwrite,
        )

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
        }

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
        leaves the previous model intact.

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
            ``best_model.pt``), for the official code; :meth:`from_pretrained` reads ``model.pt``.
        merged
            For a model fine-tuned with adapters (``finetune(..., adapter="lora")``): ``False`` writes only what
            the fine-tune trained (``dir_path/adapter.pt``: adapters, heads, the task's parts, with the base
            model's name and weights' SHA-256; :meth:`load` puts it back on that base); ``True`` writes the
            plain model with the adapters merged into the weights (:meth:`merge_adapter`).
        """
        from ..io._folder import ADAPTER_FILE, ANNDATA_FILE, OFFICIAL_FILES, model_folder

        if save_anndata and self.adata is None:
            raise ValueError("save_anndata=True but no AnnData is bound to the model.")
        if has_adapter(self.net):
            if merged:
                return self.merge_adapter().save(
                    dir_path, overwrite=overwrite, save_anndata=save_anndata, official=official
                )
            if official:
                raise ValueError(
                    "The official format cannot hold adapters: pass merged=True to write the merged model, or "
                    "official=False to write the adapters alone (adapter.pt)."
                )
            from ._adapters import write_adapter

            files = [ADAPTER_FILE, *((ANNDATA_FILE,) if save_anndata else ())]
            with model_folder(dir_path, files, overwrite=overwrite) as temps:
                write_adapter(self, temps[0])
                if save_anndata:
                    self.adata.write_h5ad(temps[1])
            return Path(dir_path).expanduser()
        files = [MODEL_FILE, *(OFFICIAL_FILES if official else ()), *((ANNDATA_FILE,) if save_anndata else ())]
        ckpt = NativeCheckpoint(
            self.config, self.vocab, self.net.state_dict(), self.args_, self.mod_vocab, self._attrs()
        )
        with model_folder(dir_path, files, overwrite=overwrite) as temps:
            paths = dict(zip(files, temps, strict=True))
            write_native(ckpt, paths[MODEL_FILE])
            if official:
                write_official(
                    self.net, self.vocab, tuple(paths[f] for f in OFFICIAL_FILES), args=self.args_,
                    mod_vocab=self.mod_vocab,
                )  # fmt: skip
            if save_anndata:
                self.adata.write_h5ad(paths[ANNDATA_FILE])
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
            from ._adapters import load_adapter

            self = load_adapter(cls, dir_path, base=base, device=device)
        else:
            ckpt = load_native(dir_path)
            net = ScGPTNet(ckpt.config)
            load_native_weights(net, ckpt, dir_path)
            attrs = ckpt.attrs
            self = cls._from_parts(
                net.eval(), ckpt.vocab, args=ckpt.args, mod_vocab=ckpt.mod_vocab, source=attrs.get("source"),
                attrs=attrs,
            )  # fmt: skip
            self.to_device(device)
        if adata is None and (dir_path / "adata.h5ad").is_file():
            import anndata as ad

            adata = ad.read_h5ad(dir_path / "adata.h5ad")
        if adata is not None:
            self.adata = adata
        return self
