"""Model cards: a ``README.md`` beside the weights saying what the model is and where it came from.

Written by :meth:`scgpt.model.ScGPT.save_pretrained` and :meth:`~scgpt.model.ScGPT.save` (so also by
``scgpt pretrain`` and ``scgpt finetune``), in the layout of Hugging Face / scvi-hub model cards: a front
matter of simple ``key: value`` lines that tools index (``base_model``, ``license``, ``tags``, ...), then
sections for people. :func:`read_card` reads the front matter back; :func:`scgpt.hub.list_models` with
``local=`` lists the cards found in a folder of models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
MARKER = "<!-- model card written by scgpt-scverse -->"
_FRONT = (
    "library_name", "license", "base_model", "base_model_sha256", "task", "tags", "scgpt_version", "created",
    "n_layers", "d_model", "n_heads", "vocab_size", "format",
)  # fmt: skip


def is_card(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a model card written by this package (one written by a person is never replaced)."""
    try:
        with open(path, encoding="utf-8") as f:
            return MARKER in f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def _value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    rows = [(k, v) for k, v in rows if v is not None and v != "" and v != []]
    if not rows:
        return ["(not recorded)", ""]
    out = ["| | |", "|---|---|"]
    for k, v in rows:
        text = ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
        out.append(f"| {k} | {text.replace('|', '/')} |")
    return [*out, ""]


def _shorten(items: list, n: int = 20) -> list:
    return list(items[:n]) + ([f"... ({len(items)} in all)"] if len(items) > n else [])


def render_card(info: dict[str, Any]) -> str:
    """The ``README.md`` text of a model card from plain data (see :meth:`scgpt.model.ScGPT.card_info`).

    Parameters
    ----------
    info
        ``name``, ``base_model`` (name or path, and ``base_model_sha256``, ``base_licence``,
        ``base_citation`` when known), ``task``, ``architecture`` (dict), ``training_data`` (dict),
        ``recipe`` (dict), ``history`` (dict of lists), ``evaluation`` (dict), ``versions`` (dict),
        ``format``, ``created``.

    Returns
    -------
    Markdown with a front matter.
    """
    arch = info.get("architecture") or {}
    base = info.get("base_model")
    task = info.get("task") or "none recorded"
    licence = info.get("base_licence")
    front = {
        "library_name": "scgpt-scverse",
        "license": "mit" if licence and licence.lower().startswith("mit") else "other",
        "base_model": base,
        "base_model_sha256": info.get("base_model_sha256"),
        "task": task,
        "tags": ["single-cell", "scgpt", "scverse", "anndata"],
        "scgpt_version": (info.get("versions") or {}).get("scgpt-scverse"),
        "created": info.get("created"),
        "n_layers": arch.get("n_layers"),
        "d_model": arch.get("d_model"),
        "n_heads": arch.get("n_heads"),
        "vocab_size": arch.get("vocab_size"),
        "format": info.get("format"),
    }
    lines = ["---", *(f"{k}: {_value(front[k])}" for k in _FRONT if front.get(k) is not None), "---", MARKER, ""]
    name = info.get("name") or "scGPT model"
    lines += [f"# {name}", ""]
    trained = f"trained for {task!r}" if info.get("task") else "no training recorded"
    what = f"An scGPT model ({trained})" + (f", from `{base}`" if base else "") + ", saved by scgpt-scverse."
    lines += [what, ""]
    lines += ["## Load it", "", "```python", "import scgpt", "", "model = scgpt.model.ScGPT.from_pretrained("
              f"{_value(str(info.get('path') or name))})", "```", ""]  # fmt: skip

    lines += ["## Base model", ""]
    lines += _table([
        ("name", base or "none (trained from scratch)"),
        ("weights SHA-256", info.get("base_model_sha256") or ("unknown" if base else None)),
        ("licence", licence),
    ])  # fmt: skip

    lines += ["## Architecture", ""]
    lines += _table([
        ("layers x width", f"{arch.get('n_layers')} x {arch.get('d_model')}" if arch else None),
        ("attention heads", arch.get("n_heads")),
        ("vocabulary", f"{arch['vocab_size']:,} tokens" if arch.get("vocab_size") else None),
        ("parameters", f"{arch['n_params']:,}" if arch.get("n_params") else None),
        ("heads", arch.get("heads")),
    ])  # fmt: skip

    data = info.get("training_data") or {}
    lines += ["## Training data", ""]
    lines += _table([
        ("cell-type labels", f"obs[{data['labels_key']!r}]" if data.get("labels_key") else None),
        ("classes", _shorten(data.get("label_categories") or [])),
        ("batches", f"obs[{data['batch_key']!r}]: " + ", ".join(map(str, _shorten(data.get("batch_categories") or [])))
         if data.get("batch_key") else None),
        ("gene panel", f"{data['n_tokens']:,} genes" if data.get("n_tokens") else None),
        ("cells", data.get("n_cells")),
    ])  # fmt: skip

    recipe = info.get("recipe") or {}
    history = info.get("history") or {}
    lines += ["## Objectives and hyperparameters", ""]
    objectives = recipe.get("objectives")
    rows: list[tuple[str, Any]] = [
        ("objectives", ", ".join(f"{k} (weight {v})" for k, v in objectives.items()) if isinstance(objectives, dict)
         else objectives),
    ]  # fmt: skip
    rows += [(k, v) for k, v in recipe.items() if k != "objectives" and isinstance(v, str | int | float | bool)]
    epochs = max((len(v) for v in history.values() if isinstance(v, list)), default=0)
    rows.append(("epochs recorded", epochs or None))
    lines += _table(rows)

    lines += ["## Evaluation", ""]
    evaluation = dict(info.get("evaluation") or {})
    for key in ("train_loss", "val_loss"):
        values = [v for v in history.get(key, []) if isinstance(v, int | float)]
        if values:
            evaluation[f"{key} (last epoch)"] = f"{values[-1]:.4g}"
            if key == "val_loss":
                evaluation["val_loss (best epoch)"] = f"{min(values):.4g}"
    lines += _table(list(evaluation.items()))

    lines += ["## Software", ""]
    lines += _table(list((info.get("versions") or {}).items()))

    lines += ["## Licence and citation", ""]
    lines += [
        f"Weights derived from `{base}`, licensed {licence}." if base and licence else
        "The licence of these weights is whatever their author chose; the data they were trained on may carry "
        "their own terms.",
        "",
    ]  # fmt: skip
    if info.get("base_citation"):
        lines += [f"Cite the base model: {info['base_citation']}", ""]
    return "\n".join(lines)


def read_card(path: str | os.PathLike) -> dict[str, Any] | None:
    """The front matter of a model card written by this package (``None`` for other files)."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD_FILE
    if not is_card(path):
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    out: dict[str, Any] = {}
    if not lines or lines[0] != "---":
        return out
    for line in lines[1:]:
        if line == "---":
            break
        key, _, value = line.partition(": ")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def find_cards(folder: str | os.PathLike, *, depth: int = 2) -> list[Path]:
    """Model folders under ``folder`` (itself included, ``depth`` levels down) whose ``README.md`` is our card."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"local={str(folder)!r} is not a folder of models")
    found = []
    level = [root]
    for _ in range(depth + 1):
        found += [d for d in level if is_card(d / CARD_FILE)]
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    return found
