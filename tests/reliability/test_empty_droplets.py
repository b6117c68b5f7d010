"""Empty droplets (cells without counts) never crash the process: the gene selection leaves them out.

scanpy's seurat_v3 fits a loess curve per batch, and the loess library aborts the whole Python process
(segfault, exit status 139, or abort, 134) on a batch without varying genes: a Jupyter kernel just dies. The
crash cases run in a subprocess so that a regression fails this test instead of killing the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import scgpt

SCRIPT = """
import numpy as np, scipy.sparse as sp, anndata as ad, scgpt
scgpt.settings.progress = False
a = scgpt.datasets.pbmc68k_counts()[:160]
X = sp.vstack([a.X, sp.csr_matrix((12, a.n_vars), dtype=a.X.dtype)]).tocsr()
b = ad.AnnData(X, var=a.var.copy())
b.obs_names = [f"c{{i}}" for i in range(b.n_obs)]
b.obs["batch"] = ["x"] * 80 + ["y"] * 80 + ["empty"] * 12
{call}
print("OK")
"""


@pytest.mark.parametrize(
    "call",
    [
        "scgpt.tl.integrate(b, 'demo', batch_key='batch', n_top_genes=80, max_steps=1, batch_size=16)\n"
        "assert b.obsm['X_scGPT_integrated'].shape == (172, 128)",
        "scgpt.tl.infer_grn(b, 'demo', method='attention', n_top_genes=40, top_k=5, batch_size=64)\n"
        "assert len(b.uns['scgpt_grn']['edges']) > 0",
    ],
    ids=["integrate", "infer_grn-attention"],
)
def test_a_batch_of_empty_droplets_does_not_kill_the_process(call, tmp_path):
    """``integrate`` / ``infer_grn`` on data with a batch of all-zero cells finish with results.

    Catches the old fallback that caught only ``ValueError`` around seurat_v3, whose loess then segfaulted
    (exit status 139) on the empty batch and took the kernel with it.
    """
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(call=call)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip().endswith("OK")


def test_highly_variable_genes_refuses_a_batch_it_cannot_fit_with_a_clear_error():
    """``pp.highly_variable_genes`` (seurat_v3) names the batches that cannot be fitted instead of crashing.

    Catches passing a batch of empty droplets on to scanpy's loess (a process abort, not an exception).
    """
    a = scgpt.datasets.pbmc68k_counts()[:100].copy()
    a.obs["batch"] = np.where(np.arange(100) < 90, "full", "empty")
    a.X = sp.csr_matrix(sp.diags((np.arange(100) < 90).astype(np.float32)) @ a.X)
    a.X.eliminate_zeros()
    with pytest.raises(ValueError, match=r"batches \['empty'\] of 'batch' have fewer than 50 genes that vary"):
        scgpt.pp.highly_variable_genes(a, n_top_genes=50, batch_key="batch")


def test_the_gene_selection_leaves_empty_cells_out_and_keeps_the_ranking_of_the_others():
    """Adding empty droplets does not change which genes are selected.

    Catches selecting genes on a matrix that still holds the empty cells (they shift every gene's mean and
    variance) or silently falling back to another ranking.
    """
    from scgpt.tl._hvg import variable_genes

    a = scgpt.datasets.pbmc68k_counts()[:200]
    batches = np.array(["x"] * 100 + ["y"] * 100)
    with_empty = sp.vstack([a.X, sp.csr_matrix((10, a.n_vars), dtype=a.X.dtype)]).tocsr()
    chosen = variable_genes(a.X, 100, batches)
    again = variable_genes(with_empty, 100, np.concatenate([batches, ["z"] * 10]))
    np.testing.assert_array_equal(chosen, again)
