"""Package settings (default model, device, progress bars). No heavy imports here."""

from __future__ import annotations

import os
from pathlib import Path

ENV_MODEL = "SCGPT_MODEL"
ENV_DEVICE = "SCGPT_DEVICE"
ENV_CACHE = "SCGPT_CACHE"
ENV_OFFLINE = "SCGPT_OFFLINE"
ENV_HF_OFFLINE = "HF_HUB_OFFLINE"  # honoured too: one switch for every model hub on a machine without network
_TRUE = {"1", "true", "yes", "on"}


class ScGPTSettings:
    """Global options of :mod:`scgpt`.

    Attributes
    ----------
    default_model
        Model used when a function gets ``model=None``: a path to a model folder, the name of a published
        model (``"scGPT_human"``, see :func:`scgpt.hub.list_models`; downloaded on first use) or ``"demo"``.
        Defaults to the ``SCGPT_MODEL`` environment variable.
    device
        Default device (``"cuda"``, ``"mps"``, ``"cpu"`` …); ``None`` picks the best available.
        Defaults to the ``SCGPT_DEVICE`` environment variable.
    progress
        Show progress bars on long work.
    cache_dir
        Where published models are downloaded to (:func:`scgpt.hub.download`) and file hashes are cached.
        Defaults to the ``SCGPT_CACHE`` environment variable, else the platform's user cache folder
        (``~/.cache/scgpt`` on Linux).
    offline
        Never download: a published model that is not in ``cache_dir`` is an error that says which files to
        fetch by hand and where to put them. Defaults to ``True`` when the ``SCGPT_OFFLINE`` or
        ``HF_HUB_OFFLINE`` environment variable is ``1`` (or ``true``, ``yes``, ``on``).
    """

    def __init__(self) -> None:
        self._default_model: str | None = None
        self._device: str | None = None
        self._cache_dir: Path | None = None
        self._offline: bool | None = None
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

    @property
    def cache_dir(self) -> Path:
        if self._cache_dir is not None:
            return self._cache_dir
        env = os.environ.get(ENV_CACHE)
        if env:
            return Path(env).expanduser()
        import platformdirs

        return Path(platformdirs.user_cache_dir("scgpt", appauthor=False))

    @cache_dir.setter
    def cache_dir(self, value: str | os.PathLike | None) -> None:
        self._cache_dir = None if value is None else Path(value).expanduser()

    @property
    def offline(self) -> bool:
        if self._offline is not None:
            return self._offline
        return any(os.environ.get(k, "").strip().lower() in _TRUE for k in (ENV_OFFLINE, ENV_HF_OFFLINE))

    @offline.setter
    def offline(self, value: bool | None) -> None:
        self._offline = None if value is None else bool(value)

    def __repr__(self) -> str:
        return (
            f"ScGPTSettings(default_model={self.default_model!r}, device={self.device!r}, progress={self.progress}, "
            f"cache_dir={_home_as_tilde(self.cache_dir)!r}, offline={self.offline})"
        )


def _home_as_tilde(path: Path) -> str:
    """``path`` with the home folder written ``~``, so that a printed setting names no user (notebook outputs)."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


settings = ScGPTSettings()
