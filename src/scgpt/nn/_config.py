"""Hyper-parameters of the scGPT network, as one frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

InputEmbStyle = Literal["continuous", "category", "scaling"]
CellEmbStyle = Literal["cls", "avg-pool", "w-pool"]
MVCStyle = Literal["inner product", "inner product, detach", "concat query", "sum query"]
BatchNormStyle = Literal["dsbn", "batchnorm"]
ExprDecoderStyle = Literal["mlp", "affine"]

_INPUT_EMB_STYLES = ("continuous", "category", "scaling")
_CELL_EMB_STYLES = ("cls", "avg-pool", "w-pool")
_MVC_STYLES = ("inner product", "inner product, detach", "concat query", "sum query")


@dataclass(frozen=True)
class ScGPTConfig:
    """Architecture of an scGPT network.

    One config describes every published variant: the whole-human base model, the fine-tuned
    annotation and integration models, the perturbation model (``n_pert_flags``) and the
    multi-omic model (``n_modalities``). Optional parts are switched on by giving them a size.

    Parameters
    ----------
    n_tokens
        Rows of the gene-token embedding table (the vocabulary size, specials included).
    pad_token_id
        Id of ``<pad>`` in the vocabulary.
    d_model
        Width of token embeddings and of the transformer.
    n_heads
        Attention heads per layer.
    d_hid
        Hidden width of the feed-forward block.
    n_layers
        Transformer layers.
    dropout
        Dropout probability (attention, feed-forward, value encoder).
    attn_dropout
        Dropout on attention weights, if different from ``dropout`` (``None``: ``dropout``, as the
        official model). 0 lets PyTorch use its fused attention kernels in training too, which on CPU
        saves the memory of the full attention matrices.
    pad_value
        Expression value written at padded positions (and, for zero-shot embedding, at ``<cls>``).
    pre_norm
        Layer-norm placement. ``False`` (post-norm) is what every released model uses.
    input_emb_style
        How an expression value becomes a vector: an MLP (``"continuous"``), an embedding of the
        bin index (``"category"``) or a scaling of the gene embedding (``"scaling"``).
    n_input_bins
        Rows of the value embedding table for ``input_emb_style="category"``.
    cell_emb_style
        How the cell embedding is read from the last layer: the ``<cls>`` token, the mean over
        tokens, or the value-weighted sum (L2-normalised).
    n_batch_labels
        Number of batch labels (for ``use_batch_labels``, DSBN and the adversarial discriminator).
    use_batch_labels
        Adds a batch-label encoder whose embedding is concatenated to every token before the
        expression decoder and to the cell embedding before MVC.
    batch_norm
        ``"dsbn"``: one BatchNorm per batch label after the input embedding;
        ``"batchnorm"``: one shared BatchNorm there (old fine-tuned checkpoints).
    dsbn_affine
        Whether the domain-specific BatchNorms have affine parameters.
    n_modalities
        Size of the modality vocabulary (multi-omic model). The modality embedding of each token
        is joined to the decoders' inputs, never to the transformer input.
    mod_pad_id
        Id of ``<pad>`` in the modality vocabulary (the padding row of the modality table).
    n_pert_flags
        Size of the perturbation-flag table (3 in the official perturbation model). Adds a
        flag embedding to every token.
    pert_pad_id
        Padding id of the perturbation-flag table.
    generative
        Adds the generative-pretraining flag embedding (``flag_encoder``).
    expr_decoder
        ``"mlp"``: expression predicted by an MLP; ``"affine"``: predicted as ``a * x + b`` with
        ``a`` and ``b`` from two MLPs (perturbation model).
    expr_decoder_activation
        Name of a ``torch.nn`` activation applied to ``a`` and ``b`` of the affine decoder.
    expr_decoder_adaptive_bias
        Scale ``b`` of the affine decoder by the mean nonzero input value of the cell.
    explicit_zero_prob
        Decoders also predict the probability that a value is nonzero.
    mvc_style
        Architecture of the masked-value-prediction-from-cell-embedding (MVC, GEPC) decoder,
        ``None`` for none.
    mvc_conditioned_query
        The MVC gene queries are joined with the batch/modality embedding too (multi-omic model).
    n_cls
        Classes of the classification head, ``None`` for none.
    n_layers_cls
        Layers of the classification head and of the adversarial discriminator.
    dab
        Adds the adversarial batch discriminator (needs ``n_batch_labels``).
    """

    n_tokens: int
    pad_token_id: int
    d_model: int = 512
    n_heads: int = 8
    d_hid: int = 512
    n_layers: int = 12
    dropout: float = 0.2
    attn_dropout: float | None = None
    pad_value: float = -2.0
    pre_norm: bool = False
    input_emb_style: InputEmbStyle = "continuous"
    n_input_bins: int | None = None
    cell_emb_style: CellEmbStyle = "cls"
    n_batch_labels: int | None = None
    use_batch_labels: bool = False
    batch_norm: BatchNormStyle | None = None
    dsbn_affine: bool = False
    n_modalities: int | None = None
    mod_pad_id: int | None = None
    n_pert_flags: int | None = None
    pert_pad_id: int = 0
    generative: bool = False
    expr_decoder: ExprDecoderStyle = "mlp"
    expr_decoder_activation: str | None = None
    expr_decoder_adaptive_bias: bool = False
    explicit_zero_prob: bool = False
    mvc_style: MVCStyle | None = "inner product"
    mvc_conditioned_query: bool = False
    n_cls: int | None = 1
    n_layers_cls: int = 3
    dab: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.n_tokens <= 0:
            problems.append(f"n_tokens must be positive, got {self.n_tokens}")
        if not 0 <= self.pad_token_id < self.n_tokens:
            problems.append(f"pad_token_id {self.pad_token_id} is outside the vocabulary (size {self.n_tokens})")
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads:
            problems.append(f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        if self.input_emb_style not in _INPUT_EMB_STYLES:
            problems.append(f"input_emb_style must be one of {_INPUT_EMB_STYLES}, got {self.input_emb_style!r}")
        if self.input_emb_style == "category" and not self.n_input_bins:
            problems.append("input_emb_style='category' needs n_input_bins")
        if self.cell_emb_style not in _CELL_EMB_STYLES:
            problems.append(f"cell_emb_style must be one of {_CELL_EMB_STYLES}, got {self.cell_emb_style!r}")
        if self.mvc_style is not None and self.mvc_style not in _MVC_STYLES:
            problems.append(f"mvc_style must be one of {_MVC_STYLES} or None, got {self.mvc_style!r}")
        if self.mvc_style in ("concat query", "sum query") and self.explicit_zero_prob:
            problems.append(f"mvc_style={self.mvc_style!r} has no explicit zero probability")
        if self.batch_norm not in (None, "dsbn", "batchnorm"):
            problems.append(f"batch_norm must be None, 'dsbn' or 'batchnorm', got {self.batch_norm!r}")
        if (self.use_batch_labels or self.batch_norm == "dsbn" or self.dab) and not self.n_batch_labels:
            problems.append("use_batch_labels, batch_norm='dsbn' and dab=True need n_batch_labels")
        if self.expr_decoder not in ("mlp", "affine"):
            problems.append(f"expr_decoder must be 'mlp' or 'affine', got {self.expr_decoder!r}")
        if self.n_layers_cls < 1:
            problems.append(f"n_layers_cls must be >= 1, got {self.n_layers_cls}")
        if problems:
            raise ValueError("Invalid ScGPTConfig: " + "; ".join(problems))

    @property
    def batch_conditioned(self) -> bool:
        """Whether the network reads each cell's batch label (batch encoder or domain-specific BatchNorm)."""
        return self.use_batch_labels or self.batch_norm == "dsbn"

    @property
    def conditioned(self) -> bool:
        """Whether decoders get a batch and/or modality embedding joined to their input."""
        return self.use_batch_labels or bool(self.n_modalities)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScGPTConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown ScGPTConfig fields: {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> ScGPTConfig:
        """Copy with some fields changed."""
        return self.from_dict({**self.to_dict(), **changes})
