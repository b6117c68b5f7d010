"""The reliability battery of issue 26: each case run in its own process, each outcome classified.

Not a test module (pytest collects ``test_*.py`` only): a script that prints a table and the count per class::

    PYTHONPATH=src python tests/reliability/battery.py               # every case
    PYTHONPATH=src python tests/reliability/battery.py -k item9 m3    # cases whose id contains one of these
    python tests/reliability/battery.py --src /work/wt-battery-before/src           # another checkout

Every case is a small Python snippet on tiny inputs (the bundled cells, the ``demo`` model), run with
``python -c`` in a fresh process and a fresh temporary working directory, under a time limit. Each case states
what it needs:

- ``error``: a clear error: an exception of a documented type (``ValueError``, ``KeyError``, ``TypeError``,
  ``FileNotFoundError``, ``FileExistsError``, ``ImportError`` or an exception class of scgpt itself), whose
  message is one line and names what the case says (the argument, the value, the file); for the command line,
  exit status 2 with one line ``scgpt: error: ...``;
- ``warning``: a Python warning (``warnings.warn``) matching the pattern, and no error;
- ``error|warning``: either (the issue accepts a refusal or a warning);
- ``warning|log``: a warning, or a message of the ``scgpt`` logger at WARNING level or above;
- ``ok``: the call finishes and the checks in the snippet (``check(...)``) hold.

Outcomes, one class each:

- ``crash``: the process was killed by a signal (segfault, abort): a Jupyter kernel would die;
- ``hang``: the time limit passed;
- ``silent wrong``: finished without the error or warning the case needs, a ``check`` failed (a wrong result),
  or a valid call was refused (a clear error where the case needs ``ok``);
- ``raw traceback``: an exception that is not a clear error (another type, several lines, or a message that does
  not name what the case says) — the user gets a traceback from inside a library;
- ``handled``: what the case needs.

Cases of issue 26 items owned by another branch (2, 3, 4, 7 and the minor "official folder copied over a native
one") are run too and counted apart; their outcome says what this checkout does. The script only reads the source
tree it is given (``--src``, else ``PYTHONPATH``) and writes in temporary folders. Two processes run cases at once
(``--jobs``); the whole battery took 15-18 minutes on 2 shared cores (the slowest case, a training run
with checkpoints, 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

CLASSES = ("crash", "hang", "silent wrong", "raw traceback", "handled")
MARK = "@@BATTERY@@"


@dataclass
class Case:
    """One case: ``id`` (item or ``m*`` for the minor list), what it ``needs`` and the snippet that runs it."""

    id: str
    title: str
    needs: str  # "error", "warning", "error|warning", "warning|log", "ok"
    pattern: str  # regular expression the message must match (searched, case-insensitive); "" for "ok"
    code: str
    timeout: int = 300
    owner: str = ""  # "" for this branch's items; else who fixes it


# ---------------------------------------------------------------------------- what every case process runs first
PRELUDE = r'''
import contextlib, io, json, logging, os, re, signal, subprocess, sys, tempfile, threading, time, traceback, warnings
os.environ.setdefault("MPLBACKEND", "agg")
import numpy as np
import scipy.sparse as sp
import anndata as ad
import pandas as pd
import scgpt
scgpt.settings.progress = False
TMP = tempfile.mkdtemp(prefix="battery_")
os.chdir(TMP)

def _older_api():
    """The calls of the cases in the keywords of an older checkout (renamed since), so the bug is what is tested."""
    import inspect
    tl = scgpt.tl
    bench = tl.benchmark_integration
    if "labels_key" not in inspect.signature(bench).parameters:
        def benchmark_integration(*a, labels_key=None, **kw):
            return bench(*a, label_key=labels_key, **kw)
        tl.benchmark_integration = benchmark_integration
    ev = tl.evaluate_annotation
    if "labels_key" not in inspect.signature(ev).parameters:
        def evaluate_annotation(adata, labels_key, key, **kw):
            return ev(adata, labels_key, key, **kw)
        tl.evaluate_annotation = evaluate_annotation
    evp = tl.evaluate_perturbation
    if list(inspect.signature(evp).parameters)[0] == "pred":
        def evaluate_perturbation(adata, pred, **kw):
            return evp(pred, adata, **kw)
        tl.evaluate_perturbation = evaluate_perturbation
_older_api()

class WrongResult(Exception):
    """A check of the case failed: the call finished with a wrong result."""

class CLIErrorLine(Exception):
    """The command exited with status 2 and one line 'scgpt: error: ...'."""

def check(condition, message="wrong result"):
    if not condition:
        raise WrongResult(message)

def cells(n=200, start=0):
    return scgpt.datasets.pbmc68k_counts()[start:start + n].copy()

def cli(*argv):
    """Run the scgpt command in this process: returns on status 0, raises CLIErrorLine on a one-line error."""
    from scgpt.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    text = err.getvalue()
    lines = [l for l in text.strip().splitlines() if l.strip()]
    if rc == 0:
        return text
    if rc == 2 and lines and lines[-1].startswith("scgpt: error:") and "Traceback" not in text:
        raise CLIErrorLine(lines[-1])
    raise RuntimeError(f"exit status {rc}: {text[-2000:]}")

def soma_experiment(adata, uri="exp"):
    import tiledbsoma.io
    adata = adata.copy()
    adata.var["feature_name"] = adata.var_names.astype(str)
    adata.var_names = [f"gene_{i}" for i in range(adata.n_vars)]
    adata.obs["nnz"] = np.diff(sp.csr_matrix(adata.X).indptr).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiledbsoma.io.from_anndata(uri, adata, measurement_name="RNA", X_layer_name="raw")
    return uri

def stop_benchmark():
    """scib-metrics stops with _Reached once it is given the cells to score (a full benchmark takes minutes):
    returns the dict where the labels and batches it was given are put."""
    import scib_metrics.benchmark as b
    seen = {}
    class _Reached(Exception):
        pass
    def benchmark(self):
        seen["labels"] = sorted(map(str, self._adata.obs[self._label_key].unique()))
        seen["batches"] = sorted(map(str, self._adata.obs[self._batch_key].unique()))
        seen["n_obs"] = self._adata.n_obs
        raise _Reached()
    b.Benchmarker.benchmark = benchmark
    seen["reached"] = _Reached
    return seen

def stop_after_chunks(k):
    """Ctrl-C right after the k-th chunk file of `scgpt embed --backed` is written (deterministic, unlike a timer
    racing a fast run); returns the undo."""
    from scgpt.model import _outofcore
    write = _outofcore.ChunkStore.write
    def failing(self, i, emb, n_tokens):
        write(self, i, emb, n_tokens)
        if len(list(self.folder.glob("chunk_*.npz"))) >= k:
            raise KeyboardInterrupt
    _outofcore.ChunkStore.write = failing
    return lambda: setattr(_outofcore.ChunkStore, "write", write)

def interrupt_when(folder, pattern, count):
    """Ctrl-C (SIGINT to this process) once `count` files matching `pattern` are in `folder`."""
    import glob
    def watch():
        while len(glob.glob(os.path.join(folder, pattern))) < count:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=watch, daemon=True).start()
'''

HARNESS = r"""
_warnings, _logs = [], []
class _Records(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            _logs.append(record.getMessage())
logging.getLogger("scgpt").addHandler(_Records())
_result = {"status": "finished"}
try:
    with warnings.catch_warnings(record=True) as _w:
        warnings.simplefilter("always")
        try:
            exec(compile(CASE_CODE, "<case>", "exec"), dict(globals()))
        finally:
            _warnings.extend(f"{x.category.__name__}: {x.message}" for x in _w)
except WrongResult as e:
    _result = {"status": "wrong", "message": str(e)}
except BaseException as e:
    message = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    _result = {"status": "exception", "type": type(e).__name__, "module": type(e).__module__, "message": message,
               "where": "".join(traceback.format_exception(e)[-3:])[-1500:]}
_result["warnings"], _result["logs"] = _warnings, _logs
sys.stdout.flush()
print("\n" + MARK + json.dumps(_result, default=str), flush=True)
os._exit(0)  # no teardown: a library crashing at exit is not the case's outcome
"""

CLEAR_TYPES = {
    "ValueError", "KeyError", "TypeError", "FileNotFoundError", "FileExistsError", "NotADirectoryError",
    "IsADirectoryError", "PermissionError", "ImportError", "ModuleNotFoundError", "CLIErrorLine",
}  # fmt: skip


def _is_clear(result: dict, pattern: str) -> bool:
    import re

    message = result.get("message", "")
    documented = result.get("type") in CLEAR_TYPES or str(result.get("module", "")).startswith("scgpt")
    one_line = "\n" not in message.strip() and 0 < len(message) <= 1000
    return documented and one_line and bool(re.search(pattern, message, re.I | re.S))


def classify(case: Case, rc: int | None, result: dict | None) -> tuple[str, str]:
    """The class of an outcome and a short reason."""
    import re

    if rc is None:
        return "hang", f"no result within {case.timeout} s"
    if result is None:
        if rc < 0 or rc in (134, 139):
            return "crash", f"killed by signal {-rc if rc < 0 else rc - 128}"
        return "raw traceback", f"the process ended with status {rc} and no result"
    status = result["status"]
    if status == "wrong":
        return "silent wrong", result["message"]
    warned = [w for w in result["warnings"] if re.search(case.pattern or "$^", w, re.I | re.S)]
    logged = [m for m in result["logs"] if re.search(case.pattern or "$^", m, re.I | re.S)]
    if status == "exception":
        what = f"{result['type']}: {result['message'][:300]}"
        if not _is_clear(result, case.pattern or "."):
            return "raw traceback", what
        if case.needs in ("error", "error|warning"):
            return "handled", what
        return "silent wrong", "refused a valid call: " + what
    if case.needs == "ok":
        return "handled", "finished, checks hold"
    if case.needs in ("warning", "error|warning") and warned:
        return "handled", "warned: " + warned[0][:300]
    if case.needs == "warning|log" and (warned or logged):
        return "handled", "said: " + (warned or logged)[0][:300]
    return "silent wrong", f"finished without the {case.needs} the case needs"


def run_case(case: Case, python: str, src: str | None = None) -> tuple[str, str, float]:
    script = PRELUDE + f"\nMARK = {MARK!r}\nCASE_CODE = {textwrap.dedent(case.code)!r}\n" + HARNESS
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="battery_run_") as cwd:
        env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "OMP_NUM_THREADS": "1"}
        if src:
            env["PYTHONPATH"] = os.path.abspath(src)
        try:
            proc = subprocess.run(
                [python, "-c", script], capture_output=True, text=True, timeout=case.timeout, cwd=cwd, env=env
            )
        except subprocess.TimeoutExpired:
            return (*classify(case, None, None), time.perf_counter() - start)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK) :])
    cls, reason = classify(case, proc.returncode, result)
    if os.environ.get("BATTERY_VERBOSE") and cls != "handled":
        reason += "\n" + (result or {}).get("where", proc.stderr[-1500:])
    return cls, reason, time.perf_counter() - start


# ---------------------------------------------------------------------------- the cases
C: list[Case] = []


def case(id: str, title: str, needs: str, pattern: str, code: str, *, timeout: int = 300, owner: str = "") -> None:
    C.append(Case(id, title, needs, pattern, code, timeout, owner))


EMPTY = """
a = cells(160)
b = ad.AnnData(sp.vstack([a.X, sp.csr_matrix((12, a.n_vars), dtype=a.X.dtype)]).tocsr(), var=a.var.copy())
b.obs_names = [f"c{i}" for i in range(b.n_obs)]
b.obs["batch"] = ["x"] * 80 + ["y"] * 80 + ["empty"] * 12
b.obs["label"] = list(a.obs["bulk_labels"].astype(str)) + ["T"] * 12
"""

# --- item 1: empty droplets (fixed on main)
case(
    "item1-integrate",
    "integrate with a batch of empty droplets",
    "ok",
    "",
    EMPTY
    + """
scgpt.tl.integrate(b, "demo", batch_key="batch", n_top_genes=80, max_steps=1, batch_size=16)
check(b.obsm["X_scGPT_integrated"].shape == (172, 128))
""",
)
case(
    "item1-infer-grn",
    "infer_grn(method='attention') with a batch of empty droplets",
    "ok",
    "",
    EMPTY
    + """
scgpt.tl.infer_grn(b, "demo", method="attention", n_top_genes=40, top_k=5, batch_size=64)
check(len(b.uns["scgpt_grn"]["edges"]) > 0)
""",
)
case(
    "item1-benchmark",
    "benchmark_integration with a batch of empty droplets",
    "ok",
    "",
    EMPTY
    + """
seen = stop_benchmark()
b.obsm["X_scGPT"] = np.random.default_rng(0).normal(size=(b.n_obs, 8)).astype(np.float32)
try:
    scgpt.tl.benchmark_integration(b, batch_key="batch", labels_key="label", baselines=("pca",))
except seen["reached"]:
    pass
check(seen.get("n_obs") == b.n_obs, "scib-metrics was never given the cells")  # X_pca is written once scored
""",
)

# --- item 2: checkpoints (another branch)
PRETRAIN = """
a = cells(64); a.write_h5ad("c.h5ad")
args = ["--input", "c.h5ad", "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-hid", "16",
        "--batch-size", "32", "--max-length", "32", "--accelerator", "cpu", "--devices", "1", "-q"]
"""
case(
    "item2-epoch-checkpoint",
    "a checkpoint exists before training ends (SIGKILL loses at most an epoch)",
    "ok",
    "",
    PRETRAIN
    + """
proc = subprocess.Popen([sys.executable, "-m", "scgpt", "pretrain", *args, "--output", "m", "--max-epochs", "400"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
found = False
while proc.poll() is None:
    if any(p.suffix == ".ckpt" for p in __import__("pathlib").Path("m/checkpoints").glob("*.ckpt")):
        found = True
        proc.kill()
        break
    time.sleep(0.05)
proc.wait()
check(found, "no checkpoint was written before training ended (a SIGKILL would lose every epoch)")
""",
    owner="item 2 (checkpoints)",
    timeout=400,
)
case(
    "item2-no-duplicate",
    "a finished run leaves one checkpoint, no last-v1.ckpt",
    "ok",
    "",
    PRETRAIN
    + """
cli("pretrain", *args, "--output", "m", "--max-epochs", "2", "--checkpoint-every-n-steps", "1")
names = sorted(p.name for p in __import__("pathlib").Path("m/checkpoints").glob("*.ckpt"))
check(not any("-v" in n for n in names), f"duplicate checkpoints: {names}")
""",
    owner="item 2 (checkpoints)",
)
case(
    "item2-resume-warns",
    "--resume without a checkpoint says at WARNING level that it starts over",
    "warning|log",
    r"resume|start",
    PRETRAIN
    + """
cli("pretrain", *args, "--output", "m", "--max-steps", "1", "--resume")
""",
    owner="item 2 (checkpoints)",
)

# --- item 3: devices=2 from `python -c` (another branch)
case(
    "item3-devices-python-c",
    "tl.embed(devices=2) from `python -c`",
    "ok",
    "",
    """
a = cells(40)
scgpt.tl.embed(a, "demo", devices=2, device="cpu", max_length=32, batch_size=8)
check(a.obsm["X_scGPT"].shape == (40, 128))
""",
    owner="item 3 (launcher)",
    timeout=240,
)

# --- item 4: saved models remember their task (another branch)
case(
    "item4-saved-task",
    "an integration model saved with save_pretrained keeps its task",
    "ok",
    "",
    """
a = cells(120); a.obs["batch"] = np.where(np.arange(120) % 2, "x", "y")
m = scgpt.model.ScGPT.from_pretrained("demo")
scgpt.tl.integrate(a, m, batch_key="batch", n_top_genes=60, max_steps=1, batch_size=16)
m.save_pretrained("tuned")
check(scgpt.model.ScGPT.from_pretrained("tuned").registry_.get("task") == "integration",
      "the saved folder forgot the integration task: the next integrate fine-tunes again")
""",
    owner="item 4 (task registry)",
)

# --- item 5: reference indexes (waits for the model hub)
REF = """
ref, qry = cells(120), cells(60, start=300)
scgpt.tl.embed(ref, "demo", max_length=64)
index = scgpt.tl.build_reference(ref, "demo", labels_key="bulk_labels", use_rep="X_scGPT", path="idx")
"""
case(
    "item5-other-model-use-rep",
    "a query embedded by another model passes a saved index via use_rep",
    "error",
    r"model",
    REF
    + """
other = scgpt.model.ScGPT.from_pretrained("demo")
import torch
with torch.no_grad():
    for p in other.net.parameters():
        p.add_(0.05 * torch.randn_like(p))
other.save("other")
scgpt.tl.embed(qry, "other", max_length=64)
scgpt.tl.annotate(qry, method="knn", reference="idx", use_rep="X_scGPT")
""",
)
case(
    "item5-swapped-classes",
    "a saved index with swapped classes is refused",
    "error",
    r"reference|index|damaged",
    REF
    + """
meta = json.loads(open("idx/reference.json").read())
meta["classes"] = meta["classes"][::-1]
open("idx/reference.json", "w").write(json.dumps(meta))
scgpt.tl.annotate(qry, "demo", method="knn", reference="idx", max_length=64)
""",
)
case(
    "item5-dropped-fingerprint",
    "a saved index without its fingerprint is refused",
    "error",
    r"reference|index|fingerprint",
    REF
    + """
meta = json.loads(open("idx/reference.json").read())
meta["fingerprint"] = {}
open("idx/reference.json", "w").write(json.dumps(meta))
scgpt.tl.annotate(qry, "other" if False else "demo", method="knn", reference="idx", max_length=64)
""",
)

# --- item 6: benchmark_integration
BENCH = """
seen = stop_benchmark()
a = cells(200)
a.obs["batch"] = np.where(np.arange(a.n_obs) % 2, "r1", "r2").astype(object)
a.obs["label"] = a.obs["bulk_labels"].astype(object)
a.obsm["X_scGPT"] = np.random.default_rng(0).normal(size=(a.n_obs, 8)).astype(np.float32)
def bench(x, **kw):
    try:
        return scgpt.tl.benchmark_integration(x, batch_key="batch", labels_key="label", baselines=("pca",), **kw)
    except seen["reached"]:
        return None
"""
case(
    "item6-nan-labels",
    "benchmark_integration with NaN labels",
    "error|warning",
    r"label",
    BENCH
    + """
a.obs.loc[a.obs_names[:10], "label"] = np.nan
bench(a)
check("labels" not in seen or "nan" not in seen["labels"], f"'nan' is scored as a cell type: {seen.get('labels')}")
""",
)
case(
    "item6-nan-batches",
    "benchmark_integration with NaN batches",
    "error",
    r"batch",
    BENCH
    + """
a.obs.loc[a.obs_names[:10], "batch"] = None
bench(a)
check("batches" not in seen or "None" not in seen["batches"], f"'None' is scored as a batch: {seen.get('batches')}")
""",
)
case(
    "item6-one-batch",
    "benchmark_integration with one batch: clear error, nothing written",
    "error",
    r"batch",
    BENCH
    + """
a.obs["batch"] = "r1"
try:
    bench(a)
finally:
    check("X_pca" not in a.obsm, "X_pca was written into the input before the error")
""",
)
case(
    "item6-one-label",
    "benchmark_integration with one cell type",
    "error",
    r"label|cell type",
    BENCH
    + """
a.obs["label"] = "T"
try:
    bench(a)
finally:
    check("X_pca" not in a.obsm, "X_pca was written into the input before the error")
""",
)
case(
    "item6-five-cells",
    "benchmark_integration on 5 cells",
    "error",
    r"cells|batch|label",
    BENCH
    + """
b = a[:5].copy()
try:
    bench(b)
finally:
    check("X_pca" not in b.obsm, "X_pca was written into the input before the error")
""",
)

# --- item 7: diverged training (another branch)
SCREEN = """
_vocab = set(scgpt.model.ScGPT.from_pretrained("demo").vocab.itos)  # targets the demo model knows
_sim = scgpt.datasets.simulate_perturbations(n_genes=120, n_cells_per_condition=2, singles=1, doubles=0, seed=0)
_g = [g for g in _sim.var_names if g in _vocab][:4]
screen = scgpt.datasets.simulate_perturbations(
    n_genes=120, n_cells_per_condition=12, singles=_g, doubles=[_g[0] + "+" + _g[1]], seed=0
)
"""
case(
    "item7-diverged-finetune",
    "finetune('perturbation', lr=1e4) is flagged",
    "error|warning",
    r"finite|diverg|nan|learning rate",
    SCREEN
    + """
gen = scgpt.model.ScGPT.from_pretrained("demo").finetune("perturbation", screen, lr=1e4, max_epochs=2, batch_size=16)
""",
    owner="item 7 (diverged training)",
)
case(
    "item7-save-nonfinite",
    "save() of a model with an infinite weight",
    "error",
    r"finite|nan|inf",
    """
import torch
m = scgpt.model.ScGPT.from_pretrained("demo")
with torch.no_grad():
    next(m.net.parameters()).view(-1)[0] = float("inf")
m.save("m")
""",
    owner="item 7 (diverged training)",
)
case(
    "item7-embed-nonfinite",
    "embedding with an in-memory infinite weight",
    "error",
    r"finite|nan|inf",
    """
import torch
m = scgpt.model.ScGPT.from_pretrained("demo")
with torch.no_grad():
    for p in m.net.parameters():
        p.fill_(float("inf"))
        break
a = cells(20)
scgpt.tl.embed(a, m, max_length=32)
check(np.isfinite(a.obsm["X_scGPT"]).all(), "all-NaN embeddings")
""",
    owner="item 7 (diverged training)",
)
case(
    "item7-eval-nan-rows",
    "evaluate_perturbation's mean row with NaN predictions",
    "error|warning",
    r"nan|finite",
    SCREEN
    + """
labels = sorted(set(screen.obs["perturbation"]) - {"control"})
pred = scgpt.tl.perturbation_baseline(screen, labels[:2], method="train_mean", train=labels[2:])
pred.X[0] = np.nan
scgpt.tl.evaluate_perturbation(screen, pred)
""",
    owner="item 7 (diverged training)",
)

# --- item 8: reference_dir("demo")
case(
    "item8-reference-dir-demo",
    "reference_dir('demo', ...) then 'demo' in the same folder",
    "ok",
    "",
    """
ref = cells(80)
try:
    folder = scgpt.tl.reference_dir("demo", "pbmc")
except ValueError as e:  # refused with a clear message naming 'demo': the name is never shadowed
    check("demo" in str(e) and "\\n" not in str(e), str(e))
else:
    scgpt.tl.build_reference(ref, "demo", labels_key="bulk_labels", use_rep=None, max_length=32, path=folder)
    q = cells(20, start=400)
    scgpt.tl.embed(q, "demo", max_length=32)
    check(q.obsm["X_scGPT"].shape == (20, 128))
""",
)

# --- item 9: scgpt embed --backed resume
EMBED = """
a = cells(300); a.write_h5ad("c.h5ad")
opts = ["--model", "demo", "--backed", "--max-length", "32", "--batch-size", "32", "--chunk-size", "50",
        "--device", "cpu", "-q"]
"""
case(
    "item9-failed-run-blocks",
    "a failed run's empty OUTPUT.parts does not block the corrected command",
    "ok",
    "",
    EMBED
    + """
try:
    cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts, "--gene-key", "nosuch")
except CLIErrorLine:
    pass
cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts)
check(ad.read_h5ad("o.h5ad").obsm["X_scGPT"].shape == (300, 128))
""",
)
case(
    "item9-stale-same-mtime",
    "new input content with the old mtime (cp -p) does not resume from stale chunks",
    "error|warning",
    r"input|chang|differ",
    EMBED
    + """
undo = stop_after_chunks(2)
try:
    cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts)
except (RuntimeError, KeyboardInterrupt):
    pass
undo()
check(os.path.isdir("o.h5ad.parts"), "the first run was not stopped part-way")
st = os.stat("c.h5ad")
import h5py, shutil
shutil.copy("c.h5ad", "c2.h5ad")  # (the stopped run in this process still holds c.h5ad open read-only)
with h5py.File("c2.h5ad", "r+") as f:  # new counts, same size and layout
    data = f["X/data"][:]
    f["X/data"][:] = data[::-1]
os.replace("c2.h5ad", "c.h5ad")
os.utime("c.h5ad", ns=(st.st_atime_ns, st.st_mtime_ns))
check(os.stat("c.h5ad").st_size == st.st_size)
cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts)
cli("embed", "--input", "c.h5ad", "--output", "fresh.h5ad", *opts)
got, want = ad.read_h5ad("o.h5ad").obsm["X_scGPT"], ad.read_h5ad("fresh.h5ad").obsm["X_scGPT"]
check(np.allclose(got, want, atol=1e-5), f"resumed from stale chunks: max difference {np.abs(got - want).max():.3f}")
""",
)
STOPPED = (
    EMBED
    + """
undo = stop_after_chunks(2)
try:
    cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts)
except (RuntimeError, KeyboardInterrupt):
    pass
undo()
check(os.path.isdir("o.h5ad.parts"), "the first run was not stopped part-way")
"""
)
case(
    "item9-damaged-manifest",
    "a damaged manifest.json",
    "error",
    r"manifest\.json",
    STOPPED
    + """
open("o.h5ad.parts/manifest.json", "w").write('{"format": 1, "inp')
cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts)
""",
)
case(
    "item9-damaged-chunk",
    "a damaged chunk file",
    "error",
    r"chunk_0+\.npz",
    STOPPED
    + """
p = "o.h5ad.parts/chunk_000000.npz"
open(p, "r+b").truncate(os.path.getsize(p) // 2)
cli("embed", "--input", "c.h5ad", "--output", "o.h5ad", *opts)
""",
)

# --- item 10: raw errors
case(
    "item10-soma-filter-syntax",
    "scgpt embed --obs-filter with a syntax error",
    "error",
    r"obs.filter",
    """
soma_experiment(cells(40))
cli("embed", "--model", "demo", "--input", "exp", "--output", "o.h5ad", "--obs-filter", "bulk_labels ==== 'x'")
""",
)
case(
    "item10-soma-filter-column",
    "open_soma with a filter on an unknown column",
    "error",
    r"obs_value_filter|nosuch",
    """
soma_experiment(cells(40))
scgpt.data.open_soma("exp", obs_value_filter="nosuch == 1")
""",
)
case(
    "item10-soma-missing-s3",
    "scgpt embed --input s3://... that cannot be opened",
    "error",
    r"s3://",
    """
cli("embed", "--model", "demo", "--input", "s3://scgpt-battery-no-such-bucket/exp", "--output", "o.h5ad",
    "--soma-config", "vfs.s3.region=us-west-2", "vfs.s3.no_sign_request=true", "vfs.s3.connect_max_tries=1",
    "vfs.s3.connect_timeout_ms=2000")
""",
    timeout=180,
)
case(
    "item10-soma-embed-copy",
    "tl.embed(copy=True) on a SOMA matrix",
    "error",
    r"copy|memory|SOMA",
    """
soma_experiment(cells(40))
a = scgpt.data.open_soma("exp")
scgpt.tl.embed(a, "demo", copy=True, max_length=32)
""",
)
case(
    "item10-soma-preprocess",
    "pp.preprocess on a SOMA matrix",
    "error",
    r"memory|SOMA|to_memory",
    """
soma_experiment(cells(40))
a = scgpt.data.open_soma("exp")
scgpt.pp.preprocess(a)
""",
)
case(
    "item10-integrate-layer",
    "integrate(layer='missing')",
    "error",
    r"layer.*missing",
    """
a = cells(100); a.obs["batch"] = np.where(np.arange(100) % 2, "x", "y")
scgpt.tl.integrate(a, "demo", batch_key="batch", layer="missing", max_steps=1)
""",
)
case(
    "item10-finetune-h5mu",
    "scgpt finetune --recipe multiomic with .h5mu input",
    "error",
    r"h5mu|MuData|multiomic",
    """
import shutil, pathlib
src = pathlib.Path(scgpt.__file__).parents[2] / "tests" / "fixtures" / "muon_rna_atac_1000cells.h5mu"
if not src.exists():
    import mudata as md
    md.MuData({"rna": cells(50), "prot": cells(50)[:, :10].copy()}).write("m.h5mu")
else:
    shutil.copy(src, "m.h5mu")
cli("finetune", "--model", "demo", "--input", "m.h5mu", "--output", "out", "--recipe", "multiomic", "--max-steps", "1")
""",
)
case(
    "item10-finetune-help",
    "scgpt finetune --help: no task line ends in 'needs '",
    "ok",
    "",
    """
from scgpt.cli import build_parser
text = build_parser()[1]["finetune"].format_help()
bad = [l for l in text.splitlines() if l.rstrip().endswith("needs")]
check(not bad, f"help lines ending in 'needs': {bad}")
""",
)
case(
    "item10-predict-none",
    "predict_perturbation(adata, model, None)",
    "error",
    r"perturbations",
    SCREEN
    + """
gen = scgpt.model.ScGPT.from_pretrained("demo").finetune("perturbation", screen, max_steps=1, batch_size=16)
scgpt.tl.predict_perturbation(screen, gen, None)
""",
)
case(
    "item10-attention-layers",
    "infer_grn(method='attention', layers=99)",
    "error",
    r"layers.*99",
    """
a = cells(60)
scgpt.tl.infer_grn(a, "demo", method="attention", layers=99, n_top_genes=30)
""",
)
case(
    "item10-attention-heads",
    "infer_grn(method='attention', heads=[0, 99])",
    "error",
    r"heads.*99",
    """
a = cells(60)
scgpt.tl.infer_grn(a, "demo", method="attention", heads=[0, 99], n_top_genes=30)
""",
)
case(
    "item10-index-n-neighbors-0",
    "a saved reference index with n_neighbors=0",
    "error",
    r"n_neighbors",
    REF
    + """
meta = json.loads(open("idx/reference.json").read())
meta["n_neighbors"] = 0
open("idx/reference.json", "w").write(json.dumps(meta))
scgpt.tl.annotate(qry, "demo", method="knn", reference="idx", max_length=64)
""",
)

# --- the minor list
case(
    "m1-n-neighbors-above-reference",
    "annotate(method='knn') with n_neighbors above the reference size",
    "error|warning",
    r"n_neighbors",
    """
ref, qry = cells(30), cells(40, start=300)
rng = np.random.default_rng(0)
ref.obsm["X"] = rng.normal(size=(30, 8)); qry.obsm["X"] = rng.normal(size=(40, 8))
scgpt.tl.annotate(qry, reference=ref, labels_key="bulk_labels", method="knn", use_rep="X", n_neighbors=100)
check(qry.obs["scgpt_celltype"].nunique() > 1, "every cell got the same label")
""",
)
case(
    "m2-min-confidence-above-1",
    "annotate(min_confidence=1.5)",
    "error",
    r"min_confidence",
    """
ref, qry = cells(100), cells(40, start=300)
rng = np.random.default_rng(0)
ref.obsm["X"] = rng.normal(size=(100, 8)); qry.obsm["X"] = rng.normal(size=(40, 8))
scgpt.tl.annotate(qry, reference=ref, labels_key="bulk_labels", method="knn", use_rep="X", min_confidence=1.5)
""",
)
case(
    "m3-combination-order",
    "a screen labelling one combination both 'A+B' and 'B+A' (two perturbations to every tool)",
    "error",
    r"B\+A|A\+B",
    """
import anndata, numpy as np, pandas as pd
screen = anndata.AnnData(np.ones((6, 3), np.float32))
screen.obs["perturbation"] = ["control", "control", "A+B", "A+B", "B+A", "B+A"]
scgpt.data.perturbation_labels(screen)
""",
)
case(
    "m4-train-leakage",
    "perturbation_baseline(train=) containing the perturbations to predict",
    "error|warning",
    r"train",
    SCREEN
    + """
labels = sorted(set(screen.obs["perturbation"]) - {"control"})
scgpt.tl.perturbation_baseline(screen, labels[:2], method="train_mean", train=labels)
""",
)
case(
    "m4b-evaluate-leakage",
    "evaluate_perturbation of predictions trained on the evaluated perturbations",
    "error|warning",
    r"train",
    SCREEN
    + """
labels = sorted(set(screen.obs["perturbation"]) - {"control"})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pred = scgpt.tl.perturbation_baseline(screen, labels[:2], method="train_mean", train=labels)
scgpt.tl.evaluate_perturbation(screen, pred)
""",
)
case(
    "m5-n-components-0",
    "perturbation_baseline(method='linear', n_components=0)",
    "error",
    r"n_components",
    SCREEN
    + """
labels = sorted(set(screen.obs["perturbation"]) - {"control"})
scgpt.tl.perturbation_baseline(screen, labels[:2], method="linear", n_components=0)
""",
)
case(
    "m6-n-top-genes-negative",
    "pp.highly_variable_genes(n_top_genes=-5)",
    "error",
    r"n_top_genes",
    """
a = cells(100)
scgpt.pp.highly_variable_genes(a, n_top_genes=-5)
""",
)
case(
    "m6b-integrate-n-top-genes-negative",
    "integrate(n_top_genes=-5)",
    "error",
    r"n_top_genes",
    """
a = cells(100); a.obs["batch"] = np.where(np.arange(100) % 2, "x", "y")
scgpt.tl.integrate(a, "demo", batch_key="batch", n_top_genes=-5, max_steps=1, batch_size=16)
""",
)
case(
    "m7-no-programs",
    "gene_programs that ends with 0 programs",
    "warning",
    r"program",
    """
a = cells(100)
scgpt.tl.gene_programs(a, "demo", min_size=500)
""",
)
case(
    "m8-enrich-background",
    "enrich_programs with a background lacking the programs' genes",
    "error|warning",
    r"background",
    """
a = cells(100)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    scgpt.tl.gene_programs(a, "demo", min_size=3, resolution=10)
programs = set(a.var_names[a.var["scgpt_program"].notna()])
background = [g for g in a.var_names if g not in programs]
scgpt.tl.enrich_programs(a, gene_sets="hallmark", background=background)
""",
)
case(
    "m9-modality-order",
    "integrate(modalities=('prot', 'rna')) does not train proteins as genes",
    "error",
    r"rna|modalit",
    """
m = scgpt.datasets.pbmc_cite_seq()
scgpt.tl.integrate(m, "demo", modalities=("prot", "rna"), max_steps=1, batch_size=16, n_top_genes=50)
""",
)
case(
    "m10-zero-shot-batch-key",
    "zero-shot integrate without a batch_key (it does not use one)",
    "ok",
    "",
    """
a = cells(60)
scgpt.tl.integrate(a, "demo", mode="zero_shot", max_length=32)
check(a.obsm["X_scGPT_integrated"].shape == (60, 128))
""",
)
case(
    "m11-embed-input-is-output",
    "scgpt embed --input X.zarr --output X.zarr refuses before computing",
    "error",
    r"output",
    """
cells(300).write_zarr("c.zarr")
t = time.perf_counter()
try:
    cli("embed", "--model", "demo", "--input", "c.zarr", "--output", "c.zarr", "--max-length", "32")
finally:
    check(time.perf_counter() - t < 3, f"refused after computing everything ({time.perf_counter() - t:.1f} s)")
""",
)
case(
    "m12-evaluate-nan-predictions",
    "evaluate_annotation with NaN predictions counts them",
    "ok",
    "",
    """
a = cells(100)
a.obs["pred"] = a.obs["bulk_labels"].astype(object)
a.obs.loc[a.obs_names[:50], "pred"] = np.nan
df = scgpt.tl.evaluate_annotation(a, labels_key="bulk_labels", key="pred")
check(abs(df.loc["overall", "accuracy"] - 0.5) < 1e-9, f"accuracy {df.loc['overall', 'accuracy']} (0.5 expected)")
""",
)
case(
    "m13-official-over-native",
    "an official folder copied by hand over a native one",
    "error|warning",
    r"model\.pt|best_model\.pt|differ|stale",
    """
import shutil, torch
m = scgpt.model.ScGPT.from_pretrained("demo")
m.save("folder")
other = scgpt.model.ScGPT.from_pretrained("demo")
with torch.no_grad():
    for p in other.net.parameters():
        p.mul_(1.5)
other.save_pretrained("official")
time.sleep(1.1)
for f in ("args.json", "vocab.json", "best_model.pt"):
    shutil.copy(f"official/{f}", f"folder/{f}")
loaded = scgpt.model.ScGPT.from_pretrained("folder")
want = dict(other.net.state_dict())
check(all(torch.equal(v, want[k]) for k, v in loaded.net.state_dict().items()), "the stale model.pt was loaded")
""",
    owner="item 4 (official folder over a native one)",
)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", nargs="+", help="run only the cases whose id contains one of these")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the cases")
    parser.add_argument("--json", help="also write the outcomes to this file")
    parser.add_argument("--src", help="the source tree to test (a folder holding scgpt/); default: PYTHONPATH")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    args = parser.parse_args(argv)
    cases = [c for c in C if not args.k or any(k in c.id for k in args.k)]
    env = {**os.environ, **({"PYTHONPATH": os.path.abspath(args.src)} if args.src else {})}
    where = subprocess.run(
        [args.python, "-c", "import os, scgpt; print(os.path.dirname(scgpt.__file__))"],
        capture_output=True, text=True, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"scgpt from {where}; {len(cases)} cases", flush=True)
    rows = []
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_case, c, args.python, args.src) for c in cases]
        for c, future in zip(cases, futures, strict=True):
            cls, reason, seconds = future.result()
            owner = f" [{c.owner}]" if c.owner else ""
            print(f"{cls:>14}  {c.id:<36} {seconds:6.1f}s  {reason.splitlines()[0][:160]}{owner}", flush=True)
            rows.append({"id": c.id, "title": c.title, "class": cls, "reason": reason, "owner": c.owner})
    mine = [r for r in rows if not r["owner"]]
    other = [r for r in rows if r["owner"]]
    print(f"\nsummary ({where}, {time.perf_counter() - start:.0f} s)")
    print(f"{'cases':<28}" + "".join(f"{k:>15}" for k in CLASSES) + f"{'total':>8}")
    for name, group in (("this branch's items", mine), ("other branch's items", other), ("all", rows)):
        print(
            f"{name:<28}" + "".join(f"{sum(r['class'] == k for r in group):>15}" for k in CLASSES) + f"{len(group):>8}"
        )
    counts = {k: sum(r["class"] == k for r in rows) for k in CLASSES}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": counts, "cases": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
