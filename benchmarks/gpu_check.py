"""The GPU check: one prepared script, one table, under 8 minutes on a CUDA device.

Sections (each guarded: a failure prints its error in the table and the others still run):

1. the ``gpu``-marked tests (``tests/model/test_gpu.py``), run by pytest in a subprocess;
2. embedding throughput of the whole-human architecture (60,697 tokens, 512 wide, 12 layers, 8 heads; random
   weights) at ~250 and ~1,200 tokens per cell in bfloat16: cells/s, GFLOP/s, share of the device's measured
   bf16 matmul rate and of its nominal dense bf16 peak (known GPUs);
3. one fine-tuning step (forward, backward, AdamW; bf16 autocast) at 1,200 tokens: cells/s and peak memory;
4. the attention network (``tl.infer_grn(method="attention")``): cells/s;
5. agreement of the device's embeddings (float32 and bfloat16) with CPU float32 (cosine, mean and min).

    python benchmarks/gpu_check.py                      # CUDA, whole-human shapes
    python benchmarks/gpu_check.py --device cpu         # tiny shapes on CPU (what the test runs)

With ``--device cpu`` (or ``--tiny``) every shape is tiny (2 layers, 64 wide, tens of tokens), so the whole
script runs in seconds; the gpu tests are skipped there unless ``--tests`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from embed_throughput import cells  # noqa: E402
from tasks import finetune_step  # noqa: E402

import scgpt  # noqa: E402
from scgpt.data import GeneVocab  # noqa: E402
from scgpt.model import CellRows, ScGPT, run_inference  # noqa: E402
from scgpt.model._estimate import forward_flops  # noqa: E402

WHOLE_HUMAN = dict(d_model=512, n_heads=8, d_hid=512, n_layers=12, dropout=0.2, mvc_style=None, n_cls=None)
TINY = dict(d_model=64, n_heads=4, d_hid=64, n_layers=2, dropout=0.2, mvc_style=None, n_cls=None)
BF16_PEAK_TFLOPS = {  # nominal dense bf16 tensor-core peaks (vendor data sheets)
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}


def bf16_peak(name: str) -> float | None:
    """Nominal dense bf16 peak (TFLOP/s) of a GPU by its name, longest matching key first; None if unknown."""
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """GFLOP/s of ``(n x n) @ (n x n)`` products on ``device`` (best of 5 after a warm-up)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_gpu_tests(timeout: int) -> dict:
    """Run the gpu-marked tests; counts of passed/failed/skipped from pytest's junit report."""
    import xml.etree.ElementTree as ET

    junit = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check_{os.getpid()}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/model/test_gpu.py", f"--junitxml={junit}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout)
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [
        c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None
    ]
    return {
        "value": f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped",
        "detail": f"{time.perf_counter() - t:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""),
        "ok": proc.returncode == 0 and passed > 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (default on CPU)")
    p.add_argument("--tests", action="store_true", help="run the gpu tests on CPU too (they skip there)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--cells", type=int, default=0, help="cells per embedding run (default: 2048 on GPU, 8 tiny)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); use --device cpu.")
        return 2
    tiny = args.tiny or device.type == "cpu"
    scgpt.settings.progress = False
    logging.getLogger("scgpt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    info: dict = {"device": str(device), "torch": torch.__version__, "tiny": tiny, "rows": rows}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info["name"] = name

    def section(label: str, fn) -> None:
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - the table reports every section, failed or not
            out = [("FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")]
        for i, (value, detail) in enumerate(out):
            rows.append((label if i == 0 else "", value, detail))
        print(f"[{time.perf_counter() - started:6.1f} s] {label}: done in {time.perf_counter() - t:.1f} s", flush=True)

    # 1. gpu tests
    if not args.skip_tests and (device.type == "cuda" or args.tests):

        def tests():
            r = run_gpu_tests(timeout=240)
            return [(r["value"], r["detail"])]

        section("gpu tests (tests/model/test_gpu.py)", tests)

    arch = TINY if tiny else WHOLE_HUMAN
    vocab = GeneVocab.default()
    n_genes = 30_000
    if tiny:  # a small vocabulary too: the optimiser step over 60,697 embeddings would dominate
        n_genes = 2_000
        vocab = GeneVocab.from_genes(vocab.lookup_tokens(np.arange(n_genes)))
    torch.manual_seed(0)
    model = ScGPT(vocab=vocab, **arch)
    cfg = model.net.config
    genes = pd.DataFrame(index=pd.Index(vocab.lookup_tokens(np.arange(n_genes))))
    lengths = (32, 64) if tiny else (250, 1200)
    n_cells = args.cells or (8 if tiny else 2048)
    mm_n = 256 if tiny else 8192
    rate_bf16 = matmul_rate(device, torch.bfloat16, mm_n)
    rate_fp32 = matmul_rate(device, torch.float32, mm_n)
    peak = bf16_peak(name) if device.type == "cuda" else None
    rows.append(("device", name, f"bf16 matmul {rate_bf16:,.1f} GFLOP/s, fp32 {rate_fp32:,.1f} GFLOP/s "
                 f"({mm_n}^3)" + (f"; nominal bf16 peak {peak:.0f} TFLOP/s" if peak else "")))  # fmt: skip

    # 2. embedding throughput
    def embedding():
        out = []
        for L in lengths:
            X = ad.AnnData(cells(n_cells, L, n_genes, seed=L), var=genes)
            kw = dict(max_length=L, batch_size=64, device=device, dtype=torch.bfloat16, progress=False)
            run_inference(model, X[: min(64, n_cells)].copy(), CellRows(normalize=True), use_aliases=False, **kw)
            sync(device)
            t = time.perf_counter()
            run_inference(model, X, CellRows(normalize=True), use_aliases=False, **kw)
            sync(device)
            dt = time.perf_counter() - t
            gflops = forward_flops(cfg, L) * n_cells / dt / 1e9
            share = f"{gflops / rate_bf16:.0%} of bf16 matmul"
            if peak:
                share += f", {gflops / peak / 1e3:.0%} of nominal peak"
            out.append((f"L={L}: {n_cells / dt:,.0f} cells/s", f"{gflops:,.1f} GFLOP/s = {share}"))
        return out

    section(f"embed bf16 ({n_cells} cells)", embedding)

    # 3. one fine-tuning step
    def finetune():
        B, L = (2, 32) if tiny else (32, 1200)
        tuned = ScGPT(vocab=vocab, **{**arch, "n_cls": 8})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dt = finetune_step(tuned, B, L, "annotate", device=str(device), autocast=torch.bfloat16)
        mem = (
            f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            if device.type == "cuda"
            else "peak memory: CUDA only"
        )
        gflops = 3 * forward_flops(cfg, L) * B / dt / 1e9
        return [(f"B={B} L={L}: {B / dt:,.1f} cells/s", f"{gflops / rate_bf16:.0%} of bf16 matmul; {mem}")]

    section("fine-tune step (bf16 autocast)", finetune)

    # 4. attention network
    def attention():
        n, g = (2, 31) if tiny else (64, 1199)
        rng = np.random.default_rng(0)
        cols = sorted(rng.choice(n_genes, g, replace=False).tolist())
        counts = rng.negative_binomial(2, 0.6, size=(n, g)).astype(np.float32)
        a = ad.AnnData(counts, var=pd.DataFrame(index=[genes.index[c] for c in cols]))
        t = time.perf_counter()
        scgpt.tl.infer_grn(a, model, method="attention", tfs=list(a.var_names[:20]), n_top_genes=None,
                           batch_size=8, device=str(device), use_aliases=False)  # fmt: skip
        sync(device)
        dt = time.perf_counter() - t
        gflops = forward_flops(cfg, g + 1) * n / dt / 1e9
        return [(f"{n} cells x {g} genes: {n / dt:,.2f} cells/s", f"{gflops / rate_fp32:.0%} of fp32 matmul")]

    section("attention network", attention)

    # 5. agreement with CPU float32
    def agreement():
        L = lengths[0]
        X = ad.AnnData(cells(32, L, n_genes, seed=7), var=genes)
        kw = dict(max_length=L, batch_size=16, progress=False, use_aliases=False)
        ref = run_inference(model, X, CellRows(normalize=True), device="cpu", dtype=torch.float32, **kw).output
        out = []
        for dtype in (torch.float32, torch.bfloat16):
            emb = run_inference(model, X, CellRows(normalize=True), device=device, dtype=dtype, **kw).output
            cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
            out.append(
                (
                    f"{str(dtype)[6:]}: cos mean {cos.mean():.5f}, min {cos.min():.5f}",
                    f"max |diff| {np.abs(emb - ref).max():.2e}",
                )
            )
        return out

    section(f"{device.type} vs CPU float32 (32 cells)", agreement)

    total = time.perf_counter() - started
    shapes = "tiny" if tiny else "whole-human"
    print(f"\ngpu_check on {name} (torch {torch.__version__}), {shapes} shapes, {total:.0f} s\n")
    print("| check | result | detail |\n|---|---|---|")
    for label, value, detail in rows:
        print(f"| {label} | {value} | {detail} |")
    info["seconds"] = total
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(info, indent=1))
    return 1 if any(v == "FAILED" for _, v, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
