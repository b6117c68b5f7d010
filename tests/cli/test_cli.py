"""The ``scgpt`` command line: embed, pretrain, finetune, config files and error handling (in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scgpt.cli import build_parser, main
from scgpt.cli._common import apply_config, read_training_data

TINY = ["--d-model", "16", "--n-heads", "2", "--d-hid", "32", "--n-layers", "1"]
FAST = ["--max-length", "64", "--batch-size", "16", "--accelerator", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """200 real PBMCs (raw counts, obs['bulk_labels']) in an .h5ad file."""
    import scgpt

    adata = scgpt.datasets.pbmc68k_counts()
    adata = adata[np.random.default_rng(0).choice(adata.n_obs, 200, replace=False)].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    path = tmp_path_factory.mktemp("data") / "pbmc200.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model) -> Path:
    """An official-format folder of a tiny untrained model over the 765 pbmc68k genes."""
    model = tiny_model(d_model=16, n_heads=2, d_hid=32, n_layers=1)
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def test_import_and_help_are_light():
    code = "import sys, scgpt.cli; assert 'torch' not in sys.modules and 'anndata' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert main(["--help"]) == 0
    assert main(["pretrain", "--help"]) == 0


def test_embed_writes_the_embeddings_of_tl_embed(cells, model_dir, tmp_path):
    import anndata as ad

    import scgpt

    out = tmp_path / "out.h5ad"
    args = ["embed", "--model", str(model_dir), "--input", str(cells), "--output", str(out)]
    assert main([*args, "--max-length", "128", "--quiet"]) == 0
    result = ad.read_h5ad(out)
    expected = ad.read_h5ad(cells)
    scgpt.tl.embed(expected, str(model_dir), max_length=128, progress=False)
    assert result.obsm["X_scGPT"].shape == (200, 16)
    np.testing.assert_allclose(result.obsm["X_scGPT"], expected.obsm["X_scGPT"], atol=1e-6)
    assert result.n_vars == expected.n_vars and result.X.nnz == expected.X.nnz  # the whole input is kept


@pytest.mark.slow  # sc.pp.neighbors compiles numba code (~6 s)
def test_embed_backed_with_umap_figure(cells, model_dir, tmp_path):
    import anndata as ad

    out, png = tmp_path / "out.h5ad", tmp_path / "umap.png"
    args = ["embed", "--model", str(model_dir), "--input", str(cells), "--output", str(out), "--backed"]
    assert main([*args, "--figure", str(png), "--max-length", "128", "-q"]) == 0
    result = ad.read_h5ad(out)  # obs, var, obsm and uns only
    assert result.X is None and result.obsm["X_scGPT"].shape == (200, 16) and result.obsm["X_umap"].shape == (200, 2)
    assert list(result.obs["bulk_labels"]) == list(ad.read_h5ad(cells, backed="r").obs["bulk_labels"])
    assert png.stat().st_size > 0


def test_config_file_values_apply_and_command_line_wins(cells, model_dir, tmp_path):
    import anndata as ad

    out = tmp_path / "out.h5ad"
    config = tmp_path / "embed.toml"
    config.write_text(
        f'model = "{model_dir}"\ninput = "{cells}"\noutput = "{out}"\nkey-added = "X_from_file"\n'
        "seed = 3\n[embed]\nbatch_size = 8\nmax-length = 200\n"
    )
    assert main(["embed", "--config", str(config), "--key-added", "X_cli", "--max-length", "50", "-q"]) == 0
    result = ad.read_h5ad(out)
    assert "X_from_file" not in result.obsm
    params = result.uns["X_cli"]["params"]
    assert (params["seed"], params["batch_size"], params["max_length"]) == (3, 8, 50)


def test_config_json_is_checked(tmp_path, capsys):
    parser, subparsers = build_parser()
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"input": ["a.h5ad", "b.h5ad"], "max_steps": "7", "early-stopping": True}))
    argv = ["pretrain", "--config", str(good), "--output", "x"]
    apply_config(argv, subparsers)
    args = parser.parse_args(argv)
    assert (args.input, args.max_steps, args.early_stopping, args.lr) == (["a.h5ad", "b.h5ad"], 7, True, 1e-4)
    for bad in ({"max-stepz": 3}, {"recipe": "annotation"}, {"early-stopping": "yes"}):
        good.write_text(json.dumps(bad))
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("scgpt: error:") and "Traceback" not in err


def test_pretrain_from_scratch_writes_loadable_folders(cells, tmp_path, capsys):
    from scgpt.io import load_official
    from scgpt.model import ScGPT

    out = tmp_path / "pre"
    argv = ["pretrain", "--input", str(cells), "--output", str(out), *TINY, "--max-steps", "3", *FAST]
    assert main(argv) == 0
    assert "scgpt pretrain: 3 steps" in capsys.readouterr().out
    assert {"args.json", "vocab.json", "best_model.pt", "model.pt", "checkpoints"} <= {p.name for p in out.iterdir()}
    assert (out / "checkpoints" / "last.ckpt").is_file() and list(out.glob("checkpoints/**/metrics.csv"))
    net, ckpt, report = load_official(out)  # the official folder on its own
    assert report.clean and net.config.d_model == 16 and len(ckpt.vocab) == 765 + 3
    model = ScGPT.from_pretrained(out)
    assert model.config.n_layers == 1 and model.is_trained_
    assert main(argv) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv[: -len(FAST)], "--max-steps", "5", *FAST, "--resume"]) == 0  # continues from last.ckpt
    assert "scgpt pretrain: 5 steps" in capsys.readouterr().out


def test_pretrain_lazy_from_two_files_continuing_a_model(cells, model_dir, tmp_path, capsys):
    import anndata as ad

    adata = ad.read_h5ad(cells)
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    adata[:100, :500].copy().write_h5ad(a)
    adata[100:, 300:].copy().write_h5ad(b)
    joined = read_training_data([str(a), str(b)], None, None)  # in memory: genes matched by name
    assert joined.shape == (200, 765)
    gene = adata.var_names[0]  # only measured in a.h5ad
    np.testing.assert_array_equal(joined[:, gene].X.toarray().ravel()[:100], adata[:100, gene].X.toarray().ravel())
    assert joined[100:, gene].X.nnz == 0
    out = tmp_path / "cont"
    argv = ["pretrain", "--input", str(a), str(b), "--lazy", "--model", str(model_dir), "--output", str(out)]
    assert main([*argv, "--recipe", "pretrain-masked", "--max-steps", "2", *FAST]) == 0
    assert "2 steps" in capsys.readouterr().out


def test_finetune_annotation_sizes_the_head(cells, model_dir, tmp_path):
    import anndata as ad
    import torch

    from scgpt.io import load_official
    from scgpt.model import ScGPT

    out = tmp_path / "annot"
    argv = ["finetune", "--model", str(model_dir), "--input", str(cells), "--output", str(out)]
    with pytest.warns(UserWarning, match=r"1 cell types have a single cell \(\['CD34\+'\]\)"):  # of the 200 cells
        assert main([*argv, "--recipe", "annotation", "--labels-key", "bulk_labels", "--max-steps", "2", *FAST]) == 0
    labels = ad.read_h5ad(cells).obs["bulk_labels"]
    model = ScGPT.from_pretrained(out)
    assert model.config.n_cls == labels.nunique()
    assert model.registry_["label_categories"] == list(labels.cat.remove_unused_categories().cat.categories)
    assert load_official(out)[0].config.n_cls == labels.nunique()  # the official folder too
    again = tmp_path / "again"  # seeded: the new head's initialisation and the training are reproducible
    argv = ["finetune", "--config", str(out / "checkpoints" / "cli_args.json"), "--output", str(again)]
    with pytest.warns(UserWarning, match="single cell"):
        assert main(argv) == 0
    for key, value in ScGPT.from_pretrained(again).net.state_dict().items():
        assert torch.equal(value, model.net.state_dict()[key]), key


def test_finetune_integration(cells, model_dir, tmp_path):
    from scgpt.model import ScGPT

    out = tmp_path / "integ"
    argv = ["finetune", "--model", str(model_dir), "--input", str(cells), "--output", str(out)]
    assert main([*argv, "--recipe", "integration", "--batch-key", "batch", "--max-steps", "1", *FAST]) == 0
    c = ScGPT.from_pretrained(out).config
    assert (c.n_batch_labels, c.batch_norm, c.dab, c.explicit_zero_prob) == (2, "dsbn", True, True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--model", "{model}", "--input", "missing.h5ad", "--output", "o.h5ad"], "no such file"),
        (["embed", "--model", "no/such/model", "--input", "{cells}", "--output", "o.h5ad"], "no such folder"),
        (["embed", "--model", "{model}", "--input", "{cells}", "--output", "o.h5ad", "--layer", "nope"], "nope"),
        (["finetune", "--model", "{model}", "--input", "{cells}", "--output", "o", "--recipe", "annotation"], "labels"),
        (["pretrain", "--model", "{model}", "--input", "{cells}", "--output", "o", "--d-model", "8"], "new model"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, message, cells, model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(model=model_dir, cells=cells) for a in argv]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scgpt: error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_python_dash_m_reports_errors(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scgpt.cli",
            "embed",
            "--input",
            str(tmp_path / "x.h5ad"),
            "--output",
            "o.h5ad",
            "--model",
            str(tmp_path / "no_model"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("scgpt: error:") and "Traceback" not in proc.stderr


def test_embed_organism_reads_mouse_genes_as_their_human_orthologs(
    cells, model_dir, tmp_path, capsys, mouse_round_trip
):
    """``--organism mouse``: catches the option not reaching the gene matching (the mouse names would not match)."""
    import anndata as ad

    import scgpt

    human = ad.read_h5ad(cells)[:40].copy()
    restricted, mouse, _, _ = mouse_round_trip(human, scgpt.model.ScGPT.from_pretrained(model_dir).vocab)
    path, out = tmp_path / "mouse.h5ad", tmp_path / "out.h5ad"
    mouse.write_h5ad(path)
    args = ["embed", "--model", str(model_dir), "--input", str(path), "--output", str(out), "--quiet"]
    assert main([*args, "--organism", "Mus musculus", "--max-length", "128"]) == 0
    result = ad.read_h5ad(out)
    scgpt.tl.embed(restricted, str(model_dir), max_length=128, progress=False)
    np.testing.assert_allclose(result.obsm["X_scGPT"], restricted.obsm["X_scGPT"], atol=1e-6)
    assert result.uns["X_scGPT"]["params"]["organism"] == "mouse"
    assert main([*args, "--organism", "martian"]) == 2
    assert "--organism martian: organism='martian' is not a species" in capsys.readouterr().err


def test_console_warnings_are_one_scgpt_line():
    """Catches the console command printing warnings in Python's format (``.../bin/scgpt:6: UserWarning: ...``
    followed by a source line) or over several lines, instead of one ``scgpt: warning: ...`` line."""
    code = (
        "import warnings, scgpt.cli as cli\n"
        "def fake(argv=None):\n"
        "    warnings.warn('gene X maps to a taken token;\\n  it is left out')\n"
        "    return 0\n"
        "cli.main = fake\n"
        "cli.entry([])\n"
    )
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr == "scgpt: warning: gene X maps to a taken token; it is left out\n"


def test_umap_figure_names_the_model_and_the_coloured_column(tmp_path, monkeypatch):
    """Catches the CLI's UMAP naming neither the model nor the obs column that colours it (a bare 'bulk_labels' or
    nothing at all over an unlabelled plot)."""
    import anndata as ad
    import matplotlib.pyplot as plt
    import pandas as pd

    from scgpt.cli._embed import _umap_figure

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b"], 60))}, index=[f"c{i}" for i in range(60)])
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_scGPT"] = rng.normal(size=(60, 8)).astype(np.float32)
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    _umap_figure(adata, "X_scGPT", tmp_path / "u.png", None, seed=0, model="/models/scGPT_human")
    (fig,) = closed
    assert fig._suptitle.get_text() == "UMAP of scGPT_human embeddings (obsm['X_scGPT']), 60 cells"
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["coloured by cell_type"]
    assert (tmp_path / "u.png").stat().st_size > 0
