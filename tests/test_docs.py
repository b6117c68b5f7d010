"""Shared parameter text (scgpt._docs): filled into every docstring that asks for it, typos caught."""

from __future__ import annotations

import inspect
import re

import pytest

import scgpt
from scgpt._docs import DOCS, doc_params, evaluation_key_doc


def test_placeholders_are_filled_and_typos_raise():
    @doc_params()
    def f(adata, *, seed=0):
        """Do it.

        Parameters
        ----------
        adata
            Data.
        {seed}
        """

    assert "seed\n    Seed of the binning tie-break" in f.__doc__ and "{seed}" not in f.__doc__

    with pytest.raises(ValueError, match=r"unknown docstring placeholders \['sede'\]"):

        @doc_params()
        def g(seed=0):
            """Do it.

            Parameters
            ----------
            {sede}
            """


PUBLIC = [
    scgpt.tl.embed,
    scgpt.tl.annotate,
    scgpt.tl.evaluate_annotation,
    scgpt.tl.benchmark_integration,
    scgpt.tl.perturbation_de_genes,
    scgpt.pl.confusion,
    scgpt.pl.benchmark_integration,
    scgpt.tl.gene_programs,
    scgpt.tl.infer_grn,
    scgpt.tl.evaluate_grn,
    scgpt.tl.enrich_programs,
    scgpt.pl.attention,
    scgpt.pl.grn,
    scgpt.pl.gene_programs,
    scgpt.pl.gene_embedding,
    scgpt.pl.perturbation,
    scgpt.pl.perturbation_metrics,
    scgpt.tl.perturbation_baseline,
    scgpt.tl.evaluate_perturbation,
    scgpt.tl.predict_perturbation,
    scgpt.tl.build_reference,
    scgpt.pp.align_vocab,
    scgpt.pp.bin_values,
    scgpt.pp.preprocess,
    scgpt.model.ScGPT.get_latent_representation,
    scgpt.model.ScGPT.predict_proba,
]


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__qualname__)
def test_every_parameter_is_documented_once(fn):
    doc = inspect.getdoc(fn)
    assert not re.findall(r"^\{\w+\}$", doc, flags=re.MULTILINE)
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "kwargs", "finetune_kwargs")]
    section = doc.split("Parameters\n----------\n")[1].split("\nReturns\n")[0]
    documented = re.findall(r"^(\*{0,2}\w[\w, ]*)$", section, flags=re.MULTILINE)  # numpy style: **kwargs
    names = [n.strip().lstrip("*") for line in documented for n in line.split(",")]
    for p in params:
        assert names.count(p) == 1, f"{fn.__qualname__}: {p!r} documented {names.count(p)} times"


def test_shared_texts_are_the_same_everywhere():
    assert DOCS["device"] in inspect.getdoc(scgpt.tl.embed)
    assert DOCS["device"] in inspect.getdoc(scgpt.model.ScGPT.get_latent_representation)


def test_evaluators_share_their_parameter_texts():
    """Shared parameters of the evaluators and their plots come from scgpt._docs: catches a copy that drifts (one
    evaluator documenting key_added as writing by default, labels_key or perturbation_key described apart)."""
    evaluators = [scgpt.tl.evaluate_annotation, scgpt.tl.evaluate_perturbation, scgpt.tl.evaluate_grn]
    evaluators += [scgpt.tl.enrich_programs, scgpt.tl.benchmark_integration]
    for fn in evaluators:
        assert DOCS["eval_key_added"] in inspect.getdoc(fn), fn.__qualname__
    for fn in (scgpt.tl.evaluate_annotation, scgpt.tl.benchmark_integration):
        assert DOCS["labels_key"] in inspect.getdoc(fn), fn.__qualname__
    for fn in (scgpt.tl.evaluate_perturbation, scgpt.tl.perturbation_de_genes, scgpt.pl.perturbation):
        assert DOCS["perturbation_key"] in inspect.getdoc(fn), fn.__qualname__
    for fn, name in [
        (scgpt.pl.confusion, "evaluate_annotation"),
        (scgpt.pl.benchmark_integration, "benchmark_integration"),
        (scgpt.pl.perturbation_metrics, "evaluate_perturbation"),
    ]:
        assert evaluation_key_doc(name) in inspect.getdoc(fn), fn.__qualname__
