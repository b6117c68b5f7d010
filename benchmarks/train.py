"""Training-step throughput at whole-human shape on CPU: scgpt vs the official ``TransformerModel``, same run.

Both models are built with the scGPT_human architecture (60,697 tokens, 512 wide, 12 layers, 8 heads,
d_hid 512, dropout 0.2, MVC decoder) and random weights, and take the same minibatch: ``B`` cells of
``L`` tokens (``<cls>`` + binned genes), 40 % of the values masked. One step = forward, masked-value
MSE (GEP) + MVC MSE (GEPC), backward and an Adam update. The official model runs in the peer venv
(``../shared/peer/setup_peer.sh``) in a subprocess; ours in this one, one after the other.

    python benchmarks/train.py --shapes 8x256,4x1200 --reps 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ARCH = dict(ntoken=60697, d_model=512, nhead=8, d_hid=512, nlayers=12, dropout=0.2, pad_value=-2)

OFFICIAL = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.filterwarnings("ignore")
    import numpy as np, torch
    torch.set_num_threads({threads})
    from scgpt.model import TransformerModel
    from scgpt.loss import masked_mse_loss
    from scgpt.tokenizer import GeneVocab
    a = {arch}
    genes = {{f"G{{i}}": i for i in range(a["ntoken"] - 3)}}
    specials = {{"<pad>": a["ntoken"] - 3, "<cls>": a["ntoken"] - 2, "<eoc>": a["ntoken"] - 1}}
    vocab = GeneVocab.from_dict(genes | specials)
    torch.manual_seed(0)
    model = TransformerModel(a["ntoken"], a["d_model"], a["nhead"], a["d_hid"], a["nlayers"], vocab=vocab,
                             dropout=a["dropout"], pad_token="<pad>", pad_value=a["pad_value"], do_mvc=True,
                             use_fast_transformer=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = np.load(sys.argv[1])
    genes, values, target = (torch.from_numpy(batch[k]) for k in ("genes", "values", "target"))
    masked = values.eq(-1)
    pad = genes.eq(vocab["<pad>"])
    def step():
        out = model(genes, values, src_key_padding_mask=pad, MVC=True)
        loss = masked_mse_loss(out["mlm_output"], target, masked) + masked_mse_loss(out["mvc_output"], target, masked)
        opt.zero_grad(); loss.backward(); opt.step()
    step()
    times = []
    for _ in range({reps}):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    print(json.dumps({{"seconds": times}}))
    """
)


def make_batch(B: int, L: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``B`` cells of ``L`` tokens: ``<cls>`` then distinct genes with bins 1..50; 40 % of gene values masked."""
    rng = np.random.default_rng(seed)
    n_gene_tokens = ARCH["ntoken"] - 3
    genes = np.stack([rng.choice(n_gene_tokens, size=L - 1, replace=False) for _ in range(B)])
    genes = np.concatenate([np.full((B, 1), n_gene_tokens + 1), genes], axis=1).astype(np.int64)  # <cls> first
    target = np.concatenate([np.full((B, 1), -2.0), rng.integers(1, 51, size=(B, L - 1))], axis=1).astype(np.float32)
    values = target.copy()
    hide = np.zeros((B, L), dtype=bool)
    for i in range(B):
        hide[i, 1 + rng.choice(L - 1, size=int(0.4 * (L - 1)), replace=False)] = True
    values[hide] = -1.0
    return {"genes": genes, "values": values, "target": target}


def time_ours(batch: dict[str, np.ndarray], reps: int) -> list[float]:
    import torch

    from scgpt.data import CellBatch
    from scgpt.nn import ScGPTConfig, ScGPTNet
    from scgpt.train import Recipe, ScGPTTrainingPlan

    cfg = ScGPTConfig(
        n_tokens=ARCH["ntoken"],
        pad_token_id=ARCH["ntoken"] - 3,
        d_model=ARCH["d_model"],
        n_heads=ARCH["nhead"],
        d_hid=ARCH["d_hid"],
        n_layers=ARCH["nlayers"],
        dropout=ARCH["dropout"],
        n_cls=None,
    )
    torch.manual_seed(0)
    net = ScGPTNet(cfg).train()
    plan = ScGPTTrainingPlan(net, Recipe("bench", {"mlm": 1.0, "mvc": 1.0}, masking="masked"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.from_numpy(batch["genes"])
    b = CellBatch(
        genes=g,
        values=torch.from_numpy(batch["values"]),
        target=torch.from_numpy(batch["target"]),
        padding_mask=g.eq(cfg.pad_token_id),
        predict_mask=torch.from_numpy(batch["values"] == -1),
    )

    def step() -> None:
        loss = plan.compute_losses(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="8x256,4x1200", help="cells x tokens per minibatch, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-python", default="/work/peer-venv/bin/python")
    p.add_argument("--json-out", default=str(HERE / "results" / "train.json"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = HERE / "results" / "train_work"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes.split(","):
        B, L = (int(x) for x in shape.split("x"))
        batch = make_batch(B, L)
        path = work / f"batch_{B}x{L}.npz"
        np.savez(path, **batch)
        official = None
        if Path(args.peer_python).exists():
            code = OFFICIAL.format(threads=args.threads, arch=ARCH, reps=args.reps)
            proc = subprocess.run([args.peer_python, "-c", code, str(path)], capture_output=True, text=True)
            if proc.returncode == 0:
                official = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            else:
                print(f"[official {shape}] failed:\n{proc.stderr[-2000:]}", flush=True)
        else:
            print(f"[official] {args.peer_python} not found: official side skipped", flush=True)
        ours = time_ours(batch, args.reps)
        row = {
            "cells": B,
            "tokens": L,
            "ours_s": float(np.median(ours)),
            "ours_tokens_per_s": B * L / float(np.median(ours)),
        }
        if official:
            row.update(official_s=float(np.median(official)), official_tokens_per_s=B * L / float(np.median(official)))
            row["speedup"] = row["ours_tokens_per_s"] / row["official_tokens_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| minibatch | official tokens/s | scgpt tokens/s | ratio |\n|---|---|---|---|")
    for r in rows:
        off = r.get("official_tokens_per_s")
        print(
            f"| {r['cells']} x {r['tokens']} | {off and f'{off:.0f}'} | {r['ours_tokens_per_s']:.0f} | "
            + (f"{r['speedup']:.2f}x |" if r.get("speedup") else "- |")
        )
    Path(args.json_out).write_text(
        json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
