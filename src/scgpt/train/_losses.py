"""Training losses (official ``scgpt/loss.py`` and the model's ECS/CCE terms).

Masked losses are averaged over the hidden positions of the *global* minibatch when training runs
in several processes, so that DDP training equals single-process training on the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_count(mask: Tensor) -> Tensor:
    """Number of positions in ``mask``, summed over processes, divided by the number of processes."""
    n = mask.sum().to(torch.float32)
    if _distributed():
        n = n.detach().clone()
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the ``True`` positions of ``mask``."""
    m = mask.to(pred.dtype)
    return (((pred.float() - target.float()) * m) ** 2).sum() / _global_count(mask)


def masked_nll_bernoulli(prob: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood of ``target > 0`` under ``Bernoulli(prob)``, over the mask.

    As the official ``criterion_neg_log_bernoulli``: no clamp of its own; torch's ``Bernoulli`` keeps the
    log-probabilities finite (it clamps ``prob`` to ``[eps, 1 - eps]`` of float32).
    """
    logp = torch.distributions.Bernoulli(probs=prob.float()).log_prob((target > 0).float())
    return -(logp * mask.float()).sum() / _global_count(mask)


def elastic_cell_similarity(cell_emb: Tensor, threshold: float) -> Tensor:
    """ECS: push cosine similarities of different cells below ``threshold``."""
    x = F.normalize(cell_emb.float(), p=2, dim=1)
    cos = x @ x.t()
    cos = cos.masked_fill(torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device), 0.0)
    return torch.mean(1 - (F.relu(cos) - threshold) ** 2)


def _gather_with_grad(x: Tensor) -> Tensor:
    if not _distributed():
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x  # keep this process's gradient path
    return torch.cat(parts)


def contrastive_cell_embedding(cell1: Tensor, cell2: Tensor, temperature: float = 0.5) -> Tensor:
    """CCE: two dropout views of each cell should be each other's nearest neighbour (InfoNCE)."""
    a, b = _gather_with_grad(cell1.float()), _gather_with_grad(cell2.float())
    sim = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1) / temperature
    return F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def pearson_delta(pred: Tensor, control_mean: Tensor, observed_mean: Tensor, mask: Tensor) -> Tensor:
    """Pearson correlation of the predicted and observed mean change against control (Pearson-delta).

    ``pred`` ``(B, L)``: the predictions for ``B`` control cells that all carry the same perturbation and
    the same tokens; their mean over cells minus ``control_mean`` ``(L,)`` is correlated with
    ``observed_mean - control_mean`` over the tokens of ``mask`` ``(L,)``. 0 when either change is constant.
    """
    keep = mask.bool()
    ctrl = control_mean.float()[keep]
    p = pred.float().mean(0)[keep] - ctrl
    o = observed_mean.float()[keep] - ctrl
    p, o = p - p.mean(), o - o.mean()
    denom = p.norm() * o.norm()
    if not bool(denom > 0):
        return torch.zeros((), device=pred.device)
    return (p * o).sum() / denom
