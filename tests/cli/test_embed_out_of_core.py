"""``scgpt embed --backed``: embeddings written chunk by chunk to OUTPUT.parts, resumed after an interruption
(also on another number of processes), equal to the in-memory result."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import scgpt
from scgpt.cli import main
from scgpt.model import _outofcore

pytestmark = pytest.mark.slow
OPTS = ["--max-length", "128", "--batch-size", "16", "--device", "cpu", "--chunk-size", "128"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model, pbmc_counts) -> tuple[Path, Path, np.ndarray]:
    """A tiny model folder, 700 real cells in shuffled order in an .h5ad, and their in-memory embeddings."""
    import anndata as ad

    root = tmp_path_factory.mktemp("ooc")
    model_dir = tiny_model(dropout=0.0, d_model=16, n_heads=2, d_hid=32, n_layers=1).save_pretrained(root / "tiny")
    cells = root / "cells.h5ad"
    pbmc_counts[np.random.default_rng(2).permutation(pbmc_counts.n_obs)].copy().write_h5ad(cells)
    adata = ad.read_h5ad(cells)
    scgpt.tl.embed(adata, str(model_dir), max_length=128, batch_size=16, device="cpu", progress=False)
    return model_dir, cells, adata.obsm["X_scGPT"]


@pytest.fixture
def log() -> io.StringIO:
    """What the scgpt logger writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("scgpt")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def _args(model_dir: Path, cells: Path, out: Path) -> list[str]:
    return ["embed", "--model", str(model_dir), "--input", str(cells), "--output", str(out), "--backed", *OPTS]


def _interrupt_after(monkeypatch, k: int) -> None:
    """Ctrl-C right after the k-th chunk file is written."""
    write, count = _outofcore.ChunkStore.write, [0]

    def failing(self, i, emb, n_tokens):
        write(self, i, emb, n_tokens)
        count[0] += 1
        if count[0] == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(_outofcore.ChunkStore, "write", failing)


def test_backed_output_is_written_chunk_by_chunk_and_equals_in_memory(files, tmp_path, monkeypatch):
    import anndata as ad

    model_dir, cells, expected = files
    written = []
    write = _outofcore.ChunkStore.write
    monkeypatch.setattr(
        _outofcore.ChunkStore, "write", lambda self, i, e, t: (written.append((i, len(e))), write(self, i, e, t))
    )
    out = tmp_path / "out.h5ad"
    assert main(_args(model_dir, cells, out)) == 0
    assert sorted(written) == [(i, min(128, 700 - 128 * i)) for i in range(6)]  # one chunk in memory at a time
    result = ad.read_h5ad(out)
    assert result.X is None and list(result.obs_names) == list(ad.read_h5ad(cells, backed="r").obs_names)
    np.testing.assert_allclose(result.obsm["X_scGPT"], expected, atol=1e-6, rtol=0)
    params = result.uns["X_scGPT"]["params"]
    assert (params["max_length"], params["seed"]) == (128, 0) and result.uns["X_scGPT"]["n_genes"] == 765
    assert not (tmp_path / "out.h5ad.parts").exists()  # the chunks are removed once the result is complete


def test_interrupted_run_resumes_from_the_written_chunks(files, tmp_path, monkeypatch, log, capsys):
    import anndata as ad

    model_dir, cells, expected = files
    out = tmp_path / "out.h5ad"
    parts = tmp_path / "out.h5ad.parts"
    _interrupt_after(monkeypatch, 2)
    assert main(_args(model_dir, cells, out)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("scgpt embed: stopped by SIGINT; 2 chunks are written in") and "resume" in err
    assert not out.exists() and len(list(parts.glob("chunk_*.npz"))) == 2
    (parts / ".chunk_000005.npz.abc.partial.npz").write_bytes(b"half a chunk")  # a write killed half-way
    monkeypatch.undo()

    assert main([*_args(model_dir, cells, out), "--max-length", "64"]) == 2  # another run's chunks are not mixed in
    assert "max_length differ" in capsys.readouterr().err

    written = []
    write = _outofcore.ChunkStore.write
    monkeypatch.setattr(_outofcore.ChunkStore, "write", lambda self, i, e, t: (written.append(i), write(self, i, e, t)))
    assert main(_args(model_dir, cells, out)) == 0
    assert "2 of 6 chunks (256 of 700 cells) are already written; embedding the other 4" in log.getvalue()
    assert sorted(written) == [2, 3, 4, 5]  # the chunks of the first run are kept, not recomputed
    assert not parts.exists()
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_scGPT"], expected, atol=1e-6, rtol=0)


@pytest.mark.distributed
def test_resume_on_two_processes(files, tmp_path, monkeypatch):
    """A run stopped after 3 chunks on one process is finished by two (Lightning's launcher, gloo)."""
    import anndata as ad

    model_dir, cells, expected = files
    out = tmp_path / "out.h5ad"
    parts = tmp_path / "out.h5ad.parts"
    _interrupt_after(monkeypatch, 3)
    assert main([*_args(model_dir, cells, out), "-q"]) == 130
    kept = {p.name: p.stat().st_mtime_ns for p in parts.glob("chunk_*.npz")}
    assert len(kept) == 3
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "scgpt.cli", *_args(model_dir, cells, out), "--devices", "2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "3 of 6 chunks (384 of 700 cells) are already written" in proc.stderr
    assert proc.stdout.count("scgpt embed: 700 cells") == 1  # rank 0 alone writes the result
    np.testing.assert_allclose(ad.read_h5ad(out).obsm["X_scGPT"], expected, atol=1e-6, rtol=0)
    assert not parts.exists()


def test_zarr_store_streams_like_a_backed_h5ad_and_resumes(files, tmp_path, monkeypatch, capsys):
    """A .zarr AnnData store (counts in a layer) is read a block of rows at a time, equals the in-memory result,
    resumes after an interruption, and a changed store is not resumed from."""
    import anndata as ad

    from scgpt.data import open_on_disk, read_rows

    model_dir, cells, expected = files
    adata = ad.read_h5ad(cells)
    adata.layers["counts"] = adata.X.copy()
    adata.X = None
    for fmt in (2, 3):  # both zarr formats; a folder without the .zarr suffix is recognised too
        store = tmp_path / f"cells_v{fmt}"
        with ad.settings.override(zarr_write_format=fmt), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "v2 will no longer be the default"
            adata.write_zarr(store)
        lazy = open_on_disk(store)
        assert type(lazy.layers["counts"]).__name__ == "_CSRDataset"  # on disk, not loaded
        assert (read_rows(lazy.layers["counts"], 5, 9) != adata.layers["counts"][5:9]).nnz == 0
    store = store.rename(tmp_path / "cells.zarr")

    out = tmp_path / "out.h5ad"
    args = [*_args(model_dir, store, out), "--layer", "counts"]
    _interrupt_after(monkeypatch, 2)
    assert main(args) == 130
    monkeypatch.undo()
    assert main(args) == 0
    result = ad.read_h5ad(out)
    assert list(result.obs_names) == list(adata.obs_names)
    np.testing.assert_allclose(result.obsm["X_scGPT"], expected, atol=1e-6, rtol=0)

    _interrupt_after(monkeypatch, 1)
    assert main(args) == 130
    monkeypatch.undo()
    (store / "uns_marker").write_text("changed")  # the store changed since the chunks were written
    assert main(args) == 2
    assert "differ" in capsys.readouterr().err


def test_missing_zarr_store_or_file_is_a_clear_error(files, tmp_path, capsys):
    model_dir, _, _ = files
    assert main(_args(model_dir, tmp_path / "nothing.zarr", tmp_path / "out.h5ad")) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "nothing.zarr" in err and ".zarr AnnData store" in err


def test_soma_experiment_streams_resumes_and_selects_cells(files, tmp_path, monkeypatch, write_soma, capsys):
    """A TileDB-SOMA experiment (Census layout) is streamed with --backed, equals the in-memory result, resumes
    after an interruption; --obs-filter selects cells and --obs-columns the obs written; without --backed the
    output holds the counts too."""
    import anndata as ad

    model_dir, cells, expected = files
    adata = ad.read_h5ad(cells)
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2 == 0, "d0", "d1")
    soma = write_soma(adata, tmp_path / "experiment")
    out = tmp_path / "out.h5ad"
    args = _args(model_dir, soma, out)
    _interrupt_after(monkeypatch, 2)
    assert main(args) == 130
    monkeypatch.undo()
    assert main(args) == 0
    result = ad.read_h5ad(out)
    assert result.X is None and list(result.obs_names) == list(adata.obs_names)
    assert result.obs["soma_joinid"].tolist() == list(range(700))
    np.testing.assert_allclose(result.obsm["X_scGPT"], expected, atol=1e-6, rtol=0)

    picked = [
        *args,
        "--obs-filter",
        "donor == 'd1'",
        "--obs-columns",
        "donor",
        "--soma-config",
        "sm.io_concurrency_level=2",
    ]
    assert main(picked) == 0
    result = ad.read_h5ad(out)
    assert list(result.obs.columns) == ["soma_joinid", "donor"] and list(result.obs_names) == list(
        adata.obs_names[1::2]
    )
    np.testing.assert_allclose(result.obsm["X_scGPT"], expected[1::2], atol=1e-6, rtol=0)

    in_memory = [a for a in picked if a != "--backed"]
    assert main(in_memory) == 0
    result = ad.read_h5ad(out)
    assert (result.X != adata.X[1::2]).nnz == 0
    np.testing.assert_allclose(result.obsm["X_scGPT"], expected[1::2], atol=1e-6, rtol=0)

    # the selected cells are part of what a resumed run must match (here: as many cells, other ones)
    _interrupt_after(monkeypatch, 1)
    assert main([*args, "--obs-filter", "donor == 'd0'"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--obs-filter", "donor == 'd1'"]) == 2
    err = capsys.readouterr().err
    assert "differ" in err and "obs_filter" in err
    shutil.rmtree(out.with_name(out.name + ".parts"))

    capsys.readouterr()
    assert main([*args, "--layer", "counts"]) == 2
    assert "no X layer 'counts'" in capsys.readouterr().err
    assert main([*args, "--soma-config", "vfs.s3.region"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main([*_args(model_dir, cells, out), "--obs-filter", "donor == 'd1'"]) == 2
    assert "--obs-filter: only for a TileDB-SOMA experiment" in capsys.readouterr().err
