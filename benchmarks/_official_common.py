"""What the official training loops of ``benchmarks/_official_*.py`` share: threads, seed, and a model folder.

Imported by those scripts, which run with the python of the peer venv (the official ``scgpt`` package), so the
``scgpt`` imported here is the official one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--seed`` and ``--threads``, the options every official loop takes."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)


def start_run(a: argparse.Namespace, model_dir: str) -> tuple[dict[str, Any], Any]:
    """Set the threads and the official seed; the folder's ``args.json`` and its vocabulary with the tutorials'
    special tokens (``<pad>``, ``<cls>``, ``<eoc>``) appended when missing, ``<pad>`` the default index."""
    import torch
    from scgpt.tokenizer import GeneVocab
    from scgpt.utils import set_seed

    torch.set_num_threads(a.threads)
    set_seed(a.seed)
    folder = Path(model_dir)
    args = json.loads((folder / "args.json").read_text())
    vocab = GeneVocab.from_file(folder / "vocab.json")
    for s in ("<pad>", "<cls>", "<eoc>"):
        if s not in vocab:
            vocab.append_token(s)
    vocab.set_default_index(vocab["<pad>"])
    return args, vocab
