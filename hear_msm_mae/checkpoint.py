"""Reading checkpoints safely, by family, and loading them strictly.

Files are read with torch's weights-only unpickler: tensors, plain containers and the few classes
the official files hold (`argparse.Namespace` in training checkpoints, `pathlib.PosixPath` in
Audio-MAE's args), nothing that could run code. The file's family (family.py) reads it into a
`Checkpoint`: the encoder's configuration and weights in this package's names. Loading is strict:
every weight the encoder expects must be there with its shape, and nothing else may be left.
"""
from __future__ import annotations

import argparse
import pathlib
import pickle
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .atomic import atomic_write
from .family import Checkpoint, Family, detect_family, get_family
from .model import MAEConfig, MaskedAutoencoder

SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath]


def read_file(path) -> Dict[str, Any]:
    """Unpickle `path` with torch's weights-only loader; refuse anything that could run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's format; older pickles cannot be memory-mapped
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            # Memory-mapped: only the tensors that are used (e.g. not the decoder) are ever read.
            contents = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused to load: it holds Python objects other than tensors, plain containers, "
                         f"argparse.Namespace and pathlib.PosixPath, and unpickling them could run code. Loader "
                         f"said: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupted or truncated?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(contents, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or {{'model': state_dict, ...}}), "
                         f"found {type(contents).__name__}")
    return contents


def load_checkpoint(path, family: Optional[Union[str, Family]] = None, unit_frames: Optional[int] = None
                    ) -> Checkpoint:
    """Read `path` as a checkpoint of `family` (detected from the file when None).

    A file that looks like another family's is refused with an error naming that family.
    `unit_frames`: input width for families whose unit length is free (AST, BEATs).
    """
    path = Path(path)
    contents = read_file(path)
    found = detect_family(contents)
    if isinstance(family, str):
        family = get_family(family)
    if family is None:
        if found is None:
            keys = sorted(map(str, contents))[:6]
            raise ValueError(f"{path}: not a checkpoint of any family this package knows (MSM-MAE, M2D, Audio-MAE, "
                             f"AST, BEATs); its top-level keys start with {keys}")
        family = found
    elif found is not None and found is not family:
        raise ValueError(f"{path}: this looks like a {found.title} checkpoint, not {family.title}; load it with "
                         f"{found.module} (or family={found.name!r})")
    checkpoint = family.read(path, contents, unit_frames=unit_frames)
    if unit_frames is not None and unit_frames != checkpoint.grid.unit_frames:
        raise ValueError(f"unit_frames is fixed at {checkpoint.grid.unit_frames} by this {family.title} "
                         f"checkpoint's position table, got {unit_frames}")
    return checkpoint


def _fill(module: nn.Module, state_dict: Dict[str, torch.Tensor], path: Path, config, device, dtype) -> nn.Module:
    """Load `state_dict` into `module` (built on meta) strictly; errors list what does not fit."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                   for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = ([f"missing {missing[:8]}"] if missing else []) + \
               ([f"unexpected {unexpected[:8]}"] if unexpected else []) + wrong_shape[:8]
    if problems:
        raise ValueError(f"{path}: weights do not fit the configuration {config}: " + "; ".join(problems))
    # copies: weights allocated once in their final place, never aliasing the memory-mapped file
    module.load_state_dict({k: v.to(device, dtype, copy=True) for k, v in state_dict.items()}, assign=True)
    return module


def build_encoder(checkpoint: Checkpoint, device="cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The checkpoint's encoder (its family's: VisionTransformer or BEATsEncoder) with its weights, on
    `device` in `dtype`, in eval mode."""
    with torch.device("meta"):
        encoder = checkpoint.family.encoder(checkpoint.config)
    return _fill(encoder, checkpoint.state_dict, checkpoint.path, checkpoint.config, device, dtype).eval()


def build_model(checkpoint: Checkpoint, decoder: bool = False, device="cpu",
                dtype: torch.dtype = torch.float32) -> MaskedAutoencoder:
    """An MSM-MAE MaskedAutoencoder with the checkpoint's weights (and decoder, if asked for)."""
    if not isinstance(checkpoint.config, MAEConfig):
        raise ValueError(f"{checkpoint.path}: a {checkpoint.family.title} checkpoint, not an MSM-MAE one")
    if decoder and not checkpoint.decoder_state_dict:
        raise ValueError(f"{checkpoint.path}: has no decoder weights (encoder-only checkpoint)")
    with torch.device("meta"):
        model = MaskedAutoencoder(checkpoint.config, decoder=decoder)
    weights = {**checkpoint.state_dict, **(checkpoint.decoder_state_dict if decoder else {})}
    return _fill(model, weights, checkpoint.path, checkpoint.config, device, dtype)


def save_checkpoint(path, model: MaskedAutoencoder, *, norm_stats=None, **extra: Any) -> None:
    """Write `{'model', 'config', 'norm_stats', **extra}` atomically (temporary file, then rename)."""
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    contents = {"model": state_dict, "config": model.config.to_dict(), **extra}
    if norm_stats is not None:
        contents["norm_stats"] = {"mean": float(norm_stats[0]), "std": float(norm_stats[1])}
    with atomic_write(path) as f:
        torch.save(contents, f)
