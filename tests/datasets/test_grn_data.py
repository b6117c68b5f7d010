"""The shipped prior knowledge: CollecTRI TF -> target edges, MSigDB Hallmark gene sets, the GMT reader."""

from __future__ import annotations

import gzip
import re

import pandas as pd
import pytest

from scgpt.datasets._grn import collectri, hallmark, read_gmt, transcription_factors

N_EDGES, N_TFS, N_TARGETS, N_REPRESSING = 40_836, 1_176, 6_420, 5_677
KNOWN_EDGES = {  # (TF, target) -> sign, checked in the OmniPath rows the file is built from
    ("STAT1", "IRF1"): 1.0,
    ("STAT1", "CXCL10"): 1.0,
    ("NFKB1", "NFKBIA"): 1.0,
    ("TP53", "CDKN1A"): 1.0,  # TP53 is a UniProt accession (P04637) in the dump, mapped back to its symbol
    ("TP53", "MDM2"): 1.0,
    ("IRF3", "IFNB1"): 1.0,  # flagged both stimulation and inhibition: +1
    ("SNAI1", "CDH1"): -1.0,
    ("ZEB1", "CDH1"): -1.0,
    ("REST", "STMN2"): -1.0,
}
UNIPROT = re.compile(r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})$")


@pytest.fixture(scope="module")
def net():
    return collectri()


# ------------------------------------------------------------------------------------------------ CollecTRI


def test_collectri_counts_and_columns(net):
    assert list(net.columns) == ["source", "target", "weight"]
    assert net["weight"].dtype == float and set(net["weight"]) == {1.0, -1.0}
    assert len(net) == N_EDGES
    assert net["source"].nunique() == N_TFS and net["target"].nunique() == N_TARGETS
    assert int((net["weight"] == -1).sum()) == N_REPRESSING
    assert isinstance(net.index, pd.RangeIndex) and net.index[-1] == N_EDGES - 1


def test_collectri_known_edges_and_signs(net):
    weights = net.set_index(["source", "target"])["weight"]
    assert {edge: weights[edge] for edge in KNOWN_EDGES} == KNOWN_EDGES


def test_collectri_clean_sorted_unique(net):
    assert not net.duplicated(["source", "target"]).any()
    assert not (net["source"] == net["target"]).any()  # the one self-loop (DDIT3) was dropped
    assert net.equals(net.sort_values(["source", "target"]).reset_index(drop=True))
    assert net[["source", "target"]].notna().all().all() and (net[["source", "target"]] != "").all().all()
    sources = set(net["source"])
    assert not {s for s in sources if s.startswith("COMPLEX") or "_" in s}  # complexes dropped
    assert not {"AP1", "NFKB"} & sources  # nor merged into decoupler's pseudo-TFs
    names = set(net["source"]) | set(net["target"])
    # no UniProt accession is left; these symbols only look like one
    assert {n for n in names if UNIPROT.match(n)} == {
        "B3GAT1",
        "B3GAT3",
        "B3GNT9",
        "H2AC15",
        "H2AC18",
        "H2BC11",
        "P2RY10",
    }
    assert ("STAT1", "BHLHE40") not in set(zip(net["source"], net["target"]))  # a DoRothEA-only row, not CollecTRI


def test_collectri_new_object_each_call(net):
    other = collectri()
    assert other is not net and other.equals(net)
    other.loc[0, "weight"] = 99.0
    assert collectri().loc[0, "weight"] != 99.0


def test_collectri_tfs_filter():
    sub = collectri(tfs=["STAT1", "NFKB1"])
    assert set(sub["source"]) == {"STAT1", "NFKB1"}
    assert len(sub) == 252 + 432
    assert sub["source"].is_monotonic_increasing and isinstance(sub.index, pd.RangeIndex)
    assert collectri(tfs="STAT1").equals(collectri(tfs=["STAT1"]))  # a single name is not split into letters
    assert collectri(tfs=[]).empty


def test_collectri_unknown_tfs_are_named():
    with pytest.raises(ValueError, match=r"not transcription factors of CollecTRI: CDH1, NOT_A_GENE$"):
        collectri(tfs=["STAT1", "NOT_A_GENE", "CDH1"])
    with pytest.raises(ValueError, match=r"and 2 more$"):
        collectri(tfs=[f"FAKE{i:02d}" for i in range(12)])


def test_transcription_factors(net):
    tfs = transcription_factors()
    assert len(tfs) == N_TFS and tfs == sorted(set(net["source"]))
    assert tfs[:3] == ["ABL1", "ADNP", "ADNP2"] and tfs[-1] == "ZXDC"
    assert {"STAT1", "NFKB1", "RELA", "TP53", "MYC", "SNAI1", "IRF3"} <= set(tfs)
    assert "CDH1" not in tfs


# ------------------------------------------------------------------------------------------------- Hallmark


def test_hallmark_sets():
    sets = hallmark()
    assert len(sets) == 50 and all(name.startswith("HALLMARK_") for name in sets)
    assert next(iter(sets)) == "HALLMARK_TNFA_SIGNALING_VIA_NFKB"
    ifng = sets["HALLMARK_INTERFERON_GAMMA_RESPONSE"]
    assert len(ifng) == 200 and ifng[:3] == ["STAT1", "ISG15", "IFIT1"]
    assert {"IRF1", "CXCL10"} <= set(ifng)
    assert min(map(len, sets.values())) == 32 and sum(map(len, sets.values())) == 7321
    assert all(len(genes) == len(set(genes)) for genes in sets.values())
    sets["HALLMARK_HYPOXIA"].clear()
    assert len(hallmark()["HALLMARK_HYPOXIA"]) == 200  # a new object on each call


# ------------------------------------------------------------------------------------------------- read_gmt


def test_read_gmt_round_trip(tmp_path):
    sets = {"SET_A": ["STAT1", "IRF1", "GBP1"], "SET_B": ["CD3E"]}
    path = tmp_path / "sets.gmt"
    path.write_text("".join(f"{name}\thttp://example.org/{name}\t" + "\t".join(g) + "\n" for name, g in sets.items()))
    assert read_gmt(path) == sets
    assert read_gmt(str(path)) == sets
    gz = tmp_path / "sets.gmt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_gmt(gz) == sets


def test_read_gmt_blank_lines_duplicates_trailing_tabs(tmp_path):
    path = tmp_path / "messy.gmt"
    path.write_text("\nSET_A\tdesc\tB\tA\tB\t\r\n   \nSET_B\t\tC\t\n\n")
    assert read_gmt(path) == {"SET_A": ["B", "A"], "SET_B": ["C"]}


def test_read_gmt_matches_shipped_hallmark(tmp_path):
    sets = hallmark()
    path = tmp_path / "h.gmt"
    path.write_text("".join(f"{n}\tna\t" + "\t".join(g) + "\n" for n, g in sets.items()))
    assert read_gmt(path) == sets


def test_read_gmt_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GMT file at"):
        read_gmt(tmp_path / "missing.gmt")
    bad = tmp_path / "bad.gmt"
    bad.write_text("SET_A\tdesc\tSTAT1\n\nSET_B\tdesc\n")
    with pytest.raises(ValueError, match=r"bad\.gmt, line 3: expected at least 3 tab-separated fields .* got 2"):
        read_gmt(bad)
    bad.write_text("SET_A desc STAT1 IRF1\n")  # spaces, not tabs
    with pytest.raises(ValueError, match=r"line 1: .* got 1"):
        read_gmt(bad)
    bad.write_text("SET_A\tdesc\tSTAT1\nSET_A\tdesc\tIRF1\n")
    with pytest.raises(ValueError, match=r"line 2: gene set 'SET_A' already defined"):
        read_gmt(bad)
