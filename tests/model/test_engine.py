"""The inference engine: every accumulator gives what the network computes cell by cell, whatever the batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scgpt.data._collate import CellBatch
from scgpt.model import CellRows, GenePairs, GeneValues, run_inference


@pytest.fixture(scope="module")
def cells(pbmc_counts):
    return pbmc_counts[:40].copy()


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model(n_layers=2, dropout=0.0)


def test_cell_rows_equal_the_network_on_each_cell_alone(model, cells, one_cell_batch):
    out = run_inference(model, cells, CellRows(normalize=False), max_length=64, batch_size=7, device="cpu")
    assert out.output.shape == (40, 32) and out.output.dtype == np.float32
    for i in (0, 13, 39):
        b = one_cell_batch(model, cells, i, max_length=64, seed=0)
        with torch.no_grad():
            want = model.net.encode(b.genes, b.values).cell_emb[0].numpy()
        np.testing.assert_allclose(out.output[i], want, atol=1e-5)
    assert (out.n_tokens <= 64).all() and out.n_tokens.min() > 1 and out.match.report()["n_matched"] == 765


def test_class_probabilities_through_a_head(model, cells):
    head = CellRows(lambda net, emb: torch.softmax(net.cls_decoder(emb), -1), width=3, normalize=False)
    clf = model.adapt(n_cls=3)
    probs = run_inference(clf, cells, head, max_length=64, device="cpu").output
    assert probs.shape == (40, 3)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


def test_gene_values_scatter_each_token_to_its_gene(model, cells, one_cell_batch):
    """Per-gene outputs land in the gene's column: equal to the expression decoder run on each cell alone."""
    res = run_inference(model, cells, GeneValues(), max_length=64, batch_size=5, device="cpu")
    out = res.output
    assert out.shape == (40, 765) and out.dtype == np.float32
    assert (~np.isnan(out)).sum(1).tolist() == (res.n_tokens - 1).tolist()  # one value per token, <cls> left out
    b = one_cell_batch(model, cells, 3, max_length=64, seed=0)
    with torch.no_grad():
        pred = model.net.expression(model.net.encode(b.genes, b.values))[0][0, 1:].numpy()
    cols = cells.var_names.get_indexer(model.vocab.lookup_tokens(b.genes[0, 1:].numpy()))
    np.testing.assert_allclose(out[3, cols], pred, atol=1e-5)


def test_gene_values_with_zero_genes_are_complete_and_grouped_means_match(model, cells):
    kw = {"max_length": 1000, "include_zero_genes": True, "device": "cpu"}
    per_cell = run_inference(model, cells, GeneValues(), **kw).output
    assert not np.isnan(per_cell).any()  # every gene of every cell is a token
    groups = np.arange(40) % 3 - (np.arange(40) == 0)  # three groups; cell 0 left out (-1)
    grouped = run_inference(model, cells, GeneValues(groups=groups), batch_size=4, **kw).output
    assert grouped.shape == (3, 765)
    for g in range(3):
        np.testing.assert_allclose(grouped[g], per_cell[groups == g].mean(0), rtol=1e-5, atol=1e-5)


def _brute_force_attention(model, batch, layer):
    """softmax(QK^T / sqrt(d)) of every head of ``layer`` for one unpadded cell, from the raw weights."""
    net = model.net
    with torch.no_grad():
        x, _, _, _ = net._transformer_input(batch.genes, batch.values, None, None, None, None)
        for lyr in net.transformer_encoder.layers[:layer]:
            x = lyr(x)
        attn = net.transformer_encoder.layers[layer].self_attn
        d, h = attn.d_model, attn.n_heads
        q = x @ attn.in_proj_weight[:d].T + attn.in_proj_bias[:d]
        k = x @ attn.in_proj_weight[d : 2 * d].T + attn.in_proj_bias[d : 2 * d]
        L = x.shape[1]
        q = q.view(1, L, h, d // h).transpose(1, 2)
        k = k.view(1, L, h, d // h).transpose(1, 2)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), -1)[0]  # (h, L, L)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("head", [0, 3])
def test_gene_pairs_equal_brute_force_attention_per_layer_and_head(model, cells, layer, head, one_cell_batch):
    i = 5
    one = cells[i : i + 1]
    pairs = run_inference(
        model, one, GenePairs(layers=[layer], heads=[head], query_chunk=7), max_length=64, device="cpu"
    ).output
    b = one_cell_batch(model, cells, i, max_length=64, seed=0)
    want = _brute_force_attention(model, b, layer)[head].numpy()
    cols = cells.var_names.get_indexer(model.vocab.lookup_tokens(b.genes[0, 1:].numpy()))
    got = pairs["sums"][0][np.ix_(cols, cols)]
    np.testing.assert_allclose(got, want[1:, 1:], atol=1e-6)  # <cls> row and column left out
    assert pairs["counts"][0][np.ix_(cols, cols)].min() == 1 and pairs["counts"][0].sum() == len(cols) ** 2


def test_gene_pairs_do_not_depend_on_the_other_cells_or_the_batching(model, cells):
    groups = np.where(np.arange(40) < 20, 0, 1)
    kw = {"max_length": 64, "device": "cpu"}
    a = run_inference(model, cells, GenePairs(groups=groups, query_chunk=None), batch_size=40, **kw).output
    b = run_inference(model, cells, GenePairs(groups=groups, query_chunk=5), batch_size=3, **kw).output
    np.testing.assert_allclose(a["sums"], b["sums"], atol=1e-5)
    np.testing.assert_array_equal(a["counts"], b["counts"])
    assert a["n_cells"].tolist() == [20, 20]
    first = run_inference(model, cells[:20], GenePairs(query_chunk=11), batch_size=6, **kw).output
    np.testing.assert_allclose(first["sums"][0], a["sums"][0], atol=1e-5)  # group 0 alone, other cells absent


def test_gene_pairs_clear_errors(model, cells):
    with pytest.raises(IndexError, match="Layer indices \\[2\\] are out of range for a model with 2 layers"):
        run_inference(model, cells[:2], GenePairs(layers=[2]), max_length=16, device="cpu")
    with pytest.raises(IndexError, match="Head indices \\[4\\]"):
        run_inference(model, cells[:2], GenePairs(heads=[4]), max_length=16, device="cpu")


@pytest.mark.golden
def test_conditions_travel_with_the_batch(golden_dir):
    """Modality ids and batch labels in a CellBatch reach the network (multi-omic golden model)."""
    from scgpt.io import load_official

    net, _, _ = load_official(golden_dir / "official_multiomic")
    z = np.load(golden_dir / "multiomic_io.npz")
    genes = torch.from_numpy(z["gene_ids"])
    batch = CellBatch(
        genes=genes,
        values=torch.from_numpy(z["values"]),
        target=torch.from_numpy(z["values"]),
        padding_mask=genes.eq(net.config.pad_token_id),
        predict_mask=torch.zeros_like(genes, dtype=torch.bool),
        batch_labels=torch.from_numpy(z["batch_labels"]),
        mod_types=torch.from_numpy(z["mod_types"]),
    )
    with torch.no_grad():
        emb = net.encode(batch.genes, batch.values, **batch.inputs(net.config.batch_conditioned)).cell_emb
    np.testing.assert_allclose(emb.numpy(), z["cell_emb"], atol=1e-5, rtol=1e-4)
