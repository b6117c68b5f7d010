"""Vendor the golden fixtures of the official scGPT code into ``tests/fixtures/``, small.

The golden folder (``$SCGPT_SHARED/golden``, default ``../shared/golden`` beside the repository) holds
official-format checkpoints and the outputs that the official ``scgpt==0.2.4`` code computed from them.
This script copies what the tests need into the repository:

* the task folders and ``.npz`` files byte for byte;
* ``official_base`` and ``official_base_flash`` trimmed to the vocabulary tokens the tests use (their
  60,697-row census embedding table is 7.8 MB of each 7.9 MB ``best_model.pt``, beside a 1.2 MB
  ``vocab.json``); the tokens keep their original order and get ids ``0 … n-1``, every other tensor is
  unchanged, and ``base_model_io.npz`` gets its ``gene_ids`` remapped to the new ids;
* ``manifest.json``: a digest of the full census token list (for the released-vocabulary test) and the
  sha256 of every vendored file and of the file it came from;
* ``../onek1k_ensembl_ids.txt``: the 1,000 Ensembl gene ids of ``$SCGPT_SHARED/data/onek1k_pbmc_30donors.h5ad``.

Everything written is checked: verbatim copies by sha256, trimmed checkpoints by running them against
the full ones and against the official outputs, and ``scgpt.tl.embed`` with the trimmed folders against
the official ``embed_data`` output. It also checks that ``scgpt.datasets.pbmc68k_counts()`` equals the
golden ``pbmc68k_counts.h5ad`` exactly, so the tests can use the package's dataset instead of a copy.
Any failed check raises. Output is deterministic (``torch.save`` and ``numpy.savez_compressed`` write
fixed zip timestamps; re-saving an original checkpoint is checked to reproduce it byte for byte).

Usage
-----
``python scripts/vendor_golden.py [--out DIR]`` (``DIR`` defaults to ``tests/fixtures``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import scgpt
from scgpt.data import GeneVocab
from scgpt.datasets import pbmc68k_counts
from scgpt.io import load_official, read_official
from scgpt.io._official import read_state_dict

try:  # the gene matcher may move from scgpt.pp to scgpt.data
    from scgpt.data._genes import match_genes
except ImportError:
    from scgpt.pp._genes import match_genes

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCGPT_SHARED", REPO.parent / "shared"))
SOURCE = SHARED / "golden"
ONEK1K = SHARED / "data" / "onek1k_pbmc_30donors.h5ad"
PAD_TOKEN, CLS_TOKEN, EOC_TOKEN = "<pad>", "<cls>", "<eoc>"  # the official special tokens

TASK_FOLDERS = ("official_annotation", "official_integration", "official_perturbation", "official_multiomic")
VERBATIM_FILES = (
    "annotation_io.npz",
    "integration_io.npz",
    "perturbation_io.npz",
    "multiomic_io.npz",
    "binning_cases.npz",
    "embed_data_output.npz",
    "VERSIONS.json",
)
FOLDER_FILES = ("args.json", "vocab.json", "best_model.pt")
TRIMMED = {"official_base": "base_seed0", "official_base_flash": "flash_seed0"}  # folder -> embed_data reference
EMBEDDING_KEY = "encoder.embedding.weight"  # the same name in the PyTorch and the flash-attn layout
BASE_IO = "base_model_io.npz"
INPUT_KEYS = ("gene_ids", "values", "padding_mask")
MODEL_OUTPUT_KEYS = ("encoder_output", "mlm_output", "mvc_output", "cell_emb")
SELF_TOL = 1e-6  # trimmed vs full model
ATOL, RTOL = 1e-5, 1e-4  # vs the official outputs (as in the tests)
EMBED_COS_MEAN, EMBED_COS_MIN, N_MATCHED_EXACT = 0.9998, 0.995, 705
EMBED_KW = dict(max_length=1200, batch_size=64, device="cpu", copy=True)


# ---------------------------------------------------------------------------- small helpers
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(f"vendor_golden: check failed: {message}")


def copy_verbatim(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())  # not shutil.copy: the sources are read-only, the copies should not be
    check(sha256(dst) == sha256(src), f"{dst} is not a byte-identical copy of {src}")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def quiet_load_official(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trimmed folder must load as cleanly as the original
        net, ckpt, report = load_official(path)
    check(report.clean, f"{path} did not load cleanly: {report.message(str(path))}")
    return net, ckpt


# ---------------------------------------------------------------------------- the pbmc68k data
def check_pbmc_dataset(golden_h5ad: Path):
    """``scgpt.datasets.pbmc68k_counts()`` must equal the golden h5ad exactly; returns the dataset."""
    import anndata as ad
    import scipy.sparse as sp

    ours, ref = pbmc68k_counts(), ad.read_h5ad(golden_h5ad)
    check(ours.obs_names.equals(ref.obs_names), "pbmc68k_counts(): obs_names differ from the golden h5ad")
    check(ours.var_names.equals(ref.var_names), "pbmc68k_counts(): var_names differ from the golden h5ad")
    a = ours.X.toarray() if sp.issparse(ours.X) else np.asarray(ours.X)
    b = ref.X.toarray() if sp.issparse(ref.X) else np.asarray(ref.X)
    check(a.dtype == b.dtype == np.float32, f"pbmc68k_counts(): X dtype {a.dtype}, golden {b.dtype}")
    check(a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)), "pbmc68k_counts(): X differs")
    labels, want = ours.obs["bulk_labels"], ref.obs["bulk_labels"]
    check(labels.astype(str).tolist() == want.astype(str).tolist(), "pbmc68k_counts(): obs['bulk_labels'] differ")
    check(list(labels.cat.categories) == list(want.cat.categories), "pbmc68k_counts(): bulk_labels categories differ")
    print(f"pbmc68k_counts() == golden pbmc68k_counts.h5ad: {ours.n_obs} x {ours.n_vars}, X bit-identical")
    return ours


# ---------------------------------------------------------------------------- trimming the census vocabulary
def kept_token_ids(vocab: GeneVocab, base_io: dict[str, np.ndarray], gene_names) -> tuple[np.ndarray, dict]:
    """Original ids of the tokens the tests need, ascending: base_model_io genes, pbmc68k matches, specials."""
    io_ids = np.unique(base_io["gene_ids"])
    exact = match_genes(gene_names, vocab, use_aliases=False)
    alias = match_genes(gene_names, vocab, use_aliases=True)
    specials = np.array([vocab[t] for t in (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)])
    kept = np.unique(np.concatenate([io_ids, exact.ids[exact.matched], alias.ids[alias.matched], specials]))
    why = {
        "base_model_io_gene_ids": len(io_ids),
        "pbmc68k_matched_exact": int(exact.matched.sum()),
        "pbmc68k_matched_with_aliases": int(alias.matched.sum()),
        "special_tokens": [PAD_TOKEN, CLS_TOKEN, EOC_TOKEN],
    }
    return kept.astype(np.int64), why


def trimmed_vocab_json(src: Path, vocab: GeneVocab, kept: np.ndarray) -> str:
    """The original vocab.json restricted to ``kept`` (original key order, new ids), in the original JSON style."""
    text = src.read_text()
    original = json.loads(text)
    check(json.dumps(original) == text, f"{src} is not in json.dumps' default style; cannot reproduce its style")
    new_id = dict(zip(vocab.lookup_tokens(kept), range(len(kept))))
    return json.dumps({tok: new_id[tok] for tok in original if tok in new_id})


def trimmed_state_dict(src: Path, kept: np.ndarray) -> dict[str, torch.Tensor]:
    """The raw official state dict (same keys, order, dtypes), gene-embedding rows restricted to ``kept``."""
    state = read_state_dict(src)
    check(EMBEDDING_KEY in state, f"{src} has no {EMBEDDING_KEY!r}")
    rows = torch.from_numpy(kept)
    return {k: (v.index_select(0, rows).contiguous() if k == EMBEDDING_KEY else v) for k, v in state.items()}


def remap_gene_ids(base_io: dict[str, np.ndarray], n_full: int, kept: np.ndarray) -> dict[str, np.ndarray]:
    lut = np.full(n_full, -1, dtype=np.int64)
    lut[kept] = np.arange(len(kept))
    gene_ids = lut[base_io["gene_ids"]].astype(base_io["gene_ids"].dtype)
    check(bool((gene_ids >= 0).all()), "base_model_io gene_ids contain a token that was not kept")
    return {k: (gene_ids if k == "gene_ids" else v) for k, v in base_io.items()}


def write_trimmed_folder(src: Path, dst: Path, vocab: GeneVocab, kept: np.ndarray) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    copy_verbatim(src / "args.json", dst / "args.json")
    (dst / "vocab.json").write_text(trimmed_vocab_json(src / "vocab.json", vocab, kept))
    torch.save(trimmed_state_dict(src / "best_model.pt", kept), dst / "best_model.pt")


def check_trimmed_files(src: Path, dst: Path, vocab: GeneVocab, kept: np.ndarray) -> None:
    """Re-read what was written: vocabulary, raw state dict and inferred config."""
    small = GeneVocab.from_file(dst / "vocab.json")
    check(small.itos == vocab.lookup_tokens(kept), f"{dst}/vocab.json: tokens or their order differ")
    orig, new = read_state_dict(src / "best_model.pt"), read_state_dict(dst / "best_model.pt")
    check(list(orig) == list(new), f"{dst}/best_model.pt: keys or key order differ from the original")
    for key, value in orig.items():
        want = value[torch.from_numpy(kept)] if key == EMBEDDING_KEY else value
        check(new[key].dtype == want.dtype and torch.equal(new[key], want), f"{dst}/best_model.pt: {key} differs")
    full_cfg, small_cfg = read_official(src).config, read_official(dst).config
    want_cfg = replace(full_cfg, n_tokens=len(kept), pad_token_id=small.pad_id)
    check(small_cfg == want_cfg, f"{dst}: inferred config {small_cfg} != {want_cfg}")


def check_torch_save_fidelity(src: Path) -> None:
    """torch.save of the loaded original must give the original bytes (so our files are in the same format)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "best_model.pt"  # the archive's inner folder is named after the file
        torch.save(read_state_dict(src), out)
        check(out.read_bytes() == src.read_bytes(), f"torch.save does not reproduce {src} byte for byte")


# ---------------------------------------------------------------------------- verifying the trimmed models
def run_base_model(net, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(*(torch.from_numpy(io[k]) for k in INPUT_KEYS))
    return {k: v.numpy() for k, v in out.items()}


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def check_trimmed_model(full_dir: Path, small_dir: Path, io: dict, small_io: dict) -> dict[str, float]:
    """Trimmed model on remapped inputs vs full model on the original inputs, and vs the official outputs."""
    full, _ = quiet_load_official(full_dir)
    small, _ = quiet_load_official(small_dir)
    want, got = run_base_model(full, io), run_base_model(small, small_io)
    valid = ~io["padding_mask"]
    diffs = {}
    for key in MODEL_OUTPUT_KEYS:
        a, b = (got[key][valid], want[key][valid]) if key == "encoder_output" else (got[key], want[key])
        diffs[f"vs_full/{key}"] = d = max_diff(a, b)
        check(d <= SELF_TOL, f"{small_dir.name}: {key} differs from the full model by {d:.3g} > {SELF_TOL}")
    got["cls_embedding"] = got["encoder_output"][:, 0]
    for key in ("encoder_output", "cls_embedding", "mlm_output", "mvc_output", "cell_emb"):
        a, b = got[key], io[key]
        if b.shape[:2] == valid.shape:
            a, b = a[valid], b[valid]  # padded positions are zero in the official encoder output
        diffs[f"vs_official/{key}"] = max_diff(a, b)
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL, err_msg=f"{small_dir.name}: {key} vs official")
    return diffs


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def embed(adata, folder: Path, use_aliases: bool) -> tuple[np.ndarray, int, list[str]]:
    """Embedding, number of matched genes, and the warnings raised (folder path masked)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = scgpt.tl.embed(adata, folder, use_aliases=use_aliases, **EMBED_KW)
    messages = sorted(str(w.message).replace(str(folder), "<folder>") for w in caught)
    return out.obsm["X_scGPT"], int(out.uns["X_scGPT"]["n_genes_matched"]), messages


def check_trimmed_embed(full_dir: Path, small_dir: Path, pbmc, reference: np.ndarray) -> dict:
    """``scgpt.tl.embed`` with the trimmed folder: official agreement, and the same genes as the full folder."""
    result = {}
    for use_aliases in (False, True):
        tag = "aliases" if use_aliases else "exact"
        emb, n_small, warned = embed(pbmc, small_dir, use_aliases)
        emb_full, n_full, warned_full = embed(pbmc, full_dir, use_aliases)
        check(n_small == n_full, f"{small_dir.name} ({tag}): {n_small} genes matched, the full folder {n_full}")
        check(warned == warned_full, f"{small_dir.name} ({tag}): warnings {warned} != full folder's {warned_full}")
        cos = cosine(emb, reference)
        result[tag] = {
            "n_genes_matched": n_small,
            "n_genes_matched_full": n_full,
            "max_abs_diff_vs_full_folder": max_diff(emb, emb_full),
            "cos_official_mean": float(cos.mean()),  # the official run matched exact names only
            "cos_official_min": float(cos.min()),
            "warnings": warned,
        }
        if not use_aliases:  # the official embed_data matched exact names only
            check(n_small == N_MATCHED_EXACT, f"{small_dir.name}: {n_small} genes matched, expected {N_MATCHED_EXACT}")
            check(
                cos.mean() >= EMBED_COS_MEAN and cos.min() >= EMBED_COS_MIN,
                f"{small_dir.name}: cosine to the official embedding mean {cos.mean():.6f} min {cos.min():.6f}",
            )
    return result


# ---------------------------------------------------------------------------- other fixtures
def write_onek1k_ids(src: Path, dst: Path) -> int:
    import anndata as ad

    adata = ad.read_h5ad(src, backed="r")
    ids = [str(x) for x in adata.var_names]
    adata.file.close()
    check(len(ids) == len(set(ids)) and all(x.startswith("ENSG") for x in ids), f"{src}: unexpected var_names")
    dst.write_text("\n".join(ids) + "\n")
    check(dst.read_text().split() == ids, f"{dst} does not round-trip")
    return len(ids)


def census_digest(vocab: GeneVocab) -> dict:
    return {
        "census_vocab_sha256": hashlib.sha256("\n".join(vocab.itos).encode()).hexdigest(),
        "census_vocab_n_tokens": len(vocab),
        "census_vocab_special_ids": {t: vocab[t] for t in (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)},
        "census_vocab_digest_of": '"\\n".join(tokens in id order), UTF-8, of the full official_base/vocab.json',
    }


def file_entries(out: Path, sources: dict[str, tuple[Path, str]]) -> dict:
    """sha256 of each vendored file (path relative to ``out``) and of the file it came from."""
    entries = {}
    for rel in sorted(sources):
        src, how = sources[rel]
        entries[rel] = {"sha256": sha256(out / rel), "bytes": (out / rel).stat().st_size, "how": how}
        entries[rel]["source"] = str(src.relative_to(SHARED))
        entries[rel]["source_sha256"] = sha256(src)
        if how == "verbatim":
            check(entries[rel]["sha256"] == entries[rel]["source_sha256"], f"{rel} is not verbatim")
    return entries


# ---------------------------------------------------------------------------- main
def main(out: Path) -> None:
    check(SOURCE.is_dir(), f"no golden folder at {SOURCE} (set SCGPT_SHARED)")
    scgpt.settings.progress = False
    logging.getLogger("scgpt").setLevel(logging.WARNING)
    golden = out / "golden"
    golden.mkdir(parents=True, exist_ok=True)
    sources: dict[str, tuple[Path, str]] = {}

    for folder in TASK_FOLDERS:
        for name in FOLDER_FILES:
            copy_verbatim(SOURCE / folder / name, golden / folder / name)
            sources[f"golden/{folder}/{name}"] = (SOURCE / folder / name, "verbatim")
    for name in VERBATIM_FILES:
        copy_verbatim(SOURCE / name, golden / name)
        sources[f"golden/{name}"] = (SOURCE / name, "verbatim")

    pbmc = check_pbmc_dataset(SOURCE / "pbmc68k_counts.h5ad")
    vocab = GeneVocab.from_file(SOURCE / "official_base" / "vocab.json")
    check(vocab == GeneVocab.from_file(SOURCE / "official_base_flash" / "vocab.json"), "base vocabularies differ")
    base_io = load_npz(SOURCE / BASE_IO)
    kept, why = kept_token_ids(vocab, base_io, pbmc.var_names)
    small_io = remap_gene_ids(base_io, len(vocab), kept)
    np.savez_compressed(golden / BASE_IO, **small_io)
    check(list(load_npz(golden / BASE_IO)) == list(base_io), f"{BASE_IO}: array order changed")
    for key, value in load_npz(golden / BASE_IO).items():
        check(value.dtype == small_io[key].dtype and np.array_equal(value, small_io[key]), f"{BASE_IO}: {key}")
    sources[f"golden/{BASE_IO}"] = (SOURCE / BASE_IO, "gene_ids remapped to the trimmed vocabulary")
    print(f"kept {len(kept)} of {len(vocab)} census tokens: {why}")

    report = {}
    embed_ref = np.load(SOURCE / "embed_data_output.npz", allow_pickle=True)
    check(bool((embed_ref["obs_names"] == pbmc.obs_names).all()), "embed_data_output obs_names != pbmc68k obs_names")
    for folder, ref_key in TRIMMED.items():
        check_torch_save_fidelity(SOURCE / folder / "best_model.pt")
        write_trimmed_folder(SOURCE / folder, golden / folder, vocab, kept)
        check_trimmed_files(SOURCE / folder, golden / folder, vocab, kept)
        sources[f"golden/{folder}/args.json"] = (SOURCE / folder / "args.json", "verbatim")
        for name in ("vocab.json", "best_model.pt"):
            sources[f"golden/{folder}/{name}"] = (SOURCE / folder / name, "trimmed to the kept tokens")
        report[folder] = check_trimmed_model(SOURCE / folder, golden / folder, base_io, small_io)
        report[folder]["embed"] = check_trimmed_embed(SOURCE / folder, golden / folder, pbmc, embed_ref[ref_key])

    n_ids = write_onek1k_ids(ONEK1K, out / "onek1k_ensembl_ids.txt")
    sources["onek1k_ensembl_ids.txt"] = (ONEK1K, f"var_names ({n_ids} Ensembl ids), one per line")

    manifest = {
        "generator": "scripts/vendor_golden.py",
        "paths": "files: relative to tests/fixtures/; source: relative to $SCGPT_SHARED (default ../shared)",
        **census_digest(vocab),
        "pbmc68k_counts_h5ad_sha256": sha256(SOURCE / "pbmc68k_counts.h5ad"),
        "pbmc68k_counts_h5ad_note": "not vendored: equals scgpt.datasets.pbmc68k_counts() exactly (checked)",
        "files": file_entries(out, sources),
        "trimmed_vocab": {
            "folders": list(TRIMMED),
            "n_tokens": len(kept),
            "kept_because": why,
            "original_ids": kept.tolist(),
        },
    }
    (golden / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"all checks passed; {out} holds {total / 1e6:.2f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures", help="where to write")
    main(parser.parse_args().out.resolve())
