"""Output heads: expression decoders, MVC (GEPC) decoder, classifier, adversarial batch discriminator.

Expression outputs follow the official convention: ``pred`` is the predicted value and
``zero_probs`` (only with an explicit zero probability) is the predicted probability that the
value is **nonzero**, the Bernoulli parameter of the official ``criterion_neg_log_bernoulli``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _mlp(d_in: int, d_model: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_model), nn.LeakyReLU(), nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, 1)
    )


class ExprDecoder(nn.Module):
    """Per-token expression value (and nonzero probability): ``(B, L, d_in) -> (B, L)``."""

    def __init__(self, d_model: int, d_in: int | None = None, explicit_zero_prob: bool = False) -> None:
        super().__init__()
        d_in = d_in or d_model
        self.fc = _mlp(d_in, d_model)
        self.zero_logit = _mlp(d_in, d_model) if explicit_zero_prob else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        pred = self.fc(x).squeeze(-1)
        if self.zero_logit is None:
            return pred, None
        return pred, torch.sigmoid(self.zero_logit(x).squeeze(-1))


class AffineExprDecoder(nn.Module):
    """Expression predicted as ``a * x + b`` (perturbation model): two :class:`ExprDecoder`.

    ``x`` is the token's input value; ``a`` and ``b`` come from the token state. The nonzero
    probability, when predicted, is the coefficient decoder's.
    """

    def __init__(
        self,
        d_model: int,
        explicit_zero_prob: bool = False,
        activation: str | None = None,
        adaptive_bias: bool = False,
    ) -> None:
        super().__init__()
        self.coeff_decoder = ExprDecoder(d_model, explicit_zero_prob=explicit_zero_prob)
        self.bias_decoder = ExprDecoder(d_model, explicit_zero_prob=explicit_zero_prob)
        if activation is not None and not hasattr(nn, activation):
            raise ValueError(f"Unknown activation {activation!r}: expected the name of a torch.nn module")
        self.activation = getattr(nn, activation)() if activation else None
        self.adaptive_bias = adaptive_bias

    def forward(self, x: Tensor, values: Tensor) -> tuple[Tensor, Tensor | None]:
        coeff, zero_probs = self.coeff_decoder(x)
        bias, _ = self.bias_decoder(x)
        if self.activation is not None:
            coeff, bias = self.activation(coeff), self.activation(bias)
        if self.adaptive_bias:
            nonzero_mean = values.sum(dim=1, keepdim=True) / (values != 0).sum(dim=1, keepdim=True)
            bias = bias * nonzero_mean
        return coeff * values + bias, zero_probs


class MVCDecoder(nn.Module):
    """Masked value prediction from the cell embedding (MVC, a.k.a. GEPC): ``-> (B, L)``.

    Each gene's value is predicted from the cell embedding and the gene's own token embedding
    (before values are added), so the cell embedding must carry the whole expression profile.

    Parameters
    ----------
    d_query
        Width of the gene-side input.
    d_cell
        Width of the cell-side input (``2 d`` when a batch embedding is joined to it).
    style
        ``"inner product"`` (the released models): ``pred = W(sigmoid(q(gene))) . cell``;
        ``"inner product, detach"``: the same on detached gene embeddings;
        ``"concat query"`` / ``"sum query"``: small MLPs over the joined query and cell vectors.
    explicit_zero_prob
        Also predict the nonzero probability (inner-product styles only).
    """

    def __init__(
        self, d_query: int, d_cell: int, style: str = "inner product", explicit_zero_prob: bool = False
    ) -> None:
        super().__init__()
        self.style = style
        self.detach = style.endswith("detach")
        if style.startswith("inner product"):
            self.gene2query = nn.Linear(d_query, d_query)
            self.W = nn.Linear(d_query, d_cell, bias=False)
            self.W_zero_logit = nn.Linear(d_query, d_cell) if explicit_zero_prob else None
        elif style == "concat query":
            self.gene2query = nn.Linear(d_query, 64)
            self.fc1 = nn.Linear(d_cell + 64, 64)
            self.hidden_activation = nn.PReLU()
            self.fc2 = nn.Linear(64, 1)
        elif style == "sum query":
            self.gene2query = nn.Linear(d_query, d_query)
            self.fc1 = nn.Linear(d_query, 64)
            self.hidden_activation = nn.PReLU()
            self.fc2 = nn.Linear(64, 1)
        else:
            raise ValueError(f"Unknown MVC decoder style {style!r}")

    def forward(self, cell_emb: Tensor, gene_embs: Tensor) -> tuple[Tensor, Tensor | None]:
        """``cell_emb``: ``(B, d_cell)``; ``gene_embs``: ``(B, L, d_query)``."""
        if self.detach:
            gene_embs = gene_embs.detach()
        query = torch.sigmoid(self.gene2query(gene_embs))  # (B, L, d_query | 64)
        if self.style.startswith("inner product"):
            cell = cell_emb.unsqueeze(2)  # (B, d_cell, 1)
            pred = torch.bmm(self.W(query), cell).squeeze(2)
            if self.W_zero_logit is None:
                return pred, None
            return pred, torch.sigmoid(torch.bmm(self.W_zero_logit(query), cell).squeeze(2))
        if self.style == "concat query":
            cell = cell_emb.unsqueeze(1).expand(-1, gene_embs.shape[1], -1)
            hidden = self.hidden_activation(self.fc1(torch.cat([cell, query], dim=2)))
        else:  # sum query
            hidden = self.hidden_activation(self.fc1(cell_emb.unsqueeze(1) + query))
        return self.fc2(hidden).squeeze(2), None


class ClsDecoder(nn.Module):
    """Classification MLP on the cell embedding: ``(n_layers - 1) x [Linear, act, LayerNorm] + Linear``."""

    def __init__(self, d_model: int, n_cls: int, n_layers: int = 3, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(n_layers - 1):
            self._decoder.extend([nn.Linear(d_model, d_model), activation(), nn.LayerNorm(d_model)])
        self.out_layer = nn.Linear(d_model, n_cls)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: Tensor, lambd: float = 1.0) -> Tensor:
    """Identity forward, ``-lambd * grad`` backward (gradient reversal layer)."""
    return _GradReverse.apply(x, lambd)


class AdversarialDiscriminator(ClsDecoder):
    """Batch classifier behind a gradient-reversal layer (DAB): the encoder learns to hide the batch."""

    def __init__(self, d_model: int, n_cls: int, n_layers: int = 3, lambd: float = 1.0) -> None:
        super().__init__(d_model, n_cls, n_layers, activation=nn.LeakyReLU)
        self.lambd = lambd

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(grad_reverse(x, self.lambd))
