"""ScGPTNet: the scGPT transformer, composed from the pieces of this package.

Reproduces the official ``TransformerModel``, ``TransformerGenerator`` (perturbation) and
``MultiOmicTransformerModel`` (bowang-lab/scGPT, Cui et al., Nature Methods 2024) number for
number; sub-module names follow the official state-dict keys.

Data flow for a minibatch of ``B`` cells, ``L`` tokens each::

    genes (B, L) ──GeneEncoder──▶ gene_embs ─┐
    values (B, L) ──ValueEncoder─────────────┼─▶ + [pert flags] ─▶ [DSBN/BN] ─▶ transformer ─▶ hidden (B, L, d)
                                             │                                                  │
                                             └──────────────▶ MVC decoder ◀── cell_emb ◀────────┤
                                         [batch / modality embedding joined here]               ▼
                                                                                     expression decoder (B, L)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._attention import generative_attn_mask, padding_to_attn_mask
from ._config import ScGPTConfig
from ._decoders import AdversarialDiscriminator, AffineExprDecoder, ClsDecoder, ExprDecoder, MVCDecoder
from ._encoders import BatchLabelEncoder, GeneEncoder, build_value_encoder, combine_gene_and_value
from ._norm import DomainSpecificBatchNorm1d
from ._transformer import TransformerEncoder


def nonfinite_tensors(tensors: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinite values (one device sync for all of them).

    A diverged training run or a damaged checkpoint leaves such weights; every output of the network is then NaN.
    """
    items = [(name, t.detach()) for name, t in tensors if t.is_floating_point() and t.numel()]
    if not items:
        return []
    device = items[0][1].device
    finite = torch.stack([torch.isfinite(t).all().to(device) for _, t in items])
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(items, finite.tolist(), strict=True) if not ok]


@dataclass
class Encoded:
    """What the encoder produced for a minibatch; the heads read from it.

    Attributes
    ----------
    hidden
        Last-layer token states ``(B, L, d)``.
    gene_embs
        Gene-token embeddings before values were added ``(B, L, d)`` (MVC queries).
    cell_emb
        Cell embeddings ``(B, d)``, not normalised.
    values
        Input values ``(B, L)``.
    padding_mask
        ``(B, L)``, ``True`` at padded positions.
    cond_tokens
        Batch and/or modality embedding per token ``(B, L, d)``, or ``None``.
    cond_cell
        Batch and/or modality embedding per cell ``(B, d)``, or ``None``.
    """

    hidden: Tensor
    gene_embs: Tensor
    cell_emb: Tensor
    values: Tensor
    padding_mask: Tensor | None
    cond_tokens: Tensor | None = None
    cond_cell: Tensor | None = None


class ScGPTNet(nn.Module):
    """The scGPT network for one :class:`ScGPTConfig`.

    Call :meth:`encode` for token states and the cell embedding, then the head you need
    (:meth:`expression`, :meth:`mvc`, :meth:`classify`, :meth:`discriminate`); :meth:`forward`
    runs the encoder and every head the network has, returning the official output names.
    """

    def __init__(self, config: ScGPTConfig) -> None:
        super().__init__()
        c = self.config = config
        d = c.d_model
        self.encoder = GeneEncoder(c.n_tokens, d, padding_idx=c.pad_token_id)
        self.value_encoder = build_value_encoder(c.input_emb_style, d, c.dropout, c.n_input_bins, c.pad_value)
        if c.n_pert_flags:
            self.pert_encoder = nn.Embedding(c.n_pert_flags, d, padding_idx=c.pert_pad_id)
        if c.generative:
            self.flag_encoder = nn.Embedding(2, d)
        if c.use_batch_labels:
            self.batch_encoder = BatchLabelEncoder(c.n_batch_labels, d)
        if c.n_modalities:
            self.mod_encoder = BatchLabelEncoder(c.n_modalities, d, padding_idx=c.mod_pad_id)
        if c.batch_norm == "dsbn":
            self.dsbn = DomainSpecificBatchNorm1d(d, c.n_batch_labels, affine=c.dsbn_affine)
        elif c.batch_norm == "batchnorm":
            self.bn = nn.BatchNorm1d(d, eps=6.1e-5)
        self.transformer_encoder = TransformerEncoder(
            d, c.n_heads, c.d_hid, c.n_layers, c.dropout, c.pre_norm, c.attn_dropout
        )

        d_dec = 2 * d if c.conditioned else d
        if c.expr_decoder == "affine":
            self.decoder = AffineExprDecoder(
                d, c.explicit_zero_prob, c.expr_decoder_activation, c.expr_decoder_adaptive_bias
            )
        else:
            self.decoder = ExprDecoder(d, d_dec, c.explicit_zero_prob)
        if c.n_cls:
            self.cls_decoder = ClsDecoder(d, c.n_cls, c.n_layers_cls)
        if c.mvc_style:
            d_query = d_dec if c.mvc_conditioned_query else d
            self.mvc_decoder = MVCDecoder(d_query, d_dec, c.mvc_style, c.explicit_zero_prob)
        if c.dab:
            self.grad_reverse_discriminator = AdversarialDiscriminator(d, c.n_batch_labels, c.n_layers_cls)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.uniform_(self.encoder.embedding.weight, -0.1, 0.1)  # as the official init

    # ------------------------------------------------------------------ encoder
    def embed(
        self,
        genes: Tensor,
        values: Tensor,
        *,
        pert_flags: Tensor | None = None,
        gen_mask: Tensor | None = None,
        cell_prompt: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Transformer input ``(B, L, d)`` and the gene embeddings ``(B, L, d)``.

        ``gen_mask`` (generative models): genes to predict get their gene embedding plus the
        generative flag instead of a value embedding. ``cell_prompt`` ``(B, d)`` replaces the
        input at position 0 (the "cell prompt" of generative pretraining).
        """
        gene_embs = self.encoder(genes)
        x = combine_gene_and_value(gene_embs, self.value_encoder(values), self.config.input_emb_style)
        if self.config.n_pert_flags:
            if pert_flags is None:
                raise ValueError("This is a perturbation model: pass `pert_flags` (B, L), 1 for perturbed genes.")
            x = x + self.pert_encoder(pert_flags)
        if gen_mask is not None:
            if not self.config.generative:
                raise ValueError("`gen_mask` needs a generative model (config.generative=True).")
            flag = self.flag_encoder.weight[1]  # (d,)
            x = torch.where(gen_mask.unsqueeze(-1), gene_embs + flag, x)
        if cell_prompt is not None:
            x = torch.cat([cell_prompt.unsqueeze(1).to(x.dtype), x[:, 1:]], dim=1)
        return x, gene_embs

    def normalise(self, x: Tensor, batch_labels: Tensor | None) -> Tensor:
        """Domain-specific or shared BatchNorm over token embeddings, when the model has one."""
        if self.config.batch_norm == "dsbn":
            return self.dsbn(x, batch_labels)
        if self.config.batch_norm == "batchnorm":
            return self.bn(x.transpose(1, 2)).transpose(1, 2)
        return x

    def _transformer_input(
        self,
        genes: Tensor,
        values: Tensor,
        padding_mask: Tensor | None,
        batch_labels: Tensor | None,
        mod_types: Tensor | None,
        pert_flags: Tensor | None,
        gen_mask: Tensor | None = None,
        cell_prompt: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Checked inputs -> (transformer input, gene embeddings, padding mask, attention mask)."""
        self._check_conditions(genes, batch_labels, mod_types)
        if padding_mask is None:
            padding_mask = genes.eq(self.config.pad_token_id)
        x, gene_embs = self.embed(genes, values, pert_flags=pert_flags, gen_mask=gen_mask, cell_prompt=cell_prompt)
        x = self.normalise(x, batch_labels)
        if gen_mask is None:
            return x, gene_embs, padding_mask, padding_to_attn_mask(padding_mask)
        return x, gene_embs, padding_mask, generative_attn_mask(gen_mask, padding_mask)

    def encode(
        self,
        genes: Tensor,
        values: Tensor,
        padding_mask: Tensor | None = None,
        *,
        batch_labels: Tensor | None = None,
        mod_types: Tensor | None = None,
        pert_flags: Tensor | None = None,
        gen_mask: Tensor | None = None,
        cell_prompt: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Encoded:
        """Run the encoder.

        Parameters
        ----------
        genes
            Token ids ``(B, L)``.
        values
            Expression values ``(B, L)`` (bins for the released models).
        padding_mask
            ``(B, L)``, ``True`` at padded positions; by default ``genes == pad_token_id``.
        batch_labels
            ``(B,)`` integer batch labels (models with batch conditioning or DSBN).
        mod_types
            ``(B, L)`` modality ids (multi-omic models).
        pert_flags
            ``(B, L)`` perturbation flags (perturbation models).
        gen_mask
            ``(B, L)``, ``True`` at genes whose values are to be generated (generative models): they
            enter without their value and attend only to known genes and themselves
            (:func:`~scgpt.nn.generative_attn_mask`).
        cell_prompt
            ``(B, d)`` cell embeddings to place at position 0 (generative cell-prompt training).
        attn_mask
            Optional boolean attention mask broadcastable to ``(B, h, L, L)``, ``True`` = may
            attend; replaces the mask derived from ``padding_mask`` (and ``gen_mask``).
        """
        x, gene_embs, padding_mask, mask = self._transformer_input(
            genes, values, padding_mask, batch_labels, mod_types, pert_flags, gen_mask, cell_prompt
        )
        hidden = self.transformer_encoder(x, mask if attn_mask is None else attn_mask)
        enc = Encoded(hidden, gene_embs, self.pool(hidden, values, padding_mask), values, padding_mask)
        enc.cond_tokens, enc.cond_cell = self._conditions(batch_labels, mod_types, values, padding_mask)
        return enc

    def cell_embedding(
        self,
        genes: Tensor,
        values: Tensor,
        padding_mask: Tensor | None = None,
        *,
        batch_labels: Tensor | None = None,
        mod_types: Tensor | None = None,
        pert_flags: Tensor | None = None,
    ) -> Tensor:
        """Cell embeddings ``(B, d)`` (not normalised) by the shortest route.

        Same numbers as ``encode(...).cell_emb``; with ``cell_emb_style="cls"`` the last layer is
        computed for ``<cls>`` only.
        """
        if self.config.cell_emb_style != "cls":
            return self.encode(
                genes, values, padding_mask, batch_labels=batch_labels, mod_types=mod_types, pert_flags=pert_flags
            ).cell_emb
        x, _, _, mask = self._transformer_input(genes, values, padding_mask, batch_labels, mod_types, pert_flags)
        return self.transformer_encoder(x, mask, last_queries=1)[:, 0]

    def attention(
        self,
        genes: Tensor,
        values: Tensor,
        padding_mask: Tensor | None = None,
        *,
        layers: Sequence[int],
        softmax: bool = True,
        query_chunk: int | None = None,
        batch_labels: Tensor | None = None,
        mod_types: Tensor | None = None,
        pert_flags: Tensor | None = None,
    ) -> Iterator[tuple[int, slice, Tensor]]:
        """Attention weights of chosen layers, computed explicitly (SDPA returns none).

        Runs the encoder up to the last layer asked for and yields ``(layer, queries, weights)``
        with ``weights`` of shape ``(B, h, Lq, L)``: row = query position, column = key position,
        for the query positions ``queries`` (chunks of ``query_chunk`` rows, or all at once).
        Pre-norm layers attend over the normalised stream, as in :class:`TransformerLayer`.

        Parameters
        ----------
        genes, values, padding_mask, batch_labels, mod_types, pert_flags
            As :meth:`encode`.
        layers
            Layer indices (negative counts from the end), e.g. ``[-1]`` for the last.
        softmax
            ``False``: the raw ``q @ k.T`` products (unscaled, unmasked), as the official attention-GRN tutorial.
        query_chunk
            Rows per yielded block, bounding memory at ``B * h * query_chunk * L`` values.
        """
        n = self.config.n_layers
        wanted = sorted({i % n for i in layers})
        bad = [i for i in layers if not -n <= i < n]
        if bad:
            raise IndexError(f"Layer indices {bad} are out of range for a model with {n} layers (use 0 … {n - 1}).")
        x, _, _, mask = self._transformer_input(genes, values, padding_mask, batch_labels, mod_types, pert_flags)
        L = x.shape[1]
        step = L if query_chunk is None else max(1, query_chunk)
        for i, layer in enumerate(self.transformer_encoder.layers[: wanted[-1] + 1]):
            if i in wanted:
                attended = layer.norm1(x) if layer.pre_norm else x
                for s in range(0, L, step):
                    rows = slice(s, min(s + step, L))
                    yield i, rows, layer.self_attn.attention_scores(attended, mask, softmax=softmax, queries=rows)
            if i < wanted[-1]:
                x = layer(x, mask)

    def pool(self, hidden: Tensor, values: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Cell embedding ``(B, d)`` from token states, by ``config.cell_emb_style``.

        Pooling styles skip padded positions (the official code averages them in, so it agrees
        only on unpadded minibatches; skipping them keeps a cell's embedding independent of the
        other cells it is batched with).
        """
        style = self.config.cell_emb_style
        if style == "cls":
            return hidden[:, 0]
        keep = torch.ones_like(values) if padding_mask is None else (~padding_mask).to(hidden.dtype)
        if style == "avg-pool":
            return (hidden * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return F.normalize((hidden * (values * keep).unsqueeze(-1)).sum(1), p=2, dim=1)  # w-pool

    def _conditions(
        self, batch_labels: Tensor | None, mod_types: Tensor | None, values: Tensor, padding_mask: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Batch and modality embeddings to join to the decoders' inputs (per token, per cell)."""
        cond_tokens = cond_cell = None
        if self.config.use_batch_labels:
            batch_emb = self.batch_encoder(batch_labels)  # (B, d)
            cond_cell = batch_emb
            cond_tokens = batch_emb.unsqueeze(1).expand(-1, values.shape[1], -1)
        if self.config.n_modalities:
            mod_emb = self.mod_encoder(mod_types)  # (B, L, d)
            mod_cell = self.pool(mod_emb, values, padding_mask)
            cond_tokens = mod_emb if cond_tokens is None else cond_tokens + mod_emb
            cond_cell = mod_cell if cond_cell is None else cond_cell + mod_cell
        return cond_tokens, cond_cell

    def _check_conditions(self, genes: Tensor, batch_labels: Tensor | None, mod_types: Tensor | None) -> None:
        c = self.config
        needs_batch = c.batch_conditioned
        if needs_batch and batch_labels is None:
            raise ValueError("This model is conditioned on batch labels: pass `batch_labels` (B,).")
        if not needs_batch and batch_labels is not None:
            raise ValueError("This model has no batch-label encoder or DSBN: do not pass `batch_labels`.")
        if batch_labels is not None:
            if batch_labels.shape != genes.shape[:1]:
                raise ValueError(f"`batch_labels` must have shape ({genes.shape[0]},), got {tuple(batch_labels.shape)}")
            if batch_labels.numel() and (int(batch_labels.min()) < 0 or int(batch_labels.max()) >= c.n_batch_labels):
                raise ValueError(f"`batch_labels` must lie in [0, {c.n_batch_labels}), the batches this model knows.")
        if c.n_modalities and mod_types is None:
            raise ValueError("This is a multi-omic model: pass `mod_types` (B, L), the modality id of every token.")

    # ------------------------------------------------------------------ heads
    def _decoder_input(self, enc: Encoded) -> Tensor:
        return enc.hidden if enc.cond_tokens is None else torch.cat([enc.hidden, enc.cond_tokens], dim=2)

    def expression(self, enc: Encoded) -> tuple[Tensor, Tensor | None]:
        """Expression value (and nonzero probability) per token ``(B, L)``, from token states."""
        if self.config.expr_decoder == "affine":
            return self.decoder(enc.hidden, enc.values)
        return self.decoder(self._decoder_input(enc))

    def mvc(self, enc: Encoded, cell_emb: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Expression value (and nonzero probability) per token ``(B, L)``, from the cell embedding."""
        if not self.config.mvc_style:
            raise RuntimeError("This model has no MVC decoder (config.mvc_style is None).")
        cell = enc.cell_emb if cell_emb is None else cell_emb
        query = enc.gene_embs
        if enc.cond_cell is not None:
            cell = torch.cat([cell, enc.cond_cell], dim=1)
            if self.config.mvc_conditioned_query:
                query = torch.cat([query, enc.cond_tokens], dim=2)
        return self.mvc_decoder(cell, query)

    def classify(self, enc: Encoded) -> Tensor:
        """Class logits ``(B, n_cls)`` from the cell embedding."""
        if not self.config.n_cls:
            raise RuntimeError("This model has no classification head (config.n_cls is None).")
        return self.cls_decoder(enc.cell_emb)

    def discriminate(self, enc: Encoded) -> Tensor:
        """Batch logits ``(B, n_batch_labels)`` through the gradient-reversal discriminator."""
        if not self.config.dab:
            raise RuntimeError("This model has no adversarial batch discriminator (config.dab is False).")
        return self.grad_reverse_discriminator(enc.cell_emb)

    def forward(
        self,
        genes: Tensor,
        values: Tensor,
        padding_mask: Tensor | None = None,
        *,
        batch_labels: Tensor | None = None,
        mod_types: Tensor | None = None,
        pert_flags: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Encoder plus every head of the model, under the official output names.

        Returns
        -------
        ``encoder_output`` ``(B, L, d)``, ``cell_emb`` ``(B, d)``, ``mlm_output`` ``(B, L)``, and
        where the model has them ``mlm_zero_probs``, ``mvc_output``, ``mvc_zero_probs``,
        ``cls_output`` ``(B, n_cls)``, ``dab_output`` ``(B, n_batch_labels)``.
        """
        enc = self.encode(
            genes, values, padding_mask, batch_labels=batch_labels, mod_types=mod_types, pert_flags=pert_flags
        )
        out = {"encoder_output": enc.hidden, "cell_emb": enc.cell_emb}
        out["mlm_output"], zero = self.expression(enc)
        if zero is not None:
            out["mlm_zero_probs"] = zero
        if self.config.mvc_style:
            out["mvc_output"], zero = self.mvc(enc)
            if zero is not None:
                out["mvc_zero_probs"] = zero
        if self.config.n_cls:
            out["cls_output"] = self.classify(enc)
        if self.config.dab:
            out["dab_output"] = self.discriminate(enc)
        return out

    def with_average_batch(self) -> ScGPTNet:
        """A copy with one more batch label, the average of the known ones, for cells of unseen batches.

        The new label's domain-specific BatchNorm statistics (and affine parameters), batch-label
        embedding and discriminator output are the means over the ``n_batch_labels`` known batches;
        everything else is copied. Cells of a batch the network never saw are then normalised with
        statistics that no single training batch dominates.
        """
        c = self.config
        if not c.batch_conditioned:
            raise RuntimeError("This network is not conditioned on batches.")
        n = c.n_batch_labels
        param = next(self.parameters())
        new = ScGPTNet(c.replace(n_batch_labels=n + 1)).to(device=param.device, dtype=param.dtype)
        state = self.state_dict()
        target = new.state_dict()
        for key, value in target.items():
            if key in state and state[key].shape == value.shape:
                target[key] = state[key]
        if c.batch_norm == "dsbn":
            for name in ("running_mean", "running_var", "weight", "bias"):
                parts = [state[f"dsbn.bns.{i}.{name}"] for i in range(n) if f"dsbn.bns.{i}.{name}" in state]
                if parts:
                    target[f"dsbn.bns.{n}.{name}"] = torch.stack(parts).mean(0)
        for key in ("batch_encoder.embedding.weight", "grad_reverse_discriminator.out_layer.weight"):
            if key in state:
                target[key] = torch.cat([state[key], state[key].mean(0, keepdim=True)])
        if "grad_reverse_discriminator.out_layer.bias" in state:
            bias = state["grad_reverse_discriminator.out_layer.bias"]
            target["grad_reverse_discriminator.out_layer.bias"] = torch.cat([bias, bias.mean(0, keepdim=True)])
        new.load_state_dict(target)
        return new.train(self.training)

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Number of parameters (optionally without the gene embedding table)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.encoder.embedding.weight.numel() if exclude_embeddings else n
