"""The ceiling of this machine for a whole-human-shaped forward pass, with no data pipeline at all.

``torch.nn.TransformerEncoder`` (12 layers, 512 wide, 8 heads, feed-forward 512) plus a 60,697-row
gene embedding, random token ids, in ``inference_mode``: float32, float32 weights under bfloat16
autocast, and bfloat16 weights. Compare its cells/s with ``benchmarks/embed.py``: an embedding
pipeline cannot be faster than this in bfloat16 (in float32 ours is, because its last layer computes
``<cls>`` only).

    python benchmarks/plain_forward.py --threads 2        # ~3 min
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def measure(emb: nn.Module, enc: nn.Module, ids: torch.Tensor, mode: str, reps: int) -> float:
    """Cells per second of ``enc(emb(ids))`` in ``mode`` after one untimed warm-up."""
    if mode == "bfloat16":
        emb, enc = copy.deepcopy(emb).to(torch.bfloat16), copy.deepcopy(enc).to(torch.bfloat16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast-bfloat16"):
        enc(emb(ids))
        t = time.perf_counter()
        for _ in range(reps):
            enc(emb(ids))
        return reps * ids.shape[0] / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", default="64x256,16x1200", help="cells x tokens per forward, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json-out", default=str(HERE / "results" / "plain_forward.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(512, 8, 512, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).eval()
    emb = nn.Embedding(60697, 512)
    rows = []
    print("| cells x tokens | float32 | float32 + bf16 autocast | bfloat16 weights |\n|---|---|---|---|")
    for shape in args.shapes.split(","):
        b, L = (int(v) for v in shape.split("x"))
        ids = torch.randint(0, 60697, (b, L))
        r = {m: measure(emb, enc, ids, m, args.reps) for m in ("float32", "autocast-bfloat16", "bfloat16")}
        rows.append({"cells": b, "tokens": L, "cells_per_s": r})
        print(f"| {b} x {L} | {r['float32']:.2f} | {r['autocast-bfloat16']:.2f} | {r['bfloat16']:.2f} |", flush=True)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
