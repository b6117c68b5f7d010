"""Tools: embeddings, annotation, integration and other scGPT tasks on AnnData / MuData."""

from ._annotate import annotate, evaluate_annotation
from ._benchmark import benchmark_integration
from ._embed import embed
from ._evaluate_perturbation import evaluate_perturbation, perturbation_de_genes
from ._grn import gene_programs, infer_grn, program_scores
from ._grn_eval import enrich_programs, evaluate_grn
from ._integrate import integrate
from ._perturbation_baselines import perturbation_baseline
from ._predict_perturbation import predict_perturbation
from ._reference import EXACT_MAX_CELLS, ReferenceIndex, build_reference, reference_dir

__all__ = [
    "EXACT_MAX_CELLS",
    "ReferenceIndex",
    "annotate",
    "benchmark_integration",
    "build_reference",
    "embed",
    "enrich_programs",
    "evaluate_annotation",
    "evaluate_grn",
    "evaluate_perturbation",
    "gene_programs",
    "infer_grn",
    "integrate",
    "perturbation_baseline",
    "perturbation_de_genes",
    "predict_perturbation",
    "program_scores",
    "reference_dir",
]
