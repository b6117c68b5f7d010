"""The pure-PyTorch network: attention against a reference, heads, masks, config checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scgpt.nn import ScGPTConfig, ScGPTNet, SelfAttention, TransformerLayer, grad_reverse, padding_to_attn_mask


def tiny(**kw) -> ScGPTConfig:
    base = dict(n_tokens=50, pad_token_id=47, d_model=16, n_heads=4, d_hid=32, n_layers=2, dropout=0.0)
    return ScGPTConfig(**{**base, **kw})


def test_sdpa_matches_explicit_softmax_reference():
    torch.manual_seed(0)
    attn = SelfAttention(16, 4).eval()
    x = torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    mask = padding_to_attn_mask(pad)
    torch.testing.assert_close(attn(x, mask), attn.reference_forward(x, mask), atol=1e-6, rtol=1e-5)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = SelfAttention(16, 4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())  # same parameter names and layout
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    want = ref(x, x, x, key_padding_mask=pad, need_weights=False)[0]
    torch.testing.assert_close(ours(x, padding_to_attn_mask(pad)), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_layer_with_query_subset_matches_full_layer(pre_norm):
    torch.manual_seed(0)
    layer = TransformerLayer(16, 4, 32, 0.0, pre_norm).eval()
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(layer(x, None, 1), layer(x)[:, :1], atol=1e-6, rtol=1e-5)


def test_post_norm_layer_matches_torch_encoder_layer():
    torch.manual_seed(0)
    ours = TransformerLayer(16, 4, 32, 0.0).eval()
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, 0.0, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_a_cell():
    torch.manual_seed(0)
    net = ScGPTNet(tiny()).eval()
    genes = torch.tensor([[1, 2, 3, 4]])
    values = torch.tensor([[-2.0, 3.0, 1.0, 5.0]])
    padded_genes = torch.tensor([[1, 2, 3, 4, 47, 47]])
    padded_values = torch.tensor([[-2.0, 3.0, 1.0, 5.0, -2.0, -2.0]])
    with torch.no_grad():
        a = net.encode(genes, values).cell_emb
        b = net.encode(padded_genes, padded_values).cell_emb
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("style", ["avg-pool", "w-pool"])
def test_pooling_ignores_padding(style):
    torch.manual_seed(0)
    net = ScGPTNet(tiny(cell_emb_style=style)).eval()
    with torch.no_grad():
        a = net.encode(torch.tensor([[1, 2, 3]]), torch.tensor([[1.0, 3.0, 2.0]])).cell_emb
        b = net.encode(torch.tensor([[1, 2, 3, 47]]), torch.tensor([[1.0, 3.0, 2.0, -2.0]])).cell_emb
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    if style == "w-pool":
        assert torch.allclose(a.norm(dim=1), torch.ones(1))


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    grad_reverse(x * 2, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -1.0))


def test_dsbn_routes_each_cell_to_its_batch_in_training():
    torch.manual_seed(0)
    net = ScGPTNet(tiny(n_batch_labels=2, batch_norm="dsbn", use_batch_labels=True)).train()
    genes = torch.randint(0, 40, (6, 5))
    values = torch.rand(6, 5)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    net(genes, values, batch_labels=labels)
    assert int(net.dsbn.bns[0].num_batches_tracked) == 1 and int(net.dsbn.bns[1].num_batches_tracked) == 1


def test_clear_errors_for_missing_conditions():
    net = ScGPTNet(tiny(n_batch_labels=2, use_batch_labels=True))
    g, v = torch.tensor([[1, 2]]), torch.tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match="pass `batch_labels`"):
        net(g, v)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        net(g, v, batch_labels=torch.tensor([5]))
    with pytest.raises(ValueError, match="do not pass `batch_labels`"):
        ScGPTNet(tiny())(g, v, batch_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="pass `pert_flags`"):
        ScGPTNet(tiny(n_pert_flags=3, expr_decoder="affine"))(g, v)
    with pytest.raises(ValueError, match="pass `mod_types`"):
        ScGPTNet(tiny(n_modalities=3, mod_pad_id=2))(g, v)


def test_config_validation_lists_every_problem():
    with pytest.raises(ValueError, match=r"multiple of n_heads.*input_emb_style"):
        tiny(d_model=15, input_emb_style="nope")
    with pytest.raises(ValueError, match="need n_batch_labels"):
        tiny(dab=True)
    assert ScGPTConfig.from_dict(tiny().to_dict()) == tiny()


@pytest.mark.parametrize(
    "kw",
    [
        {"input_emb_style": "category", "n_input_bins": 53, "pad_value": 51},
        {"input_emb_style": "scaling"},
        {"mvc_style": "concat query"},
        {"mvc_style": "sum query"},
        {"mvc_style": "inner product, detach", "explicit_zero_prob": True},
        {"batch_norm": "batchnorm"},
        {"pre_norm": True},
    ],
)
def test_variants_run_and_backpropagate(kw):
    torch.manual_seed(0)
    net = ScGPTNet(tiny(**kw)).train()
    genes = torch.randint(0, 40, (3, 6))
    values = torch.randint(1, 50, (3, 6)).float()
    out = net(genes, values)
    loss = sum(v.float().mean() for v in out.values())
    loss.backward()
    assert out["mlm_output"].shape == (3, 6) and out["mvc_output"].shape == (3, 6)
    assert torch.isfinite(loss)
    for name, p in net.transformer_encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_nn_does_not_import_anndata():
    code = "import sys, scgpt.nn; assert 'anndata' not in sys.modules and 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_average_batch_slot_for_unseen_batches():
    torch.manual_seed(0)
    net = ScGPTNet(tiny(n_batch_labels=3, use_batch_labels=True, batch_norm="dsbn", dab=True)).eval()
    for i, bn in enumerate(net.dsbn.bns):  # distinct statistics per batch
        bn.running_mean.fill_(float(i))
        bn.running_var.fill_(1.0 + i)
    wide = net.with_average_batch()
    assert wide.config.n_batch_labels == 4
    torch.testing.assert_close(wide.dsbn.bns[3].running_mean, torch.full((16,), 1.0))
    torch.testing.assert_close(wide.dsbn.bns[3].running_var, torch.full((16,), 2.0))
    emb = net.batch_encoder.embedding.weight
    torch.testing.assert_close(wide.batch_encoder.embedding.weight[3], emb.mean(0))
    genes, values = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[-2.0, 3.0, 1.0, 5.0]])
    with torch.no_grad():  # known batches are unchanged
        for b in range(3):
            label = torch.tensor([b])
            torch.testing.assert_close(
                wide.cell_embedding(genes, values, batch_labels=label),
                net.cell_embedding(genes, values, batch_labels=label),
            )
