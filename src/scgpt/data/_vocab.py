"""Gene vocabulary: a plain token -> id mapping, read from and written to the official ``vocab.json``."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path

import numpy as np

PAD_TOKEN, CLS_TOKEN, EOC_TOKEN = "<pad>", "<cls>", "<eoc>"
SPECIAL_TOKENS = (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)


class GeneVocab(Mapping[str, int]):
    """Token -> id mapping with contiguous ids ``0 … n-1`` (replaces the official torchtext vocab).

    Parameters
    ----------
    tokens
        Tokens in id order, or a mapping token -> id (ids must be ``0 … n-1``, each once).
    default_index
        Id returned for unknown tokens by :meth:`__getitem__`; ``None`` raises :class:`KeyError`.

    Examples
    --------
    >>> vocab = GeneVocab(["CD3E", "MS4A1", "<pad>", "<cls>"])
    >>> vocab["MS4A1"], vocab.pad_id, len(vocab)
    (1, 2, 4)
    """

    def __init__(self, tokens: Iterable[str] | Mapping[str, int], *, default_index: int | None = None) -> None:
        if isinstance(tokens, Mapping):
            itos = _itos_from_mapping(tokens)
        else:
            itos = [str(t) for t in tokens]
        self._itos: list[str] = itos
        self._stoi: dict[str, int] = {t: i for i, t in enumerate(itos)}
        if len(self._stoi) != len(itos):
            dup = sorted({t for t in itos if itos.count(t) > 1})[:5] if len(itos) < 10_000 else "(several)"
            raise ValueError(f"Vocabulary tokens must be unique; duplicated: {dup}")
        self.default_index = default_index
        self._keys: np.ndarray | None = None

    # ----------------------------------------------------------- construction / IO
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GeneVocab:
        """Read an official ``vocab.json`` (a JSON object token -> id)."""
        path = Path(path)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise ValueError(f"{path} must be a JSON object mapping each token to an integer id.")
        try:
            return cls(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def from_genes(cls, genes: Iterable[str]) -> GeneVocab:
        """Genes in the given order (duplicates and special tokens dropped), then ``<pad>``, ``<cls>``, ``<eoc>``.

        Examples
        --------
        >>> GeneVocab.from_genes(["CD3E", "MS4A1"]).itos
        ['CD3E', 'MS4A1', '<pad>', '<cls>', '<eoc>']
        """
        names = dict.fromkeys(str(g) for g in genes if str(g) not in SPECIAL_TOKENS)
        return cls([*names, *SPECIAL_TOKENS])

    @classmethod
    def default(cls) -> GeneVocab:
        """The official whole-human vocabulary: 60,694 CELLxGENE census genes + ``<pad>``, ``<cls>``, ``<eoc>``.

        Bundled from the MIT-licensed ``scgpt`` wheel (see ``scgpt/data/_resources/NOTICE.md``); ids
        equal those of the released ``scGPT_human`` checkpoint.
        """
        ref = resources.files("scgpt.data").joinpath("_resources/census_genes.txt.gz")
        with ref.open("rb") as raw, gzip.open(raw, "rt") as f:
            genes = f.read().split()
        return cls([*genes, *SPECIAL_TOKENS])

    def to_json(self, path: str | os.PathLike) -> None:
        """Write as an official ``vocab.json`` (token -> id, in id order)."""
        with open(path, "w") as f:
            json.dump(self._stoi, f, indent=0)

    def append_token(self, token: str) -> int:
        """Add ``token`` at the end (if absent) and return its id."""
        if token not in self._stoi:
            self._stoi[token] = len(self._itos)
            self._itos.append(token)
            self._keys = None
        return self._stoi[token]

    # ----------------------------------------------------------- mapping protocol
    def __getitem__(self, token: str) -> int:
        try:
            return self._stoi[token]
        except KeyError:
            if self.default_index is not None:
                return self.default_index
            raise KeyError(f"{token!r} is not in the vocabulary ({len(self)} tokens)") from None

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __iter__(self) -> Iterator[str]:
        return iter(self._itos)

    def __len__(self) -> int:
        return len(self._itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneVocab) and self._itos == other._itos

    def __hash__(self) -> int:  # a mutable mapping: identity hash
        return id(self)

    def __repr__(self) -> str:
        head = ", ".join(self._itos[:3])
        return f"GeneVocab({len(self)} tokens: {head}, …)"

    # ----------------------------------------------------------- lookups
    @property
    def itos(self) -> list[str]:
        """Tokens in id order (a copy)."""
        return list(self._itos)

    def lookup(self, tokens: Iterable[str], *, default: int = -1) -> np.ndarray:
        """Ids of many tokens as ``int64``; unknown tokens get ``default``."""
        get = self._stoi.get
        return np.fromiter((get(t, default) for t in tokens), dtype=np.int64)

    def lookup_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens of many ids."""
        return [self._itos[int(i)] for i in ids]

    def gene_keys(self) -> np.ndarray:
        """64-bit key of every token (:func:`scgpt.data._random.gene_keys`), the gene's identity in random choices."""
        if self._keys is None or len(self._keys) != len(self):
            from ._random import gene_keys

            self._keys = gene_keys(self._itos)
        return self._keys

    def special_id(self, token: str) -> int:
        """Id of a special token, with a clear error when the vocabulary lacks it."""
        if token not in self._stoi:
            raise KeyError(f"The vocabulary has no {token!r} token; official vocabularies end with {SPECIAL_TOKENS}.")
        return self._stoi[token]

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self.special_id(PAD_TOKEN)

    @property
    def cls_id(self) -> int:
        """Id of ``<cls>``."""
        return self.special_id(CLS_TOKEN)


def _itos_from_mapping(stoi: Mapping[str, int]) -> list[str]:
    n = len(stoi)
    itos: list[str | None] = [None] * n
    for tok, i in stoi.items():
        if not 0 <= int(i) < n or itos[int(i)] is not None:
            raise ValueError(f"Vocabulary ids must be 0 … {n - 1}, each used once; {tok!r} has id {i}.")
        itos[int(i)] = str(tok)
    return itos  # type: ignore[return-value]
