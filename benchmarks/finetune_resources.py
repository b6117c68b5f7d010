"""Memory and speed of one fine-tuning step at whole-human shape, and what fits on 16 / 24 / 40 / 80 GB.

Whole-human architecture (60,697 tokens, 12 layers x 512, 8 heads, feed-forward 512, dropout 0.2) with
random weights and an annotation head (10 classes), 1,200 tokens per cell (every cell full, no padding),
the annotation objective (cross-entropy on the cell embedding) and Adam: one training step (forward,
backward, optimiser step) per configuration:

- ``full``: every weight trained;
- ``lora``: LoRA adapters (``peft``, rank 8, alpha 16) on the attention in/out projections and both
  feed-forward linears of every layer, the heads trained in full, everything else fixed;
- ``frozen``: gene/value encoders and the first ``--freeze-layers`` (10) of 12 layers fixed (``freeze_layers=``);
- ``full+ckpt``, ``lora+ckpt``, ``frozen+ckpt``: the same with gradient checkpointing per layer;

in float32 and in bf16 mixed precision (``torch.autocast``, as Lightning's ``"bf16-mixed"``). Each
(configuration, precision, batch size) runs in a fresh subprocess, so the peak is its own: peak RSS on CPU
(``ru_maxrss``), ``torch.cuda.max_memory_allocated`` on a GPU (``--device cuda``, or ``auto`` when one is
there). cells/s is of the timed step (after ``--warmup`` untimed steps; 0: the first step is timed).

With two or more batch sizes measured for a configuration, the per-cell activation memory is the slope
of peak memory over batch size and the fixed part (weights, gradients, Adam moments) the rest; the
resource table ("what fits on 16 / 24 / 40 / 80 GB") is computed from them: the largest batch whose step
fits in 90 % of the memory after a 0.6 GB CUDA context. Rows not measured on a GPU are arithmetic.
On CPU, fused attention keeps no L x L matrices only without attention dropout: ``--attn-dropout 0``
(the default here) measures the activations a GPU's attention kernels keep; ``--attn-dropout 0.2``
(the model's setting) measures what a CPU run of the model really holds (about 4x more).

    python benchmarks/finetune_resources.py --batch-sizes 2,8 --configs full,lora,frozen,full+ckpt,lora+ckpt
    python benchmarks/finetune_resources.py --device cuda --batch-sizes 8,32,64

The machine this ran on had 24 GiB and 2 cores: batch 64 in float32 does not fit it, and a step at
batch 32 takes minutes; measure small batches and read the rest from the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

WHOLE_HUMAN = dict(
    n_tokens=60_697, pad_token_id=60_694, d_model=512, n_heads=8, d_hid=512, n_layers=12, dropout=0.2,
    mvc_style=None, n_cls=10,
)  # fmt: skip
CONFIGS = ("full", "lora", "frozen", "full+ckpt", "lora+ckpt", "frozen+ckpt")
PRECISIONS = ("fp32", "bf16")
GPU_SIZES_GB = (16, 24, 40, 80)
USABLE, CONTEXT_GB = 0.9, 0.6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="full,lora,frozen,full+ckpt,lora+ckpt", help=f"comma-separated: {CONFIGS}")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--batch-sizes", default="8,32,64", help="comma-separated cells per step")
    ap.add_argument("--max-length", type=int, default=1200, help="tokens per cell")
    ap.add_argument("--freeze-layers", type=int, default=10, help="layers fixed in the 'frozen' configurations")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument("--attn-dropout", type=float, default=0.0, help="attention dropout (see above)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps before the timed one")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=1 << 20,
        help="glibc MALLOC_MMAP_THRESHOLD_ of the workers (bytes; 0: glibc's default, whose dynamic threshold keeps "
        "freed activations in the heap, so that peak RSS also counts memory the allocator holds on to)",
    )
    ap.add_argument("--out-json", default="benchmarks/results/finetune_resources.json")
    ap.add_argument("--from-json", help="print the tables of earlier runs (comma-separated files; no measuring)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- one measurement (subprocess)
def worker(spec: dict) -> dict:
    import torch

    from scgpt.data._collate import CellBatch
    from scgpt.model import TASKS
    from scgpt.model._adapters import inject, trained_parameters
    from scgpt.nn import ScGPTConfig, ScGPTNet
    from scgpt.train import ScGPTTrainingPlan

    try:  # imported in every configuration, so that peak RSS compares the same libraries
        import peft  # noqa: F401
    except ImportError:
        pass
    from scgpt.model._resources import trained_layers

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    config, precision, B, L = spec["config"], spec["precision"], spec["batch_size"], spec["max_length"]
    torch.manual_seed(0)
    net = ScGPTNet(ScGPTConfig(**WHOLE_HUMAN, attn_dropout=spec["attn_dropout"])).to(device)
    scheme = config.split("+")[0]
    if scheme == "lora":
        modules = ["in_proj", "out_proj", "linear1", "linear2"]
        inject(net, {"rank": spec["rank"], "alpha": 2.0 * spec["rank"], "dropout": 0.0, "modules": modules})
    elif scheme == "frozen":
        for m in [net.encoder, net.value_encoder, *net.transformer_encoder.layers[: spec["freeze_layers"]]]:
            m.requires_grad_(False)
    net.gradient_checkpointing = config.endswith("+ckpt")
    net.train()
    n_trained, n_all = trained_parameters(net)
    plan = ScGPTTrainingPlan(net, TASKS["annotation"].recipe, lr=1e-4, schedule="constant")
    opt = plan.configure_optimizers()

    g = torch.Generator().manual_seed(1)
    genes = torch.stack([torch.randperm(60_000, generator=g)[:L] for _ in range(B)])
    genes[:, 0] = 60_695  # <cls>
    values = torch.randint(1, 51, (B, L), generator=g).float()
    values[:, 0] = 0.0
    batch = CellBatch(
        genes=genes, values=values, target=values.clone(), padding_mask=torch.zeros(B, L, dtype=torch.bool),
        predict_mask=torch.zeros(B, L, dtype=torch.bool), labels=torch.randint(0, 10, (B,), generator=g),
    ).to(device)  # fmt: skip

    saved: dict[int, int] = {}

    def pack(t):  # bytes of the tensors kept for the backward pass (each storage once)
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = plan.compute_losses(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["warmup"]):
        step()
    seconds = step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    saved_step = sum(saved.values())  # outside checkpointed layers only, when checkpointing
    # what one layer keeps for its backward pass (alive for one layer at a time under checkpointing)
    layer = net.transformer_encoder.layers[-1]
    x = torch.randn(B, L, net.config.d_model, device=device, requires_grad=True)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            layer(x)
    layer_saved = sum(saved.values())
    active = trained_layers(net)
    activations = saved_step
    if net.gradient_checkpointing:  # + the layers' inputs + one layer recomputed at a time
        activations += active * x.numel() * x.element_size() + layer_saved
    return {
        **spec,
        "peak_bytes": int(peak),
        "rss_before_step": int(rss_before),
        "seconds": seconds,
        "cells_per_s": B / seconds,
        "n_trained": n_trained,
        "n_parameters": n_all,
        "rss_imports": int(rss_imports),
        "saved_bytes": int(saved_step),
        "layer_saved_bytes": int(layer_saved),
        "activation_bytes": int(activations),
        "trained_layers": active,
    }


def run_one(spec: dict, timeout: float, mmap_threshold: int = 0) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if mmap_threshold:  # large blocks mmapped and returned when freed: peak RSS follows the live memory
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {**spec, "error": tail[0][:300]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------- tables
def fits(memory_gb: float, fixed: float, per_cell: float, context_gb: float) -> int:
    return max(0, int((USABLE * memory_gb * 1e9 - context_gb * 1e9 - fixed) // per_cell))


def fitted(results: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (config, precision): fixed bytes and activation bytes per cell from the measured batch sizes."""
    out = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if "error" not in r:
            groups.setdefault((r["config"], r["precision"]), []).append(r)
    for key, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["batch_size"])
        if len({r["batch_size"] for r in rows}) < 2:
            continue
        lo, hi = rows[0], rows[-1]
        db = hi["batch_size"] - lo["batch_size"]
        per_cell = (hi["peak_bytes"] - lo["peak_bytes"]) / db
        fixed = lo["peak_bytes"] - per_cell * lo["batch_size"]
        out[key] = {
            "per_cell": per_cell,
            "fixed": fixed,
            "activations_per_cell": (hi["activation_bytes"] - lo["activation_bytes"]) / db,
            "n_trained": lo["n_trained"],
            "n_parameters": lo["n_parameters"],
        }
    return out


def print_tables(meta: dict, results: list[dict]) -> None:
    gib = 2**30
    print(f"\n## One fine-tuning step at whole-human shape ({meta['device_name']}, {meta['threads']} threads)\n")
    peak = "max_memory_allocated" if meta["device"] == "cuda" else "peak RSS"
    print(
        f"{meta['max_length']} tokens per cell; attention dropout {meta['attn_dropout']}; load average at start "
        f"{meta['load_start']}; peak = {peak}\n"
    )
    print("| configuration | precision | batch | trained parameters | peak memory (GiB) | cells/s | step (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in sorted(results, key=lambda r: (CONFIGS.index(r["config"]), r["precision"], r["batch_size"])):
        if "error" in r:
            print(f"| {r['config']} | {r['precision']} | {r['batch_size']} | | {r['error']} | | |")
            continue
        share = 100 * r["n_trained"] / r["n_parameters"]
        print(
            f"| {r['config']} | {r['precision']} | {r['batch_size']} | {r['n_trained']:,} ({share:.2f} %) | "
            f"{r['peak_bytes'] / gib:.2f} | {r['cells_per_s']:.3f} | {r['seconds']:.1f} |"
        )
    fit = fitted(results)
    if not fit:
        print("\n(one batch size per configuration: no per-cell slope, no resource table)")
        return
    measured_gpu = meta["device"] == "cuda"
    label = "measured on this GPU" if measured_gpu else "arithmetic from the CPU measurements above"
    print("\n## Per-cell activations and the fixed part (slope and intercept over batch size)\n")
    print("| configuration | precision | fixed (GiB) | peak RSS per cell (GiB) | activations per cell (GiB) |")
    print("|---|---|---:|---:|---:|")
    for (config, precision), f in sorted(fit.items(), key=lambda kv: (CONFIGS.index(kv[0][0]), kv[0][1])):
        print(
            f"| {config} | {precision} | {f['fixed'] / gib:.2f} | {f['per_cell'] / gib:.3f} | "
            f"{f['activations_per_cell'] / gib:.3f} |"
        )
    context = 0.0 if measured_gpu else CONTEXT_GB
    print(f"\n## What fits where: the largest batch of {meta['max_length']}-token cells per step ({label})\n")
    if measured_gpu:
        print("Fixed part and per-cell activations as measured on this GPU; 90 % of the memory usable.\n")
    else:
        print(
            "Fixed part = float32 weights + gradients and two Adam moments of the trained weights (4 x all + 12 x "
            f"trained bytes) + a {CONTEXT_GB} GB CUDA context; activations per cell as measured on CPU (the tensors "
            "kept for the backward pass, counted with saved-tensor hooks; under checkpointing the layers' inputs and "
            "one layer's activations); "
            f"{int(USABLE * 100)} % of the GPU's memory usable.\n"
        )
    print(
        "| configuration | precision | " + " | ".join(f"{g} GB" for g in GPU_SIZES_GB) + " | batch 8 / 32 / 64 (GB) |"
    )
    print("|---|---|" + "---:|" * (len(GPU_SIZES_GB) + 1))
    need: dict[tuple[str, str], tuple[float, float]] = {}
    for (config, precision), f in sorted(fit.items(), key=lambda kv: (CONFIGS.index(kv[0][0]), kv[0][1])):
        fixed = f["fixed"] if measured_gpu else 4.0 * f["n_parameters"] + 12.0 * f["n_trained"]
        cell = f["per_cell"] if measured_gpu else f["activations_per_cell"]
        need[config, precision] = (fixed, cell)
        sizes = " | ".join(str(fits(g, fixed, cell, context)) for g in GPU_SIZES_GB)
        total = " / ".join(f"{(fixed + b * cell) / 1e9 + context:.1f}" for b in (8, 32, 64))
        print(f"| {config} | {precision} | {sizes} | {total} |")
    if ("full", "fp32") in need:
        print()
        fixed0, cell0 = need["full", "fp32"]
        for (config, precision), (fixed, cell) in need.items():
            if (config, precision) == ("full", "fp32"):
                continue
            parts = []
            for b in (8, 32, 64):
                full, this = fixed0 + b * cell0 + context * 1e9, fixed + b * cell + context * 1e9
                parts.append(
                    f"batch {b}: {this / 1e9:.1f} vs {full / 1e9:.1f} GB ({100 * (1 - this / full):.0f} % less)"
                )
            print(f"- {config} {precision} against full fp32: " + "; ".join(parts))


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.from_json:
        runs = [json.loads(Path(f).read_text()) for f in args.from_json.split(",")]
        print_tables(runs[0]["meta"], [r for run in runs for r in run["results"]])
        return
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise SystemExit(f"--configs: unknown {bad}; choose from {CONFIGS}")
    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})",
        "threads": args.threads,
        "max_length": args.max_length,
        "attn_dropout": args.attn_dropout,
        "load_start": round(os.getloadavg()[0], 1),
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "torch": torch.__version__,
    }
    results = []
    for config in configs:
        for precision in args.precisions.split(","):
            for b in (int(x) for x in args.batch_sizes.split(",")):
                spec = {
                    "config": config, "precision": precision, "batch_size": b, "max_length": args.max_length,
                    "freeze_layers": args.freeze_layers, "rank": args.rank, "attn_dropout": args.attn_dropout,
                    "warmup": args.warmup, "device": device, "threads": args.threads,
                }  # fmt: skip
                r = run_one(spec, args.timeout, args.malloc_mmap_threshold)
                results.append(r)
                status = r.get("error") or f"peak {r['peak_bytes'] / 2**30:.2f} GiB, {r['cells_per_s']:.3f} cells/s"
                print(f"{config:>12} {precision} batch {b:>3}: {status}", flush=True)
                out = Path(args.out_json)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    meta["load_end"] = round(os.getloadavg()[0], 1)
    print_tables(meta, results)


if __name__ == "__main__":
    main()
