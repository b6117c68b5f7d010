"""Multi-omic models: features of other modalities (proteins, peaks) as new tokens with a modality id.

As the official multi-omic tutorial: the features of every modality but the first (RNA) become new
vocabulary tokens, appended after the pretrained ones; each token carries the id of its modality
(``mod_vocab``: the modality names, then ``<pad>``, ``<cls>``, ``<eoc>``), embedded by a modality
encoder whose output joins the decoders' input; values are binned per cell and modality.

New tokens are named ``"<modality>:<feature>"``, so the protein ``CD4`` (``"prot:CD4"``) and the gene
``CD4`` stay distinct; a token's modality is read from that prefix (tokens without one belong to the
first modality), so the rule needs no extra file and survives both checkpoint formats.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._logging import logger
from ..data._vocab import SPECIAL_TOKENS, GeneVocab

if TYPE_CHECKING:
    from ._scgpt import ScGPT

SEP = ":"
"""Separator between a modality name and a feature name in the tokens of non-RNA features."""


def feature_token(modality: str, feature: str) -> str:
    """The vocabulary token of a feature of a non-RNA modality: ``"prot:CD4"``."""
    return f"{modality}{SEP}{feature}"


def modality_names(model: ScGPT) -> list[str]:
    """The modalities of a multi-omic model, first (RNA) first; ``[]`` for a single-modality model."""
    if model.mod_vocab is None:
        return []
    return [m for m in model.mod_vocab.itos if m not in SPECIAL_TOKENS]


def token_modality(model: ScGPT) -> np.ndarray | None:
    """Modality id of every vocabulary token, specials included (``None`` for single-modality models)."""
    mods = model.mod_vocab
    names = modality_names(model)
    if not names:
        return None
    itos = np.asarray(model.vocab.itos, dtype=object)
    out = np.full(len(itos), mods[names[0]], dtype=np.int64)
    for name in names[1:]:
        out[np.char.startswith(itos.astype(str), name + SEP)] = mods[name]
    for special in SPECIAL_TOKENS:
        if special in model.vocab and special in mods:
            out[model.vocab[special]] = mods[special]
    return out


def binary_modalities(model: ScGPT) -> tuple[int, ...]:
    """Ids of the modalities whose values are binarised (chromatin accessibility)."""
    names = model.registry_.get("binary_modalities", ())
    return tuple(model.mod_vocab[m] for m in names if model.mod_vocab is not None and m in model.mod_vocab)


def with_modalities(
    model: ScGPT,
    features: Mapping[str, Sequence[str]],
    *,
    first: str = "rna",
    binary: Sequence[str] = (),
    seed: int = 0,
) -> ScGPT:
    """A copy of ``model`` that reads the features of other modalities as new tokens.

    Parameters
    ----------
    model
        A pretrained model (single- or multi-omic).
    features
        Features of each non-RNA modality, e.g. ``{"prot": ["CD3", "CD4", ...]}``; they become the tokens
        ``"prot:CD3"``, ... (those already in the vocabulary keep their embedding).
    first
        Name of the first (RNA) modality, whose features are the pretrained gene tokens.
    binary
        Modalities whose values are binarised (chromatin accessibility).
    seed
        Seed of the new parts' initialisation (the global random state is left as it was).

    Returns
    -------
    The multi-omic model: the pretrained weights, the gene embeddings of the pretrained tokens, new
    (randomly initialised) embeddings for the new tokens and a new modality encoder. The model itself when
    it already has every modality and token.
    """
    from ..nn import ScGPTNet

    if hasattr(model.net, "peft_config"):
        raise ValueError("This model carries adapters; merge them first: with_modalities(model.merge_adapter(), ...).")
    names = [first, *features]
    if len(set(names)) != len(names):
        raise ValueError(f"Modality names must be distinct, got {names}.")
    bad = [n for n in names if SEP in n or n in SPECIAL_TOKENS or not n]
    if bad:
        raise ValueError(f"Modality names cannot be empty, special tokens or contain {SEP!r}: {bad}.")
    tokens = [feature_token(m, str(f)) for m, feats in features.items() for f in feats]
    new_tokens = [t for t in dict.fromkeys(tokens) if t not in model.vocab]
    if model.mod_vocab is not None:
        known = modality_names(model)
        if set(names) - set(known) or known[0] != first:
            raise ValueError(
                f"The model is multi-omic already, with modalities {known}; it cannot take {names}. Start from the "
                "pretrained single-modality model."
            )
        if not new_tokens:
            return model
    mod_vocab = GeneVocab([*names, *SPECIAL_TOKENS]) if model.mod_vocab is None else model.mod_vocab
    vocab = GeneVocab([*model.vocab.itos, *new_tokens])
    config = model.config.replace(  # the official multi-omic MVC decoder joins the modality to its gene queries
        n_tokens=len(vocab),
        n_modalities=len(mod_vocab),
        mod_pad_id=mod_vocab.pad_id,
        mvc_conditioned_query=model.config.mvc_style is not None,
    )
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ScGPTNet(config)
    own, old = net.state_dict(), model.net.state_dict()
    keep = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
    emb = "encoder.embedding.weight"
    rows = old[emb].shape[0]
    grown = own[emb].clone()
    grown[:rows] = old[emb]
    keep[emb] = grown
    net.load_state_dict(keep, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in keep})
    logger.info(
        f"    multi-omic model: {len(new_tokens)} new tokens ({', '.join(features)}), modalities {names}"
        + (f"; new parts: {', '.join(fresh)}" if fresh else "")
    )
    new = type(model)._from_parts(
        net.to(model.device),
        vocab,
        args=copy.deepcopy(model.args_),
        mod_vocab=mod_vocab,
        source=model.source_,
        attrs=copy.deepcopy(model._attrs()),
    )
    new.registry_["binary_modalities"] = sorted(set(binary) | set(new.registry_.get("binary_modalities", ())))
    return new
