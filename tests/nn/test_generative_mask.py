"""The scGPT generative attention mask: known genes attend to each other; a gene to predict sees the
known genes and itself only."""

from __future__ import annotations

import torch

from scgpt.nn import ScGPTConfig, ScGPTNet, generative_attn_mask


def brute_force(gen: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    B, L = gen.shape
    allowed = torch.zeros(B, 1, L, L, dtype=torch.bool)
    for b in range(B):
        for q in range(L):
            for k in range(L):
                if pad[b, k]:
                    continue  # nobody looks at padding
                if not gen[b, k]:
                    allowed[b, 0, q, k] = True  # known genes are visible to every query
                elif gen[b, q] and q == k:
                    allowed[b, 0, q, k] = True  # a gene to predict sees itself
    return allowed


def test_mask_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        B, L = 3, int(torch.randint(2, 12, (1,), generator=g))
        gen = torch.rand(B, L, generator=g) < 0.4
        pad = torch.zeros(B, L, dtype=torch.bool)
        for b in range(B):
            n_pad = int(torch.randint(0, L - 1, (1,), generator=g))
            if n_pad:
                pad[b, -n_pad:] = True
        gen[:, 0] = False  # <cls> is always known
        gen &= ~pad
        assert torch.equal(generative_attn_mask(gen, pad), brute_force(gen, pad))


def test_generated_genes_do_not_see_each_other():
    """Changing the gene identity of one gene to predict changes no other position's output."""
    torch.manual_seed(0)
    cfg = ScGPTConfig(
        n_tokens=40, pad_token_id=39, d_model=16, n_heads=2, d_hid=32, n_layers=3, dropout=0.0, generative=True
    )
    net = ScGPTNet(cfg).eval()
    genes = torch.tensor([[38, 1, 2, 3, 4, 5, 6, 39]])
    values = torch.tensor([[-2.0, 3.0, 7.0, 0.0, 0.0, 0.0, 1.0, -2.0]])
    gen = torch.tensor([[False, False, False, True, True, True, False, False]])
    with torch.no_grad():
        base = net.encode(genes, values, gen_mask=gen).hidden
        other = genes.clone()
        other[0, 4] = 20  # another gene at a generated position
        changed = net.encode(other, values, gen_mask=gen).hidden
        known_changed = values.clone()
        known_changed[0, 2] = 30.0  # a known value
        changed_known = net.encode(genes, known_changed, gen_mask=gen).hidden
    diff = (changed - base).abs().amax(-1)[0]
    assert diff[4] > 1e-3  # the changed position itself
    real = ~genes.eq(39)[0]
    assert torch.all(diff[real & (torch.arange(8) != 4)] < 1e-6)  # nobody else sees it
    assert torch.all((changed_known - base).abs().amax(-1)[0][real] > 1e-4)  # a known gene is seen by all
    # the values at generated positions are never read
    noisy = values.clone()
    noisy[gen] = 99.0
    with torch.no_grad():
        assert torch.allclose(net.encode(genes, noisy, gen_mask=gen).hidden, base, atol=1e-6)
