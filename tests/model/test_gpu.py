"""CUDA paths (skipped without a GPU): same embeddings as on CPU, half precision close, training steps run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scgpt
from scgpt.model import ScGPT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_cuda_embeddings_match_cpu(pbmc, base_model):
    cpu = scgpt.tl.embed(pbmc, base_model, device="cpu", max_length=128, copy=True).obsm["X_scGPT"]
    cuda = scgpt.tl.embed(pbmc, base_model, device="cuda", max_length=128, copy=True).obsm["X_scGPT"]
    assert np.abs(cuda - cpu).max() < 1e-4  # TF32 is off by default in PyTorch matmuls
    for dtype in ("bfloat16", "float16"):
        half = scgpt.tl.embed(pbmc, base_model, device="cuda", dtype=dtype, max_length=128, copy=True).obsm["X_scGPT"]
        assert _cos(half, cpu).mean() > 0.999 and _cos(half, cpu).min() > 0.99, dtype
    assert base_model.device.type == "cpu"  # the caller's model is not moved


def test_cuda_training_bf16_mixed(pbmc, tmp_path):
    from scgpt.data import AnnDataSource, GeneVocab

    torch.manual_seed(0)
    vocab = GeneVocab.from_genes(pbmc.var_names)
    model = ScGPT(vocab=vocab, d_model=64, n_heads=4, d_hid=128, n_layers=2, generative=True, n_cls=None)
    dm = model.make_datamodule(AnnDataSource(pbmc, np.arange(pbmc.n_vars), len(vocab)), "pretrain", batch_size=32)
    model.train(
        datamodule=dm,
        recipe="pretrain",
        max_epochs=3,
        plan_kwargs={"lr": 1e-3},
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        checkpoint_dir=tmp_path,
    )
    h = model.history_
    assert h["val_mlm"][-1] < h["val_mlm"][0] and np.isfinite(h["val_loss"]).all()
