"""Published models by name: downloaded once, verified, atomic, shared by processes, honest offline.

Every test serves the demo model's files from 127.0.0.1 (``conftest.ModelServer``) as a registered model.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scgpt
from scgpt.hub import IntegrityError, ModelNotAvailableError
from scgpt.model import ScGPT

from .conftest import FILES, NAME

WORKER = Path(__file__).with_name("_download_worker.py")


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and mtime of every file in a folder (hidden ones too)."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def test_first_download_is_verified_and_loads(registered, server, cache, demo_files, pbmc, log_lines):
    """The name downloads once into the cache and the loaded model is the served one.

    Catches: a downloader that writes somewhere else than the folder it loads from, files fetched more
    than once, a name that is not resolved by ``from_pretrained`` / ``tl.embed``, no log line with size and
    destination.
    """
    model = ScGPT.from_pretrained(NAME, device="cpu")
    folder = cache / "models" / NAME
    assert {f: (folder / f).read_bytes() == demo_files[f] for f in FILES} == dict.fromkeys(FILES, True)
    assert dict(server.requests) == dict.fromkeys(FILES, 1)
    assert model.source_ == NAME and model.config.d_model == 128 and model.config.n_layers == 4
    meta = json.loads((folder / ".scgpt-hub.json").read_text())
    assert {f: meta["files"][f]["verified"] for f in FILES} == dict.fromkeys(FILES, "published hash")
    assert not (folder / ".download").exists()
    started = [line for line in log_lines if line.startswith(f"downloading {NAME}")]
    assert started == [f"downloading {NAME} (3 files, {sum(map(len, demo_files.values())) / 1e6:.1f} MB) into {folder}"]

    cells = pbmc[:40].copy()
    scgpt.tl.embed(cells, NAME, device="cpu")
    reference = scgpt.tl.embed(pbmc[:40].copy(), "demo", device="cpu", copy=True)
    np.testing.assert_allclose(cells.obsm["X_scGPT"], reference.obsm["X_scGPT"], atol=1e-6)
    assert dict(server.requests) == dict.fromkeys(FILES, 1)  # tl.embed found the cached copy


def test_second_call_is_served_from_the_cache_with_the_server_stopped(registered, server, cache):
    """Once cached, no network: the server is down and the model still resolves and loads.

    Catches: an implementation that checks the server on every call (a HEAD request, an ETag check) or
    re-downloads, which fails here with the server stopped.
    """
    folder = scgpt.hub.download(NAME, progress=False)
    server.stop()
    assert scgpt.hub.download(NAME) == folder and scgpt.hub.is_cached(NAME)
    assert ScGPT.from_pretrained(NAME, device="cpu").config.d_model == 128
    assert scgpt.model.resolve_model(NAME)[1] == NAME
    assert sum(server.requests.values()) == 3


def test_a_corrupted_file_is_refused_and_nothing_looks_complete(registered, server, cache):
    """A file whose SHA-256 is wrong is refused; no model file is left in the folder, nor a temporary one.

    Catches: trusting a transfer that ended normally, writing straight to the final name, moving the
    files that were fine into place anyway (a folder with args.json and vocab.json but a missing or bad
    best_model.pt would look like a model to a loader).
    """
    server.corrupt.add("best_model.pt")
    with pytest.raises(IntegrityError, match=r"Refused best_model.pt .* SHA-256 .* but the pinned one is"):
        scgpt.hub.download(NAME, progress=False)
    folder = cache / "models" / NAME
    assert not any((folder / f).exists() for f in FILES)
    assert sorted(p.name for p in folder.iterdir()) == []  # no staging folder, no partial file, no record
    assert not scgpt.hub.is_cached(NAME)


def test_a_corrupted_redownload_leaves_the_previous_good_copy_untouched(registered, server, cache):
    """``force=True`` against a server that now serves a bad file: refused, the cached copy bit-identical.

    Catches: deleting or overwriting the cached files before the new ones are verified.
    """
    folder = scgpt.hub.download(NAME, progress=False)
    before = _snapshot(folder)
    server.corrupt.add("best_model.pt")
    with pytest.raises(IntegrityError, match="Nothing was replaced"):
        scgpt.hub.download(NAME, force=True, progress=False)
    assert _snapshot(folder) == before
    assert server.requests["best_model.pt"] == 2 and scgpt.hub.is_cached(NAME)
    assert ScGPT.from_pretrained(NAME, device="cpu").config.d_model == 128


@pytest.mark.parametrize("pinned", [True, False])
def test_a_transfer_cut_half_way_is_never_used_and_a_retry_completes(
    server, cache, demo_hashes, demo_files, pinned
):  # fmt: skip
    """The server sends half of ``best_model.pt`` and closes the connection: restarted, then complete.

    With no published hash (trust on first use) the length check alone must catch it. Catches: keeping
    a short file (``requests`` returning what it got), recording the hash of a truncated file, no retry.
    """
    files = demo_hashes if pinned else dict.fromkeys(demo_hashes)
    scgpt.hub.register(NAME, files=files, urls=server.url + "/{file}", overwrite=True)
    try:
        server.truncate["best_model.pt"] = 1
        folder = scgpt.hub.download(NAME, progress=False)
        assert server.requests["best_model.pt"] == 2
        assert (folder / "best_model.pt").read_bytes() == demo_files["best_model.pt"]
        meta = json.loads((folder / ".scgpt-hub.json").read_text())
        assert meta["files"]["best_model.pt"]["sha256"] == demo_hashes["best_model.pt"][0]
    finally:
        scgpt.hub.unregister(NAME)


def test_a_transfer_cut_every_time_fails_cleanly_and_a_later_call_completes(registered, server, cache, demo_files):
    """Every attempt cut short: a clear error, no truncated file anywhere; the next call, server fixed, works.

    Catches: a truncated file left under its name (or in the staging folder, reused later), an error
    that does not say what happened.
    """
    server.truncate["best_model.pt"] = 100
    with pytest.raises(ModelNotAvailableError, match="transfer cut short"):
        scgpt.hub.download(NAME, progress=False)
    folder = cache / "models" / NAME
    assert server.requests["best_model.pt"] == 1 + scgpt.hub._download.RETRIES
    assert sorted(p.name for p in folder.iterdir()) == []
    server.truncate.clear()
    scgpt.hub.download(NAME, progress=False)
    assert (folder / "best_model.pt").read_bytes() == demo_files["best_model.pt"]


def test_two_processes_downloading_at_once_make_one_verified_copy(registered, server, cache, demo_hashes, demo_files):
    """Two processes ask for the model at the same moment: one downloads, the other waits; both succeed.

    The server holds ``best_model.pt`` back until a second client asks for ``args.json`` (or 5 s pass), so
    without a lock both processes download (each file requested twice) and race on the rename.
    Catches: no lock, a lock that is not shared between processes, the waiting process failing or
    downloading again after the first one finished.
    """
    server.hold = ("best_model.pt", "args.json", 5.0)
    env = {**os.environ, "SCGPT_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(WORKER), NAME, server.url, json.dumps(demo_hashes)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    folder = cache / "models" / NAME
    assert [o[0].strip() for o in outs] == [str(folder)] * 2
    assert dict(server.requests) == dict.fromkeys(FILES, 1)
    assert sum("waiting for another process" in o[1] for o in outs) == 1
    assert {f: (folder / f).read_bytes() == demo_files[f] for f in FILES} == dict.fromkeys(FILES, True)


@pytest.mark.parametrize("variable", ["SCGPT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_gives_one_clear_error_naming_the_urls_and_the_folder(registered, server, cache, monkeypatch, variable):
    """Offline: no request at all, and one error that says which files, from where, and into which folder.

    Catches: ignoring the switch (a request reaches the server), ignoring ``HF_HUB_OFFLINE``, an error
    that leaves the user guessing where the files go.
    """
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ModelNotAvailableError) as info:
        ScGPT.from_pretrained(NAME)
    message = str(info.value)
    folder = cache / "models" / NAME
    assert f"downloads are off ({variable}=1)" in message and f"into {folder}/" in message
    assert all(f"{server.url}/{f}" in message for f in FILES)
    assert "\n" not in message and sum(server.requests.values()) == 0
    from scgpt.cli import main

    assert main(["download", NAME, "-q"]) == 2


def test_a_model_without_a_direct_source_says_where_to_download_it_by_hand(cache):
    """A model zoo entry that is only a Google Drive folder: the error names the folder and where to put it.

    Catches: pretending to download a Drive folder link (an HTML page) as the model files.
    """
    with pytest.raises(ModelNotAvailableError, match="no direct download source") as info:
        scgpt.hub.download("scGPT_brain")
    assert "https://drive.google.com/drive/folders/1vf1ijfQSk7rGdDGpBntR5bi5g6gNt-Gx" in str(info.value)
    assert str(cache / "models" / "scGPT_brain") in str(info.value)


def test_files_placed_by_hand_are_recorded_on_first_use(cache, demo_files, demo_hashes, log_lines):
    """A model with no published hashes, put into the cache by hand: recorded (and said so), then enforced.

    Catches: trust on first use that does not write the record, that re-trusts whatever is there on the
    next call, or that does not tell the user the hash was not checked against anything.
    """
    folder = scgpt.hub.model_dir("scGPT_heart")
    folder.mkdir(parents=True)
    for f, data in demo_files.items():
        (folder / f).write_bytes(data)
    assert scgpt.hub.download("scGPT_heart") == folder
    meta = json.loads((folder / ".scgpt-hub.json").read_text())
    assert {f: meta["files"][f]["sha256"] for f in FILES} == {f: demo_hashes[f][0] for f in FILES}
    assert {meta["files"][f]["verified"] for f in FILES} == {"trust on first use"}
    assert meta["files"]["best_model.pt"]["source"] == "placed by hand"
    first_use = [line for line in log_lines if "trust on first use" in line]
    assert len(first_use) == 3 and demo_hashes["best_model.pt"][0] in "".join(first_use)
    assert ScGPT.from_pretrained("heart", device="cpu").source_ == "scGPT_heart"  # an alias
    assert scgpt.hub.list_models().loc["scGPT_heart", "sha256"] == "recorded on first use"

    damaged = bytearray(demo_files["vocab.json"])
    damaged[100] ^= 1
    (folder / "vocab.json").write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError, match="vocab.json is not the published file: .* the recorded one is"):
        scgpt.hub.download("scGPT_heart")


def test_trust_on_first_use_over_http_records_the_hash_and_holds_later_copies_to_it(server, cache, demo_hashes):
    """No published hash: the first download records it; a later download of other bytes is refused.

    Catches: an implementation that records the hash on each download (and so accepts a changed file).
    """
    scgpt.hub.register(NAME, files=dict.fromkeys(FILES), urls=server.url + "/{file}", overwrite=True)
    try:
        folder = scgpt.hub.download(NAME, progress=False)
        meta = json.loads((folder / ".scgpt-hub.json").read_text())
        assert meta["files"]["best_model.pt"]["sha256"] == demo_hashes["best_model.pt"][0]
        assert meta["files"]["best_model.pt"]["verified"] == "trust on first use"
        server.corrupt.add("best_model.pt")
        with pytest.raises(IntegrityError, match="but the recorded one is"):
            scgpt.hub.download(NAME, force=True, progress=False)
    finally:
        scgpt.hub.unregister(NAME)


def test_a_typo_gets_the_close_names(cache, monkeypatch, tmp_path, capsys):
    """A misspelt name: the closest registered names in the error, in Python and on the command line.

    Catches: a bare "no such folder" (or a download attempt of a name that does not exist).
    """
    with pytest.raises(ValueError, match=r"No published model named 'scGPT_humna'; did you mean 'scGPT_human'\?"):
        scgpt.hub.download("scGPT_humna")
    with pytest.raises(FileNotFoundError, match=r"did you mean 'scGPT_human'\?"):
        ScGPT.from_pretrained("scGPT_humna")
    with pytest.raises(FileNotFoundError, match=r"did you mean 'scGPT_lung'\?"):
        scgpt.tl.embed(scgpt.datasets.pbmc68k_counts()[:5].copy(), "lugn")
    from scgpt.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["embed", "--model", "scGPT_humna", "--input", "pbmc68k", "--output", "o.h5ad", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no such folder: scGPT_humna; did you mean 'scGPT_human'?" in err and len(err.strip().splitlines()) == 1


def test_a_local_folder_of_the_same_name_wins(registered, server, cache, tiny_model, tmp_path, monkeypatch):
    """``./hubtest_model`` exists: it is loaded, and nothing is downloaded.

    Catches: a registry lookup that shadows the user's own folder.
    """
    tiny_model(d_model=16, n_heads=2, d_hid=16, n_layers=1).save_pretrained(tmp_path / NAME)
    monkeypatch.chdir(tmp_path)
    assert ScGPT.from_pretrained(NAME).config.d_model == 16
    assert scgpt.model.resolve_model(NAME)[0].config.d_model == 16
    assert sum(server.requests.values()) == 0


def test_the_default_model_setting_accepts_a_name(registered, server, cache, pbmc, monkeypatch):
    """``scgpt.settings.default_model = NAME`` (or ``SCGPT_MODEL``) resolves like ``model=NAME``.

    Catches: a setting that turns the name into an absolute path of the working directory.
    """
    monkeypatch.setattr(scgpt.settings, "_default_model", None)
    monkeypatch.setenv("SCGPT_MODEL", NAME)
    cells = pbmc[:10].copy()
    scgpt.tl.embed(cells, device="cpu")
    assert cells.uns["X_scGPT"]["params"]["model"] == NAME and cells.obsm["X_scGPT"].shape == (10, 128)
    scgpt.settings.default_model = NAME
    assert scgpt.settings.default_model == NAME


def test_settings_repr_names_no_user(monkeypatch, tmp_path):
    """The printed settings write the home folder as ``~``.

    Catches a notebook output or a shared log carrying the user's home path (``/home/alice/.cache/scgpt``).
    """
    from pathlib import Path

    monkeypatch.setattr(scgpt.settings, "_cache_dir", None)
    monkeypatch.setenv("SCGPT_CACHE", str(Path.home() / ".cache" / "scgpt-test"))
    assert "cache_dir='~/.cache/scgpt-test'" in repr(scgpt.settings)
    monkeypatch.setenv("SCGPT_CACHE", str(tmp_path))
    assert f"cache_dir='{tmp_path}'" in repr(scgpt.settings)
