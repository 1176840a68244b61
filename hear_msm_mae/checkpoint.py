"""Reading checkpoints safely, by family, and loading weights strictly.

Files are read with torch's weights-only unpickler: tensors, plain containers and the few classes
the official files hold, each named by the family whose files need it (`Family.safe_globals`:
`argparse.Namespace` in training checkpoints, `pathlib.PosixPath` in Audio-MAE's args), nothing that
could run code; a Hugging Face model folder's safetensors weights hold no code at all (hf_folder.py).
The file's family (families/) reads it into a
`Checkpoint`: the encoder's configuration and weights in this package's names. Loading is strict:
every weight a module expects must be there with its shape, and nothing else may be left.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from . import hf_folder
from .families import FAMILIES, detect_family, get_family
from .family import Checkpoint, Family

# every class some family's official files pickle, in the order the families are listed
SAFE_GLOBALS = list(dict.fromkeys(g for family in FAMILIES.values() for g in family.safe_globals))


def read_file(path) -> Dict[str, Any]:
    """The contents of checkpoint `path`: a Hugging Face model folder (hf_folder.read), else the unpickled file."""
    path = Path(path)
    folder = hf_folder.folder_of(path)
    return read_pickle(path) if folder is None else hf_folder.read(folder, path, read_pickle)


def read_pickle(path: Path) -> Dict[str, Any]:
    """Unpickle `path` with torch's weights-only loader; refuse anything that could run code."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's format; older pickles cannot be memory-mapped
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            # Memory-mapped: only the tensors that are used (e.g. not the decoder) are ever read.
            contents = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        allowed = ", ".join(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                            for g in SAFE_GLOBALS)
        raise ValueError(f"{path}: refused to load: it holds Python objects other than tensors, plain containers "
                         f"and {allowed}, and unpickling them could run code. Loader said: {_refusal(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupted or truncated?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(contents, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or {{'model': state_dict, ...}}), "
                         f"found {type(contents).__name__}")
    return contents


def _refusal(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused (the line of its message between its advice paragraphs)."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.startswith("Check the documentation")]
    return lines[-1].split(" Please use")[0] if lines else type(error).__name__


def load_checkpoint(path, family: Optional[Union[str, Family]] = None, unit_frames: Optional[int] = None
                    ) -> Checkpoint:
    """Read `path` as a checkpoint of `family` (detected from the file when None).

    A file that only other families claim is refused with an error naming them.
    `unit_frames`: input width for families whose unit length is free (AST, BEATs).
    """
    path = Path(path)
    contents = read_file(path)
    if family is None:
        family = detect_family(path, contents)
    elif isinstance(family, str):
        family = get_family(family)
    if not family.looks_like(contents):
        others = [f for f in FAMILIES.values() if f is not family and f.looks_like(contents)]
        if others:
            raise ValueError(f"{path}: this looks like a {' or '.join(f.title for f in others)} checkpoint, not "
                             f"{family.title}; load it with {' or '.join(f.module for f in others)}")
    checkpoint = family.read(path, contents, unit_frames=unit_frames)
    if unit_frames is not None and unit_frames != checkpoint.grid.unit_frames:
        raise ValueError(f"unit_frames is fixed at {checkpoint.grid.unit_frames} by this {family.title} "
                         f"checkpoint's position table, got {unit_frames}")
    return checkpoint


def load_strict(module: nn.Module, state_dict: Dict[str, torch.Tensor], what: str, device="cpu",
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load `state_dict` into `module` (built on the meta device) strictly, on `device` in `dtype`; an error
    names `what` (the file and its configuration) and lists what does not fit."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                   for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = ([f"missing {missing[:8]}"] if missing else []) + \
               ([f"unexpected {unexpected[:8]}"] if unexpected else []) + wrong_shape[:8]
    if problems:
        raise ValueError(f"{what}: weights do not fit: " + "; ".join(problems))
    # copies: weights allocated once in their final place, never aliasing the memory-mapped file
    module.load_state_dict({k: v.to(device, dtype, copy=True) for k, v in state_dict.items()}, assign=True)
    return module


def build_encoder(checkpoint: Checkpoint, device="cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The checkpoint's encoder (its family's: VisionTransformer or BEATsEncoder) with its weights, on
    `device` in `dtype`, in eval mode."""
    with torch.device("meta"):
        encoder = checkpoint.family.encoder(checkpoint.config)
    what = f"{checkpoint.path} (configuration {checkpoint.config})"
    return load_strict(encoder, checkpoint.state_dict, what, device, dtype).eval()
