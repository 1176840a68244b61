"""Reading a Hugging Face `save_pretrained` folder without importing transformers.

A folder (a hub snapshot, e.g. facebook/hubert-base-ls960) holds config.json (the architecture),
optionally preprocessor_config.json (the input's sample rate and normalisation) and the weights:
model.safetensors (a header of tensor names, dtypes, shapes and byte ranges, then the raw bytes: nothing
to execute), or pytorch_model.bin on older revisions (a pickled state dict, read by torch's weights-only
unpickler like every other checkpoint). load_model takes the folder itself, its config.json, or its weights
file (then the folder is the file's parent).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def folder_of(path: Path) -> Optional[Path]:
    """The Hugging Face folder that `path` names (the folder, its config.json, a .safetensors file, or a .bin file
    beside a config.json), or None for any other file."""
    if path.is_dir():
        return path
    if path.name == CONFIG or path.suffix == ".safetensors" or \
            (path.suffix == ".bin" and (path.parent / CONFIG).is_file()):
        return path.parent
    return None


def _json(path: Path) -> Dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file (corrupted or truncated?): {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _safetensors(path: Path) -> Dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file (corrupted or truncated?): {e}") from None


def read(folder: Path, path: Path, read_pickle: Callable[[Path], Dict[str, Any]]) -> Dict[str, Any]:
    """{'config.json': dict, 'preprocessor_config.json': dict or None, 'model': state dict} of the folder; the
    weights are `path` where it is a weights file, else the folder's model.safetensors or pytorch_model.bin
    (read with `read_pickle`)."""
    weights = path if path.is_file() and path.name != CONFIG else \
        next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no model weights ({' or '.join(WEIGHTS)}) in this folder")
    state_dict = _safetensors(weights) if weights.suffix == ".safetensors" else read_pickle(weights)
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{weights}: no {CONFIG} beside it: a Hugging Face model needs its configuration")
    preprocessor = folder / PREPROCESSOR
    return {CONFIG: _json(folder / CONFIG), PREPROCESSOR: _json(preprocessor) if preprocessor.is_file() else None,
            "model": state_dict}
