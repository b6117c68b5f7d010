"""Run by test_atomic_writes.py in a subprocess: a write under a file-size limit (a full disk, as far as the
writer can tell). Exit status 3 when the write failed with an OSError, 0 when it succeeded."""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path


def main(action: str, target: Path, limit: int, extra: str) -> int:
    import torch

    import scgpt
    from scgpt.cli import entry
    from scgpt.data import GeneVocab
    from scgpt.model import ScGPT

    scgpt.settings.progress = False
    torch.manual_seed(5)
    big = ScGPT(vocab=GeneVocab.from_genes(scgpt.datasets.pbmc68k_counts().var_names), d_model=64, n_heads=2,
                d_hid=64, n_layers=2, n_cls=None)  # fmt: skip
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, writes fail with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        if action == "save":
            big.save(target, overwrite=True)
        elif action == "save_pretrained":
            big.save_pretrained(target, overwrite=True)
        elif action == "cli":  # as the console command runs it
            entry(["embed", "--model", extra, "--input", str(target), "--output", str(target), "-q"])
    except OSError as e:
        print(f"OSError {e.errno}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""))
