"""Parameter text shared by several functions, filled into docstrings by :func:`doc_params` (scanpy's pattern).

Write ``{name}`` on a line of its own in the ``Parameters`` section, indented like the other parameters;
:func:`doc_params` replaces it with the text below (a parameter name and its indented description).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

doc_model = """\
model
    Path to an official scGPT folder (e.g. ``scGPT_human``), a folder written by
    :meth:`scgpt.model.ScGPT.save`, ``"demo"`` (the small demo model bundled with the package), an
    :class:`~scgpt.model.ScGPT`, or ``None`` for ``scgpt.settings.default_model`` (``SCGPT_MODEL``).
    An existing folder named ``demo`` wins over the keyword."""

doc_gene_key = """\
gene_key
    ``var`` column with gene names (symbols or Ensembl ids); ``None`` uses ``var_names``."""

doc_use_aliases = """\
use_aliases
    Also match genes by Ensembl id, previous HGNC symbol or alias (see :func:`scgpt.pp.align_vocab`).
    ``False`` matches names exactly, as the official code does (same genes, same numbers)."""

doc_layer = """\
layer
    Layer with raw counts; ``None`` uses ``adata.X``."""

doc_batch_key = """\
batch_key
    ``obs`` column with batches, only for models conditioned on batches (e.g. fine-tuned for integration)."""

doc_max_length = """\
max_length
    Tokens per cell including ``<cls>`` (official default 1200). Cells expressing more genes keep a
    seeded random subset."""

doc_batch_size = """\
batch_size
    Cells per forward pass, an upper bound (on CPU fewer are used when cells are long); results do not
    depend on it."""

doc_seed = """\
seed
    Seed of the binning tie-break and of gene sampling above ``max_length``."""

doc_device = """\
device
    ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"``; ``None`` picks the best available (``scgpt.settings.device``
    first)."""

doc_dtype = """\
dtype
    ``None``/``"float32"`` reproduces the official numbers; ``"bfloat16"`` is faster (per-cell cosine to
    float32 ≥ 0.999); ``"float16"`` on GPU."""

doc_progress = """\
progress
    Show a progress bar (default: ``scgpt.settings.progress``)."""

doc_organism = """\
organism
    Species of the genes: ``"human"`` (default), or ``"mouse"``, ``"macaque"``, ``"pig"``, ... (see
    :func:`scgpt.pp.align_vocab`), whose genes (symbols, or mouse Ensembl ids) are read as their human
    orthologs through the bundled tables.
orthologs
    ``"one2one"`` (default): one-to-one orthologs only; ``"all"``: also one-to-many orthologs (counts go to
    one human gene) and many-to-one orthologs (the counts of the genes with one human ortholog summed)."""

doc_copy = """\
copy
    Return a modified copy instead of writing to the input."""

doc_plot = """\
ax
    Axes to draw into.
show
    Show the plot (default: when the backend is interactive).
return_fig
    Return the figure."""

doc_plot_returns = """The figure with ``return_fig=True``; ``None`` if shown; else the axes."""

doc_distributed = """\
devices
    Run on several processes with Lightning (``None``, the default: this process alone). A number of
    devices per node (GPUs, or CPU processes when ``device="cpu"``), ``-1`` for all GPUs, or a list of GPU
    ids. Each process embeds its share of the cells (backed files: reads only its share); the embeddings
    are gathered in cell order on every process and equal the single-process ones up to float rounding.
    Under ``torchrun``/``srun`` pass the number of processes per node the launcher started; in a script
    run with plain ``python``, Lightning starts the other processes by running the script again.
num_nodes
    Machines, for multi-node runs (``srun``, ``torchrun --nnodes``).
strategy
    ``"ddp"`` (default; scripts, ``torchrun``, ``srun``), ``"ddp_notebook"``/``"ddp_fork"`` (notebooks and
    other interactive sessions; not for a TileDB-SOMA experiment, which cannot be read in forked processes),
    or a :class:`lightning.fabric.strategies.DDPStrategy`."""

doc_labels_key = """\
labels_key
    ``obs`` column with the true cell types."""

doc_perturbation_key = """\
perturbation_key
    ``obs`` column with the perturbation labels (``"JAK2"``, ``"JAK2+STAT1"`` for a combination)."""

doc_control = """\
control
    Label of the control cells in ``obs[perturbation_key]``."""

doc_eval_key_added = """\
key_added
    ``None`` (the default) writes nothing into ``adata``; a name writes ``adata.uns[key_added] = {"params": ...,
    "results": <the returned DataFrame>, ...}`` (see Returns), where the plots of :mod:`scgpt.pl` find it by
    ``key=``."""

doc_inference = "\n".join(
    [doc_gene_key, doc_use_aliases, doc_layer, doc_batch_key, doc_max_length, doc_batch_size, doc_seed, doc_device]
    + [doc_dtype, doc_progress]
)
"""The options of every call that runs the model over cells, in signature order."""

DOCS = {name.removeprefix("doc_"): value for name, value in dict(globals()).items() if name.startswith("doc_")}


def doc_params(**replacements: str) -> Callable[[F], F]:
    """Fill ``{name}`` placeholders of a docstring with shared parameter text.

    ``doc_params()`` with no arguments fills every placeholder named after a ``doc_*`` string of
    this module (``{model}``, ``{inference}``, ...); keyword arguments add or override texts.
    Unknown placeholders raise, so a typo cannot reach the docs.
    """
    texts = {**DOCS, **replacements}

    def decorate(obj: F) -> F:
        doc = inspect.cleandoc(obj.__doc__ or "")
        for name, text in texts.items():
            doc = doc.replace("{" + name + "}", text)
        leftover = re.findall(r"^\{(\w+)\}$", doc, flags=re.MULTILINE)
        if leftover:
            raise ValueError(f"{obj.__qualname__}: unknown docstring placeholders {leftover}")
        obj.__doc__ = doc
        return obj

    return decorate


def evaluation_key_doc(function: str) -> str:
    """The ``key`` parameter of a plot that reads the results of the evaluator ``scgpt.tl.<function>``."""
    return (
        "key\n"
        f"    With an AnnData: the ``uns`` entry written by :func:`scgpt.tl.{function}` (its ``key_added``);\n"
        "    ``None``: the only such entry (the error lists them when there are several, or none)."
    )
