"""Gradient checkpointing per transformer layer, and the attention projections as modules."""

from __future__ import annotations

import torch

import scgpt.nn._transformer as transformer_module
from scgpt.nn import ScGPTConfig, ScGPTNet, SelfAttention


def tiny(**kw) -> ScGPTConfig:
    base = dict(n_tokens=50, pad_token_id=47, d_model=16, n_heads=4, d_hid=32, n_layers=3, dropout=0.2)
    return ScGPTConfig(**{**base, **kw})


def _batch():
    g = torch.Generator().manual_seed(1)
    genes = torch.randint(0, 45, (4, 9), generator=g)
    genes[1, 6:] = 47  # padding: the attention mask goes through the checkpointed call too
    values = torch.randint(1, 20, (4, 9), generator=g).float()
    return genes, values


def _loss_and_grads(net: ScGPTNet, checkpointing: bool):
    net.gradient_checkpointing = checkpointing
    net.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout masks in both runs
    out = net(*_batch())
    loss = out["mlm_output"].pow(2).mean() + out["mvc_output"].mean() + out["cls_output"].logsumexp(1).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_checkpointing_gives_the_same_loss_and_gradients():
    """Catches a recomputation that draws other dropout masks (RNG state not replayed), drops the attention mask
    or ``n_queries`` argument in the checkpointed call, or detaches a layer's input (gradients of the layers
    below would vanish): loss and every gradient must equal those without checkpointing (1e-5)."""
    torch.manual_seed(0)
    net = ScGPTNet(tiny(n_cls=3)).train()
    loss_off, grads_off = _loss_and_grads(net, False)
    loss_on, grads_on = _loss_and_grads(net, True)
    torch.testing.assert_close(loss_on, loss_off, atol=1e-5, rtol=1e-5)
    assert grads_on.keys() == grads_off.keys() and any(k.startswith("encoder.") for k in grads_on)
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=1e-5, rtol=1e-5, msg=name)
    assert float(loss_off) != 0.0 and max(float(g.abs().max()) for g in grads_off.values()) > 1e-3


def test_checkpointing_recomputes_in_training_only(monkeypatch):
    """Catches checkpointing that also runs in evaluation or under ``no_grad`` (a wasted second forward at
    inference) or that is ignored in training (the flag set, no memory saved): checkpoint calls are counted."""
    calls = []
    real = transformer_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformer_module, "checkpoint", counting)
    torch.manual_seed(0)
    net = ScGPTNet(tiny())
    net.gradient_checkpointing = True
    genes, values = _batch()
    with torch.no_grad():
        net.train()(genes, values)
    net.eval()(genes, values)
    net.cell_embedding(genes, values)
    assert calls == []
    net.train()(genes, values)["mlm_output"].sum().backward()
    assert calls == [False] * 3  # one non-reentrant checkpoint per layer


def test_checkpointing_keeps_only_the_layer_inputs():
    """Catches checkpointing that saves the layers' activations anyway: the tensors kept for the backward pass
    of the transformer must shrink to about the layers' inputs (counted with saved-tensor hooks)."""
    torch.manual_seed(0)
    net = ScGPTNet(tiny(d_model=32, d_hid=64, n_layers=4, dropout=0.0)).train()
    x = torch.randn(2, 40, 32, requires_grad=True)

    def saved_bytes(checkpointing: bool) -> int:
        net.gradient_checkpointing = checkpointing
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.transformer_encoder(x).sum()
        return total

    full, ckpt = saved_bytes(False), saved_bytes(True)
    layer_inputs = 4 * x.numel() * x.element_size()
    assert ckpt <= 2 * layer_inputs < full / 4, (full, ckpt, layer_inputs)


def test_projections_are_modules_called_as_modules():
    """Catches a projection applied functionally (``F.linear`` on its weight, or slices of it in the ``<cls>``
    shortcut): an adapter library wraps the module, and a module never called would leave its adapter untrained
    (helical's scGPT LoRA bug, their issue #405). Forward hooks count the calls on every path."""
    torch.manual_seed(0)
    net = ScGPTNet(tiny()).eval()
    attn = net.transformer_encoder.layers[-1].self_attn
    assert isinstance(attn, SelfAttention)
    assert type(attn.in_proj) is torch.nn.Linear and type(attn.out_proj) is torch.nn.Linear
    calls = []
    for name in ("in_proj", "out_proj"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    genes, values = _batch()
    net.cell_embedding(genes, values)  # the last layer computes <cls> only
    assert calls == ["in_proj", "out_proj"]
    net.encode(genes, values)
    assert calls == ["in_proj", "out_proj"] * 2


def test_state_dict_keys_are_the_packed_official_names():
    """Catches a state dict that exposes the module names (``in_proj.weight``): official and native checkpoints
    would no longer load or save bit for bit. Keys, order and values round-trip; the weight is the module's."""
    torch.manual_seed(0)
    net = ScGPTNet(tiny())
    state = net.state_dict()
    keys = [k for k in state if ".self_attn." in k][:4]
    assert keys == [
        "transformer_encoder.layers.0.self_attn.in_proj_weight",
        "transformer_encoder.layers.0.self_attn.in_proj_bias",
        "transformer_encoder.layers.0.self_attn.out_proj.weight",
        "transformer_encoder.layers.0.self_attn.out_proj.bias",
    ]
    assert not any("in_proj." in k for k in state)
    assert "transformer_encoder.layers.0.self_attn.in_proj" not in state._metadata
    attn = net.transformer_encoder.layers[0].self_attn
    assert attn.in_proj_weight is attn.in_proj.weight
    torch.manual_seed(1)
    other = ScGPTNet(tiny())
    other.load_state_dict(state)  # strict: every packed key lands in the module
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k]), k
