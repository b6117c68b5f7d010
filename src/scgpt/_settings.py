"""Package settings (default model, device, progress bars). No heavy imports here."""

from __future__ import annotations

import os
from pathlib import Path

ENV_MODEL = "SCGPT_MODEL"
ENV_DEVICE = "SCGPT_DEVICE"


class ScGPTSettings:
    """Global options of :mod:`scgpt`.

    Attributes
    ----------
    default_model
        Model used when a function gets ``model=None``: a path to an official scGPT folder, or
        ``"demo"``. Defaults to the ``SCGPT_MODEL`` environment variable.
    device
        Default device (``"cuda"``, ``"mps"``, ``"cpu"`` …); ``None`` picks the best available.
        Defaults to the ``SCGPT_DEVICE`` environment variable.
    progress
        Show progress bars on long work.
    """

    def __init__(self) -> None:
        self._default_model: str | None = None
        self._device: str | None = None
        self.progress: bool = True

    @property
    def default_model(self) -> str | None:
        return self._default_model if self._default_model is not None else os.environ.get(ENV_MODEL) or None

    @default_model.setter
    def default_model(self, value: str | os.PathLike | None) -> None:
        self._default_model = None if value is None else (value if value == "demo" else str(Path(value).expanduser()))

    @property
    def device(self) -> str | None:
        return self._device if self._device is not None else os.environ.get(ENV_DEVICE) or None

    @device.setter
    def device(self, value: str | None) -> None:
        self._device = value

    def __repr__(self) -> str:
        return f"ScGPTSettings(default_model={self.default_model!r}, device={self.device!r}, progress={self.progress})"


settings = ScGPTSettings()
