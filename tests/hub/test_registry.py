"""The registry: the official model zoo and the demo, facts only where a source gives them, by name from the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

import scgpt
from scgpt.cli import main

ZOO = ["scGPT_human", "scGPT_CP", "scGPT_brain", "scGPT_blood", "scGPT_heart", "scGPT_lung", "scGPT_kidney",
       "scGPT_pancancer"]  # fmt: skip


def test_the_table_lists_the_model_zoo_and_the_demo(cache):
    """Nine rows; the whole-human facts; direct download only where a file URL exists; the demo is bundled.

    Catches: a model of the official zoo missing, a Google Drive folder presented as a direct download.
    """
    table = scgpt.hub.list_models()
    assert list(table.index) == [*ZOO, "demo"]
    human = table.loc["scGPT_human"]
    assert (human["architecture"], human["vocab_size"], human["species"]) == ("12 x 512", 60_697, "human")
    assert human["sha256"] == "published" and human["download"] == "direct"
    assert "https://drive.google.com/drive/folders/1oWh_-ZRdhtoGQ2Fw24HP41FgLoomVo-y" in human["sources"]
    assert set(table.loc[ZOO[1:], "download"]) == {"manual (see sources)"}
    assert table.loc["demo", "download"] == "bundled" and bool(table.loc["demo", "cached"])
    assert table.loc["scGPT_blood", "vocab_size"] == 36_574 and "Nature Methods" in human["citation"]


def test_no_hash_or_size_is_made_up():
    """Only the whole-human files have hashes (from the cited mirror's card); no size is given anywhere.

    Catches: a registry that fills in hashes or sizes no source publishes (they would then refuse the real
    files, or lend false confidence).
    """
    pinned = {e: [f.sha256 for f in scgpt.hub.get_entry(e).files if f.sha256] for e in ZOO}
    assert {e: len(v) for e, v in pinned.items()} == {e: (3 if e == "scGPT_human" else 0) for e in ZOO}
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in pinned["scGPT_human"])
    assert all(f.size is None for e in ZOO for f in scgpt.hub.get_entry(e).files)
    assert scgpt.hub.get_entry("scGPT_human").hash_source.startswith("https://huggingface.co/u-cellm/")


@pytest.mark.parametrize(("alias", "name"), [("whole-human", "scGPT_human"), ("SCGPT_BC", "scGPT_blood"),
                                             ("pan-cancer", "scGPT_pancancer"), ("CP", "scGPT_CP")])  # fmt: skip
def test_aliases_and_case(alias, name):
    """Names match case-insensitively and by alias (the names used in the official README and tutorials)."""
    assert scgpt.hub.get_entry(alias).name == name and scgpt.hub.is_published(alias)


def test_register_checks_its_input():
    """A URL without ``{file}``, no source, or a name taken: clear errors, nothing registered.

    Catches: a registry entry that cannot produce a file URL, or silently replaces another model.
    """
    with pytest.raises(ValueError, match=r"needs a '\{file\}' placeholder"):
        scgpt.hub.register("x_model", files={"a": None}, urls="http://127.0.0.1/a")
    with pytest.raises(ValueError, match="give urls="):
        scgpt.hub.register("x_model", files={"a": None})
    with pytest.raises(ValueError, match="already"):
        scgpt.hub.register("whole-human", files={"a": None}, urls="http://127.0.0.1/{file}")
    assert not scgpt.hub.is_published("x_model")


def test_import_scgpt_hub_stays_light():
    """``import scgpt.hub`` (and ``scgpt models --help``) load neither torch nor scanpy nor pandas."""
    code = "import sys, scgpt.hub; print(sorted(m for m in ('torch', 'scanpy', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_models_and_download(registered, server, cache, capsys):
    """``scgpt models`` prints the table; ``scgpt download NAME`` prints the verified folder.

    Catches: subcommands missing from the parser, a download command that prints before verifying.
    """
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "scGPT_human" in out and "published" in out and "manual (see sources)" in out
    assert main(["download", "hubtest_model", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / "hubtest_model")
    assert main(["download", "scGPT_humna", "-q"]) == 2
    assert "did you mean 'scGPT_human'?" in capsys.readouterr().err


def test_cli_embed_max_cells(tmp_path):
    """``scgpt embed --max-cells 50`` embeds the first 50 cells (the CI check of a fresh install uses it).

    Catches: the option accepted but ignored (700 cells written), or cells other than the first.
    """
    import anndata as ad

    out = tmp_path / "e.h5ad"
    argv = ["embed", "--model", "demo", "--input", "pbmc68k", "--output", str(out), "--max-cells", "50", "-q"]
    assert main([*argv, "--device", "cpu"]) == 0
    result = ad.read_h5ad(out)
    assert result.n_obs == 50 and result.obsm["X_scGPT"].shape == (50, 128)
    assert list(result.obs_names) == list(scgpt.datasets.pbmc68k_counts().obs_names[:50])
    assert main([*argv[:-2], "--max-cells", "0", "-q"]) == 2
