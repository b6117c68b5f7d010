"""``scgpt finetune --adapter lora`` and ``--gradient-checkpointing`` (in-process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scgpt.cli import main

FAST = ["--max-length", "48", "--batch-size", "16", "--accelerator", "cpu", "--quiet", "--max-steps", "2"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """120 real PBMCs with cell types, in an .h5ad file."""
    import scgpt

    adata = scgpt.datasets.pbmc68k_counts()
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 120, replace=False)].copy()
    path = tmp_path_factory.mktemp("data") / "pbmc120.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.mark.filterwarnings("ignore:.*cell types have a single cell:UserWarning")
def test_finetune_with_adapters_writes_the_adapter_alone(cells, tiny_model, tmp_path):
    """Catches the command line ignoring --adapter (a full fine-tune written as a full model), writing the base
    again into --output, or an adapter folder that does not load back on --model: the folder holds adapter.pt
    only, and ScGPT.from_pretrained(folder) gives the fine-tuned model on its recorded base."""
    from scgpt.model import ScGPT

    base_dir = tiny_model(d_model=16, n_heads=2, d_hid=32, n_layers=1).save_pretrained(tmp_path / "base")
    out = tmp_path / "lora"
    argv = ["finetune", "--model", str(base_dir), "--input", str(cells), "--output", str(out), "--recipe", "annotation"]
    assert main([*argv, "--labels-key", "bulk_labels", "--adapter", "lora", "--adapter-rank", "4", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["README.md", "adapter.pt"]  # and its card
    model = ScGPT.from_pretrained(out)
    info = model.registry_["adapter"]
    assert info["rank"] == 4 and info["base"] == str(base_dir)
    base = ScGPT.from_pretrained(base_dir)
    assert torch.equal(
        model.net.transformer_encoder.layers[0].linear1.base_layer.weight,
        base.net.transformer_encoder.layers[0].linear1.weight,
    )
    again = tmp_path / "ckpt"  # gradient checkpointing: the same training, written as a plain model
    argv = [
        "finetune",
        "--model",
        str(base_dir),
        "--input",
        str(cells),
        "--output",
        str(again),
        "--recipe",
        "annotation",
    ]
    assert main([*argv, "--labels-key", "bulk_labels", "--gradient-checkpointing", "--freeze-layers", "1", *FAST]) == 0
    plain = ScGPT.from_pretrained(again)
    assert "adapter" not in plain.registry_
    assert torch.equal(
        plain.net.transformer_encoder.layers[0].linear1.weight, base.net.transformer_encoder.layers[0].linear1.weight
    )  # --freeze-layers 1 reached finetune
