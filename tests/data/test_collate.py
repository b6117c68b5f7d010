from __future__ import annotations

import numpy as np
import pytest
import torch

from scgpt.data import AnnDataSource, CellLoader, Collator, GeneVocab
from scgpt.data._random import gene_keys


@pytest.fixture(scope="module")
def setup(pbmc_counts):
    vocab = GeneVocab([*pbmc_counts.var_names, "<pad>", "<cls>", "<eoc>"])
    source = AnnDataSource(pbmc_counts, np.arange(765), len(vocab))
    present = np.full(len(vocab), -1)
    present[:765] = np.arange(765)

    def collator(**kw):
        base = dict(
            token_ids=present, gene_key=gene_keys(vocab.itos), cls_id=vocab.cls_id, pad_id=vocab.pad_id, max_length=64
        )
        return Collator(**{**base, **kw})

    return vocab, source, collator


def _row(batch, i):
    n = int((~batch.padding_mask[i]).sum())
    return batch.genes[i, :n], batch.values[i, :n], batch.predict_mask[i, :n]


def test_masks_depend_only_on_the_cell(setup):
    vocab, source, collator = setup
    c = collator(masking="masked", mask_ratio=0.4)
    a = c(source.rows(np.arange(10)), epoch=3)
    b = c(source.rows(np.array([7, 2, 500, 5])), epoch=3)
    for i_a, i_b in ((7, 0), (2, 1), (5, 3)):
        for x, y in zip(_row(a, i_a), _row(b, i_b)):
            assert torch.equal(x, y)
    genes, values, hidden = _row(a, 0)
    n_genes = len(genes) - 1
    assert int(hidden.sum()) == int(n_genes * 0.4) and not hidden[0]  # <cls> is never hidden
    assert torch.all(values[hidden] == -1) and torch.all(a.target[0, : len(genes)][hidden] >= 1)
    other_epoch = c(source.rows(np.arange(10)), epoch=4)
    assert not torch.equal(a.predict_mask, other_epoch.predict_mask)


def test_generative_batches_keep_values_and_flag_positions(setup):
    _, source, collator = setup
    c = collator(masking="generative", mask_ratio=(0.25, 0.5, 0.75))
    batch = c(source.rows(np.arange(8)), epoch=0, batch_index=2)
    assert batch.gen_mask is not None and torch.equal(batch.gen_mask, batch.predict_mask)
    assert torch.equal(batch.values, batch.target)  # values of generated genes are simply not read
    ratio = c.ratio_for(0, 2)
    assert ratio in (0.25, 0.5, 0.75)
    n = (~batch.padding_mask).sum(1) - 1
    assert torch.equal(batch.gen_mask.sum(1), (n * ratio).long())


def test_include_zero_genes_and_cls_value(setup):
    _, source, collator = setup
    c = collator(masking="none", include_zero_genes=True, max_length=2000, cls_value=0.0)
    batch = c(source.rows(np.arange(3)))
    assert batch.genes.shape == (3, 766) and torch.all(batch.values[:, 0] == 0)
    assert (batch.values[:, 1:] == 0).float().mean() > 0.5  # most of the 765 genes are unexpressed


def test_loader_slices_global_batches_and_resumes(setup):
    _, source, collator = setup
    c = collator(masking="masked")
    idx = np.arange(100)
    single = [b.cells.tolist() for b in CellLoader(source, idx, c, batch_size=8, seed=1)]
    ranks = [
        [b.cells.tolist() for b in CellLoader(source, idx, c, batch_size=4, seed=1, rank=r, world_size=2)]
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 12  # 100 // 8 global batches, last incomplete one dropped
    for step in range(12):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(single[step])
    loader = CellLoader(source, idx, c, batch_size=8, seed=1)
    it = iter(loader)
    for _ in range(3):
        loader.mark_consumed(next(it))
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches_done": 3}
    resumed = CellLoader(source, idx, c, batch_size=8, seed=1)
    resumed.load_state_dict(state)
    assert [b.cells.tolist() for b in resumed] == single[3:]
    assert resumed.epoch == 1  # a finished pass moves to the next epoch, with a new order
    assert [b.cells.tolist() for b in resumed][0] != single[0]


def test_per_batch_minibatches_hold_one_group_each(setup):
    """The official integration recipe: every global batch holds cells of one experimental batch."""
    _, source, collator = setup
    c = collator(masking="masked")
    idx = np.arange(100)
    groups = np.where(np.arange(source.n_obs) % 3 == 0, 0, 1)  # a third of the cells in group 0
    obs = {"batch_labels": groups}
    loader = CellLoader(source, idx, c, batch_size=8, seed=1, obs=obs, group_by="batch_labels")
    batches = [b.cells.tolist() for b in loader]
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(100))  # every cell once (drop_last off: 1 process)
    assert len(batches) == len(loader) == 5 + 9  # ceil(34 / 8) + ceil(66 / 8)
    ranks = [
        [
            b.cells.tolist()
            for b in CellLoader(
                source, idx, c, batch_size=4, seed=1, rank=r, world_size=2, obs=obs, group_by="batch_labels"
            )
        ]
        for r in (0, 1)
    ]
    joined = [sorted(a + b) for a, b in zip(*ranks)]
    whole = [sorted(b.cells.tolist()) for b in CellLoader(source, idx, c, batch_size=8, seed=1, obs=obs, group_by="batch_labels",
                                           drop_last=True)]  # fmt: skip
    assert joined == whole  # the same global batches whatever the number of processes
    with pytest.raises(ValueError, match="group_by='batch' needs obs"):
        CellLoader(source, idx, c, batch_size=8, obs=obs, group_by="batch")
