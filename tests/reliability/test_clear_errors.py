"""Bad input gets a message naming the problem, not a traceback from inside a library."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import scgpt


def test_dense_float16_counts_embed_like_float32(pbmc, base_model):
    ref = scgpt.tl.embed(pbmc, base_model, max_length=64, copy=True).obsm["X_scGPT"]
    half = ad.AnnData(pbmc.X.toarray().astype(np.float16), obs=pbmc.obs, var=pbmc.var)
    out = scgpt.tl.embed(half, base_model, max_length=64, copy=True).obsm["X_scGPT"]
    np.testing.assert_allclose(out, ref, atol=1e-5)  # counts up to 2048 are exact in float16


def test_backed_input_where_memory_is_needed(pbmc, base_model, tmp_path):
    pbmc.write_h5ad(tmp_path / "c.h5ad")
    backed = ad.read_h5ad(tmp_path / "c.h5ad", backed="r")
    with pytest.raises(ValueError, match="preprocess needs the AnnData in memory, and this one is backed"):
        scgpt.pp.preprocess(backed)
    with pytest.raises(ValueError, match=r"embed\(copy=True\) needs the AnnData in memory.*copy=False"):
        scgpt.tl.embed(backed, base_model, copy=True)
    backed.file.close()


@pytest.mark.parametrize(
    ("device", "message"),
    [("mps", "no MPS"), ("gpu", "not a device PyTorch knows"), ("cuda:7", "CUDA")],
)
def test_devices_that_are_not_there(pbmc, base_model, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:  # pragma: no cover
        pytest.skip("a machine with 8 GPUs has cuda:7")
    with pytest.raises(ValueError, match=message):
        scgpt.tl.embed(pbmc, base_model, device=device)


def test_options_out_of_range(pbmc, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        scgpt.pp.bin_values(pbmc, chunk_size=0)
    with pytest.raises(ValueError, match="flavor must be one of"):
        scgpt.pp.highly_variable_genes(pbmc, 100, flavor="seurat3")
    with pytest.raises(ValueError, match="n_neighbors must be at least 1"):
        scgpt.tl.annotate(pbmc, reference=pbmc, labels_key="bulk_labels", method="knn", n_neighbors=0)
    model = tiny_model()
    scgpt.model.ScGPT.setup_anndata(pbmc)
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \[0, 1\)"):
        model.train(pbmc, recipe="pretrain-masked", mask_ratio=1.5, max_steps=1)
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        model.train(pbmc, recipe="pretrain-masked", max_length=1, max_steps=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="checkpoint_dir='.*file' is a file"):
        model.train(pbmc, recipe="pretrain-masked", max_steps=1, checkpoint_dir=tmp_path / "file")
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir="):
        model.train(pbmc, recipe="pretrain-masked", max_steps=1, resume=True)


def test_resume_problems(pbmc, tiny_model, tmp_path):
    scgpt.model.ScGPT.setup_anndata(pbmc)
    kw = {"recipe": "pretrain-masked", "max_steps": 2, "batch_size": 16, "max_length": 32, "train_size": 1.0}
    with pytest.warns(
        UserWarning,
        match=r"resume=True: the checkpoint folder .*new does not exist .*; training starts over from step 0",
    ):
        tiny_model().train(pbmc, checkpoint_dir=tmp_path / "new", resume=True, **kw)
    last = tmp_path / "new" / "last.ckpt"
    with pytest.warns(
        UserWarning, match=r"Resuming with settings that differ from the checkpoint's \(lr: 0.0001 -> 0.01"
    ):
        tiny_model().train(
            pbmc, checkpoint_dir=tmp_path / "new", resume=True, **{**kw, "max_steps": 3}, plan_kwargs={"lr": 1e-2}
        )
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(ValueError, match="last.ckpt cannot be read: it is truncated or damaged"):
        tiny_model().train(pbmc, checkpoint_dir=tmp_path / "new", resume=True, **kw)
