"""Reading and writing model files: official scGPT folders (and, privately, this package's ``model.pt``)."""

from ._official import (
    CheckpointError,
    CheckpointWarning,
    LoadReport,
    OfficialCheckpoint,
    load_official,
    read_official,
    save_official,
)

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "LoadReport",
    "OfficialCheckpoint",
    "load_official",
    "read_official",
    "save_official",
]
