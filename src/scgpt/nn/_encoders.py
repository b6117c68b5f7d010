"""Token-level input encoders: gene identity, expression value, batch/modality label."""

from __future__ import annotations

from torch import Tensor, nn


class GeneEncoder(nn.Module):
    """Gene-token embedding followed by LayerNorm: ``(B, L) -> (B, L, d)``."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.enc_norm(self.embedding(tokens))


# A batch label or modality token is embedded exactly like a gene token.
BatchLabelEncoder = GeneEncoder


class ContinuousValueEncoder(nn.Module):
    """MLP from a scalar expression value to a vector: ``(B, L) -> (B, L, d)``.

    Values are clipped at ``max_value`` (512) before ``Linear(1, d) -> ReLU -> Linear(d, d)
    -> LayerNorm -> Dropout``.
    """

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.max_value = max_value

    def forward(self, values: Tensor) -> Tensor:
        x = values.unsqueeze(-1).clamp(max=self.max_value)  # (B, L, 1)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.dropout(self.norm(x))


class CategoryValueEncoder(nn.Module):
    """Embedding of the bin index of each value: ``(B, L) -> (B, L, d)``."""

    def __init__(self, n_bins: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_bins, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, values: Tensor) -> Tensor:
        return self.enc_norm(self.embedding(values.long()))


class ScalingValueEncoder(nn.Module):
    """The ``"scaling"`` style: the value multiplies the gene embedding (no parameters)."""

    def forward(self, values: Tensor) -> Tensor:
        return values.unsqueeze(-1)  # (B, L, 1), broadcast against the gene embedding


def build_value_encoder(style: str, d_model: int, dropout: float, n_bins: int | None, pad_value: float) -> nn.Module:
    """The value encoder for an ``input_emb_style``."""
    if style == "continuous":
        return ContinuousValueEncoder(d_model, dropout)
    if style == "category":
        return CategoryValueEncoder(int(n_bins), d_model, padding_idx=int(pad_value))
    return ScalingValueEncoder()


def combine_gene_and_value(gene_embs: Tensor, value_embs: Tensor, style: str) -> Tensor:
    """Token input: gene embedding plus (or, for ``"scaling"``, times) the value embedding."""
    return gene_embs * value_embs if style == "scaling" else gene_embs + value_embs


__all__ = [
    "BatchLabelEncoder",
    "CategoryValueEncoder",
    "ContinuousValueEncoder",
    "GeneEncoder",
    "ScalingValueEncoder",
    "build_value_encoder",
    "combine_gene_and_value",
]
