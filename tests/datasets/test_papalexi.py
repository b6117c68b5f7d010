"""The bundled Papalexi 2021 CRISPR screen: real counts, guide calls and targets as documented."""

from __future__ import annotations

import numpy as np

import scgpt


def test_papalexi_screen():
    screen = scgpt.datasets.papalexi2021()
    assert screen.shape == (11433, 299)
    labels = screen.obs["perturbation"]
    assert "unassigned" not in set(labels) and (labels == "control").sum() == 1323
    targets = sorted(set(labels) - {"control"})
    assert len(targets) == 25 and (labels == "IFNGR1").sum() == 756 and (labels == "SPI1").sum() == 20
    in_panel = [t for t in targets if t in screen.var_names]
    assert in_panel == ["CMTM6", "IFNGR2", "JAK2", "NFKBIA", "STAT1", "STAT2", "STAT3", "TNFRSF14", "UBE2L6"]
    data = screen.X.data
    assert np.all(data == np.round(data)) and data.min() > 0  # raw UMI counts
    full = scgpt.datasets.papalexi2021(drop_unassigned=False)
    assert full.n_obs == 15429 and (full.obs["perturbation"] == "unassigned").sum() == 3996
