"""Reading and writing model files: official scGPT folders and this package's own format."""

from ._keymap import PRETRAINING_ONLY_KEYS, to_official, to_ours
from ._native import MODEL_FILE, NativeCheckpoint, is_native, load_native, save_native
from ._official import (
    CheckpointError,
    CheckpointWarning,
    LoadReport,
    OfficialCheckpoint,
    config_from_official,
    load_official,
    load_state_dict_reported,
    official_args,
    official_state_dict,
    read_args,
    read_official,
    read_state_dict,
    save_official,
)

__all__ = [
    "MODEL_FILE",
    "NativeCheckpoint",
    "is_native",
    "load_native",
    "save_native",
    "PRETRAINING_ONLY_KEYS",
    "CheckpointError",
    "CheckpointWarning",
    "LoadReport",
    "OfficialCheckpoint",
    "config_from_official",
    "load_official",
    "load_state_dict_reported",
    "official_args",
    "official_state_dict",
    "read_args",
    "read_official",
    "read_state_dict",
    "save_official",
    "to_official",
    "to_ours",
]
