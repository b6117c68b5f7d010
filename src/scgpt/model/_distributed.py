"""Inference on several processes (GPUs, CPU processes, nodes), launched by Lightning Fabric.

Launcher
    :class:`lightning.fabric.Fabric` with a DDP strategy, not ``Trainer.predict``. Both use the same
    launchers and cluster environments (Lightning's own subprocess launcher for ``python script.py``,
    ``torchrun``/TorchElastic, SLURM's ``srun``, ``ddp_notebook`` forks), so nothing here starts or
    manages processes. Fabric lets every rank call :func:`~scgpt.model._engine.run_inference` unchanged
    (chunked reads from memory or a backed file, length-sorted minibatches, accumulators) on its own row
    ranges. ``Trainer.predict`` would need a ``Dataset`` and a ``DistributedSampler``, which reads cells
    one at a time (random access to a backed ``.h5ad``) and repeats cells to even out the ranks, and its
    outputs come back per batch rather than in cell order.

Sharding
    The cells are cut into chunks of consecutive rows. Each rank gets a contiguous run of chunks, the runs
    balanced by token count (``min(expressed genes + 1, max_length)`` per cell, read from the CSR row
    pointers without touching the values), so every rank reads one contiguous slab of the file and ranks
    finish together. Within a chunk the engine sorts cells by length, as in a single process: a global
    length sort would make every rank read scattered rows of a backed file to save a little padding.

Results
    Every cell's tokens are seeded per cell and each cell is encoded on its own, so results do not depend
    on the number of ranks (equal to the single-process output up to float rounding, about 1e-7).
    :func:`run_sharded` gathers the rows onto *every* rank, in the original cell order (with Lightning's
    script launchers every rank runs the rest of the user's script, which can then use the result). The
    out-of-core path of ``scgpt embed`` does not gather: each rank writes its chunks to disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._logging import caller, logger
from ..data import get_matrix, stored_per_row
from ._device import resolve_device
from ._engine import Accumulator, InferenceResult, chunk_grid, default_chunk_size, run_inference

if TYPE_CHECKING:
    from anndata import AnnData
    from lightning.fabric import Fabric

    from ..nn import ScGPTNet
    from ._scgpt import ScGPT

#: Strategies that run a full copy of the model on every rank (all inference needs).
STRATEGIES = ("ddp", "ddp_fork", "ddp_notebook")

DISTRIBUTED_OPTIONS = ("devices", "num_nodes", "strategy")
"""The options of the callers that can run on several processes (``tl.embed``, ``get_latent_representation``)."""


def global_rank() -> int:
    """Rank of this process in a running process group (0 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def program_can_be_rerun() -> bool:
    """Whether Lightning's script launcher can start this program again in new processes.

    It runs ``python sys.argv[0] ...`` (or ``python -m module ...``); code given with ``python -c``, on standard
    input (``python - <<EOF``, a pipe) or typed into the interactive interpreter has no file to run: the new
    processes fail at once, and the first one would wait for them forever.
    """
    import sys

    import __main__

    if getattr(__main__, "__spec__", None) is not None:  # python -m module
        return True
    program = sys.argv[0] if sys.argv else ""
    return program not in ("", "-", "-c") and os.path.isfile(program)


def make_fabric(
    *,
    device: str | torch.device | None,
    devices: int | str | Sequence[int],
    num_nodes: int = 1,
    strategy: Any = None,
    forkable: bool = False,
) -> Fabric:
    """A :class:`~lightning.fabric.Fabric` for inference on ``devices`` x ``num_nodes`` processes, checked first.

    Parameters
    ----------
    device
        Kind of device: ``"cpu"``, ``"cuda"`` (``None``: the best available). An index (``"cuda:1"``) is
        an error: choose GPUs with ``devices=[1, 2]``.
    devices, num_nodes, strategy
        See :func:`scgpt.tl.embed`.
    forkable
        Whether the work can run in forked processes. ``strategy="ddp"`` (the default) starts the other processes
        by running the program again, which code from ``python -c`` or standard input cannot be
        (:func:`program_can_be_rerun`): they are then forked instead (``"ddp_fork"``, the same results) where
        ``forkable`` and the device allow it (CPU, or CUDA not yet initialised here), and otherwise refused.

    Raises
    ------
    ValueError
        For more devices than available, a strategy inference cannot use, or one that cannot run on the device;
        for a script launcher that cannot start the program again, where forking is not possible.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ..train._runner import quiet_lightning

    if device is not None and torch.device(device).index is not None:
        raise ValueError(
            f"device={str(device)!r} names one device; with `devices=` give the kind only (device='cuda') and the "
            "GPUs as devices=[0, 1]."
        )
    kind = resolve_device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"Several processes need device='cpu' or 'cuda'; {kind!r} runs in one process only.")
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive integer, got {num_nodes!r}.")
    _check_devices(kind, devices)
    chosen = strategy is not None and strategy != "auto"
    if strategy is None or strategy == "auto":
        strategy = "ddp"
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={strategy!r} cannot be used for inference: every process needs a full copy of the model. "
                f"Use one of {list(STRATEGIES)} ('ddp' in scripts and under torchrun/srun, 'ddp_notebook' in "
                "notebooks)."
            )
    elif isinstance(strategy, DDPStrategy):
        backend = getattr(strategy, "_process_group_backend", None)
        if kind == "cpu" and backend not in (None, "gloo"):
            raise ValueError(
                f"strategy with process_group_backend={backend!r} cannot run on CPU; use 'gloo' (the default on CPU)."
            )
    else:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)} or a DDPStrategy, got {type(strategy).__name__}.")
    if devices == 1 and num_nodes == 1 and isinstance(strategy, str):
        strategy = "auto"  # one process: no process group to set up

    def build(strategy: Any) -> Fabric:
        try:
            with quiet_lightning():
                return Fabric(
                    accelerator=kind, devices=devices, num_nodes=num_nodes, strategy=strategy, precision="32-true"
                )
        except (MisconfigurationException, RuntimeError) as e:  # e.g. devices that disagree with srun's tasks
            raise ValueError(f"Lightning cannot run with devices={devices!r}, num_nodes={num_nodes}: {e}") from None

    fabric = build(strategy)
    if _reruns_program(fabric) and not program_can_be_rerun():
        fn = caller()
        cuda_busy = kind == "cuda" and torch.cuda.is_initialized()
        if forkable and not chosen and not cuda_busy:
            logger.info(
                "    the program has no script file to start again (python -c, standard input): the processes are "
                "forked instead (strategy='ddp_fork', the same results)"
            )
            return build("ddp_fork")
        if cuda_busy:
            why, advice = "CUDA is in use in this process, so it cannot be forked either", ""
        elif not forkable:
            why, advice = "this run cannot use forked processes (a SOMA experiment, or scgpt embed --backed)", ""
        else:
            why, advice = f"strategy={strategy!r} starts them that way", ", or pass strategy='ddp_notebook' (forks)"
        raise ValueError(
            f"{fn}: devices={devices!r} starts the other processes by running this program again, but it has no "
            f"script file (it runs from python -c, standard input or an interactive session) and {why}. Put the "
            f"code in a script file and run python script.py (or use torchrun / srun){advice}."
        )
    return fabric


def _reruns_program(fabric: Fabric) -> bool:
    """Whether the fabric's launcher starts the other processes by running ``sys.argv`` again."""
    from lightning.fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = fabric.strategy
    launcher = getattr(strategy, "launcher", None)
    environment = getattr(strategy, "cluster_environment", None)
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and environment is not None
        and not environment.creates_processes_externally
    )


def _check_devices(kind: str, devices: Any) -> None:
    if kind == "cpu":
        if isinstance(devices, list | tuple) or not isinstance(devices, int) or devices < 1:
            raise ValueError(f"On CPU, devices must be a number of processes (a positive integer), got {devices!r}.")
        available = os.cpu_count() or 1
        if devices > available:
            raise ValueError(f"devices={devices} CPU processes, but this machine has {available} CPU cores.")
        return
    n_gpus = torch.cuda.device_count()
    if isinstance(devices, int):
        wanted = n_gpus if devices == -1 else devices
        if devices == 0 or devices < -1:
            raise ValueError(f"devices must be positive, -1 (all GPUs) or a list of GPU ids, got {devices}.")
        if wanted > n_gpus:
            raise ValueError(f"devices={devices} GPUs requested, but {n_gpus} are available.")
    elif isinstance(devices, list | tuple):
        bad = [d for d in devices if not 0 <= int(d) < n_gpus]
        if bad:
            raise ValueError(f"GPU ids {bad} do not exist; this machine has {n_gpus} GPUs (ids 0-{n_gpus - 1}).")


def _check_forkable(adata: AnnData, layer: str | None, strategy: Any) -> None:
    """A clear error for forked processes reading a TileDB-SOMA experiment (TileDB's threads do not survive a fork)."""
    forks = strategy in ("ddp_fork", "ddp_notebook") or getattr(strategy, "_start_method", None) == "fork"
    if forks and getattr(get_matrix(adata, layer), "backend", None) == "tiledbsoma":
        raise ValueError(
            f"strategy={strategy!r} forks this process, and TileDB (which reads the SOMA experiment) cannot be used "
            "in forked processes. Run the embedding from a script with strategy='ddp' (python script.py), or under "
            "torchrun or srun; or embed in this process (devices=None)."
        )


def launch(fabric: Fabric, function: Callable[[Fabric], Any]) -> Any:
    """Run ``function(fabric)`` on every rank (starting the processes Lightning's launcher starts); rank 0's result.

    With the script launcher (``"ddp"``) this process is rank 0 and the others run the script anew; under
    ``torchrun``/``srun`` the processes exist already; with ``"ddp_notebook"`` they are forked here.
    """
    from .._settings import settings
    from ..train._runner import quiet_lightning

    progress = settings.progress
    try:
        with quiet_lightning():
            return fabric.launch(function)
    finally:
        settings.progress = progress


# ---------------------------------------------------------------------------- sharding
def chunk_costs(adata: AnnData, layer: str | None, chunks: Sequence[tuple[int, int]], max_length: int) -> np.ndarray:
    """Estimated tokens of each chunk: ``min(stored entries + 1, max_length)`` summed over its cells.

    For a matrix that cannot count its entries without reading them (a TileDB-SOMA layer whose ``obs`` has
    no ``nnz``), every cell counts ``max_length``: chunks are balanced by cells.
    """
    if getattr(get_matrix(adata, layer), "counts_known", True):
        per_cell = np.minimum(stored_per_row(adata, layer) + 1, max_length)
    else:
        per_cell = np.full(adata.n_obs, max_length, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(per_cell)])
    return np.array([cum[b] - cum[a] for a, b in chunks], dtype=np.float64)


def split_chunks(costs: np.ndarray, world_size: int) -> list[np.ndarray]:
    """Indices of the chunks of each rank: contiguous runs, balanced by ``costs`` (a rank may get none)."""
    costs = np.asarray(costs, dtype=np.float64)
    if len(costs) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(world_size)]
    total = costs.sum()
    middle = np.cumsum(costs) - costs / 2  # a chunk goes to the rank whose share holds its middle
    owner = np.minimum((middle / max(total, 1e-12) * world_size).astype(np.int64), world_size - 1)
    if total == 0:
        owner = np.minimum(np.arange(len(costs)) * world_size // len(costs), world_size - 1)
    return [np.flatnonzero(owner == r) for r in range(world_size)]


def shard_chunks(
    adata: AnnData, layer: str | None, *, world_size: int, batch_size: int, max_length: int
) -> list[list[tuple[int, int]]]:
    """The row chunks of each rank for a run over all cells of ``adata`` (deterministic: every rank computes it)."""
    size = min(default_chunk_size(batch_size), max(64, -(-adata.n_obs // (4 * world_size))))
    chunks = chunk_grid(adata.n_obs, size)
    parts = split_chunks(chunk_costs(adata, layer, chunks, max_length), world_size)
    return [[chunks[i] for i in part] for part in parts]


# ---------------------------------------------------------------------------- embeddings of one rank
class RangeRows(Accumulator):
    """Cell embeddings (optionally L2-normalised) of the cells in the rows ``lo:hi``, ``(hi - lo, d)`` float32."""

    def __init__(self, lo: int, hi: int, *, normalize: bool) -> None:
        self.lo, self.hi, self.normalize = lo, hi, normalize

    def begin(self, run) -> None:
        super().begin(run)
        self.out: np.ndarray | None = None
        self.n_tokens = np.zeros(self.hi - self.lo, dtype=np.int64)

    def add(self, net: ScGPTNet, batch) -> None:
        emb = net.cell_embedding(batch.genes, batch.values, **batch.inputs(net.config.batch_conditioned))
        if self.out is None:
            self.out = np.zeros((self.hi - self.lo, emb.shape[1]), dtype=np.float32)
        self.out[batch.cells.cpu().numpy() - self.lo] = emb.float().cpu().numpy()

    def result(self) -> np.ndarray | None:
        if self.out is not None and self.normalize:
            norms = np.linalg.norm(self.out, axis=1, keepdims=True)
            self.out /= np.where(norms > 0, norms, 1.0)
        return self.out


def _gather_rows(fabric: Fabric, local: np.ndarray, spans: list[tuple[int, int]], dtype, block: int = 65_536):
    """Rows of every rank, ``spans[r] = (lo, hi)``, into one array in row order (on every rank), ``block`` at a time."""
    width = local.shape[1:]
    n = max(hi - lo for lo, hi in spans)
    out = np.empty((spans[-1][1] - spans[0][0], *width), dtype=dtype)
    for s in range(0, n, block):
        m = min(block, n - s)
        piece = np.zeros((m, *width), dtype=dtype)
        mine = local[s : s + m]
        piece[: len(mine)] = mine
        got = fabric.all_gather(torch.from_numpy(piece)).cpu().numpy()  # (world, m, ...)
        for r, (lo, hi) in enumerate(spans):
            k = max(0, min(m, hi - lo - s))
            out[lo + s : lo + s + k] = got[r, :k]
    return out


def run_sharded(
    model: ScGPT,
    adata: AnnData,
    *,
    devices: int | str | Sequence[int],
    num_nodes: int = 1,
    strategy: Any = None,
    normalize: bool = True,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    **options: Any,
) -> InferenceResult:
    """Cell embeddings of ``adata`` computed on several processes, gathered in cell order on every rank.

    Parameters
    ----------
    model, adata
        As :func:`~scgpt.model._engine.run_inference`; a backed ``adata`` is read by each rank for its rows only.
    devices, num_nodes, strategy
        See :func:`scgpt.tl.embed`.
    normalize
        L2-normalise the embeddings.
    device, progress
        Kind of device (see :func:`make_fabric`); progress bar on rank 0.
    **options
        Further options of :func:`~scgpt.model._engine.run_inference`.

    Returns
    -------
    The result as a single process would have computed it (``output``: ``(n_obs, d)``; ``n_tokens`` of every cell).
    """
    _check_forkable(adata, options.get("layer"), strategy)
    soma = getattr(get_matrix(adata, options.get("layer")), "backend", None) == "tiledbsoma"
    fabric = make_fabric(device=device, devices=devices, num_nodes=num_nodes, strategy=strategy, forkable=not soma)
    parent = os.getpid()

    def work(fabric: Fabric) -> InferenceResult:
        data = adata
        if adata.isbacked and os.getpid() != parent:  # a forked rank: HDF5 handles do not survive fork
            import anndata as ad

            data = ad.read_h5ad(adata.filename, backed="r")
        world, rank = fabric.world_size, fabric.global_rank
        batch_size, max_length = options.get("batch_size", 64), options.get("max_length", 1200)
        shards = shard_chunks(
            data, options.get("layer"), world_size=world, batch_size=batch_size, max_length=max_length
        )
        spans, lo = [], 0
        for part in shards:  # contiguous runs in rank order: rank r holds rows spans[r]
            hi = part[-1][1] if part else lo
            spans.append((lo, hi))
            lo = hi
        mine = shards[rank]
        if rank == 0 and world > 1:
            logger.info(
                f"    on {world} processes; rank 0 embeds {spans[0][1] - spans[0][0]:,} of {data.n_obs:,} cells"
            )
        acc = RangeRows(*spans[rank], normalize=normalize)
        show = progress if rank == 0 else False
        res = run_inference(
            model, data, acc, device=fabric.device, progress=show, chunks=mine, announce=rank == 0, **options
        )
        local = res.output
        if local is None:  # no cells on this rank
            local = np.zeros((spans[rank][1] - spans[rank][0], model.config.d_model), dtype=np.float32)
        n_tokens_local = res.n_tokens[spans[rank][0] : spans[rank][1]]
        if world > 1:
            emb = _gather_rows(fabric, local, spans, np.float32)
            n_tokens = _gather_rows(fabric, n_tokens_local[:, None], spans, np.int64)[:, 0]
        else:
            emb, n_tokens = local, n_tokens_local
        return InferenceResult(emb, res.match, n_tokens, res.dtype)

    return launch(fabric, work)
