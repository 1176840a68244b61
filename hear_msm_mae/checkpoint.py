"""Reading and writing MSM-MAE checkpoints, safely.

Accepted files: the official training layout `{'model': state_dict, 'epoch', 'args', ...}`, a bare
state dict (encoder only or with decoder), and this project's checkpoints, which add `'config'` (the
MAEConfig as a dict) and `'norm_stats'` (mean/std of the pre-training log-mels). Files are read with
torch's weights-only unpickler: tensors, plain containers and `argparse.Namespace`, nothing that could
run code. The model configuration comes from the file itself: stored config, then stored args and the
official folder name `<F>x<T>p<pf>x<pt>_<name>/checkpoint-N.pth`, then the state-dict shapes.
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .atomic import atomic_write
from .frontend import N_MELS
from .model import MAEConfig, MaskedAutoencoder

SAFE_GLOBALS = [argparse.Namespace]
FOLDER_NAME = re.compile(r"(\d+)x(\d+)p(\d+)x(\d+)")
STATE_DICT_PREFIXES = ("module.", "backbone.", "_orig_mod.")


@dataclass
class Checkpoint:
    path: Path
    config: MAEConfig
    state_dict: Dict[str, torch.Tensor]
    norm_stats: Optional[Tuple[float, float]]  # (mean, std) of the pre-training log-mels, if stored
    contents: Dict[str, Any]  # everything else the file holds (epoch, args, optimizer, ...)

    @property
    def has_decoder(self) -> bool:
        return "decoder_embed.weight" in self.state_dict


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
        raise ValueError(f"{path}: refused to load: it holds Python objects other than tensors, plain containers "
                         f"and argparse.Namespace, and unpickling them could run code. Loader said: "
                         f"{str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupted or truncated?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(contents, dict):
        raise ValueError(f"{path}: expected a dict (a state dict or {{'model': state_dict, ...}}), "
                         f"found {type(contents).__name__}")
    return contents


def _split_contents(path: Path, contents: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    if isinstance(contents.get("model"), dict):
        state_dict, rest = contents["model"], {k: v for k, v in contents.items() if k != "model"}
    elif contents and all(isinstance(v, torch.Tensor) for v in contents.values()):
        state_dict, rest = contents, {}
    else:
        raise ValueError(f"{path}: holds neither a state dict nor {{'model': state_dict, ...}} "
                         f"(top-level keys: {sorted(map(str, contents))[:10]})")
    for prefix in STATE_DICT_PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    if "patch_embed.proj.weight" not in state_dict or "pos_embed" not in state_dict:
        raise ValueError(f"{path}: not an MSM-MAE state dict: it has no 'patch_embed.proj.weight' or "
                         f"'pos_embed' (keys start with: {sorted(state_dict)[:5]})")
    return state_dict, rest


def _stored_input_size(path: Path, rest: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    args = rest.get("args")
    value = getattr(args, "input_size", None) if args is not None else None
    if isinstance(value, str):
        value = [int(v) for v in value.split("x")]
    if value is not None:
        return tuple(int(v) for v in value)
    match = FOLDER_NAME.search(path.parent.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _count_blocks(state_dict: Dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(k.split(".")[1]) for k in state_dict if k.startswith(prefix + ".")}
    return max(indices) + 1 if indices else 0


def infer_config(path: Path, state_dict: Dict[str, torch.Tensor], rest: Dict[str, Any]) -> MAEConfig:
    """MAEConfig for a state dict: stored config first, then args / folder name, then shapes."""
    if isinstance(rest.get("config"), dict):
        known = {f.name for f in fields(MAEConfig)}
        return MAEConfig(**{k: v for k, v in rest["config"].items() if k in known})
    embed_dim, _, pf, pt = state_dict["patch_embed.proj.weight"].shape
    use_cls_token = "cls_token" in state_dict
    num_patches = state_dict["pos_embed"].shape[1] - int(use_cls_token)
    input_size = _stored_input_size(path, rest)
    if input_size is None:  # 80 mel bins; the time width follows from the number of patches
        gf = N_MELS // pf
        if num_patches % gf:
            raise ValueError(f"{path}: {num_patches} patches do not fit {gf} frequency patches of {pf} bins")
        input_size = (N_MELS, num_patches // gf * pt)
    args = rest.get("args")
    kwargs = dict(input_size=input_size, patch_size=(pf, pt), embed_dim=embed_dim,
                  depth=_count_blocks(state_dict, "blocks"), num_heads=embed_dim // 64,
                  mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
                  use_cls_token=use_cls_token, norm_pix_loss=bool(getattr(args, "norm_pix_loss", False)))
    if "decoder_embed.weight" in state_dict:
        width = state_dict["decoder_embed.weight"].shape[0]
        kwargs.update(decoder_embed_dim=width, decoder_depth=_count_blocks(state_dict, "decoder_blocks"),
                      decoder_num_heads=max(width // 64, 1))
    try:
        config = MAEConfig(**kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: inconsistent model configuration: {e}") from None
    if config.num_patches != num_patches:
        raise ValueError(f"{path}: input size {config.input_size} with patches {config.patch_size} makes "
                         f"{config.num_patches} patches, but pos_embed has {num_patches}")
    return config


def load_checkpoint(path) -> Checkpoint:
    path = Path(path)
    contents = read_file(path)
    state_dict, rest = _split_contents(path, contents)
    config = infer_config(path, state_dict, rest)
    stats = rest.get("norm_stats")
    norm_stats = (float(stats["mean"]), float(stats["std"])) if isinstance(stats, dict) else None
    return Checkpoint(path, config, state_dict, norm_stats, rest)


def build_model(checkpoint: Checkpoint, decoder: bool = False, device="cpu",
                dtype: torch.dtype = torch.float32) -> MaskedAutoencoder:
    """A MaskedAutoencoder with the checkpoint's weights on `device` in `dtype` (decoder if asked for).

    The model is built on the meta device and takes copies of the loaded tensors, so the weights
    are allocated once, in their final place, and never alias the memory-mapped file.
    """
    if decoder and not checkpoint.has_decoder:
        raise ValueError(f"{checkpoint.path}: has no decoder weights (encoder-only checkpoint)")
    with torch.device("meta"):
        model = MaskedAutoencoder(checkpoint.config, decoder=decoder)
    expected = model.state_dict()
    given = {k: v for k, v in checkpoint.state_dict.items() if k in expected}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(k for k in checkpoint.state_dict
                        if k not in expected and (decoder or not _is_decoder_key(k)))
    wrong_shape = [f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                   for k, v in given.items() if v.shape != expected[k].shape]
    problems = ([f"missing {missing[:8]}"] if missing else []) + \
               ([f"unexpected {unexpected[:8]}"] if unexpected else []) + wrong_shape[:8]
    if problems:
        raise ValueError(f"{checkpoint.path}: weights do not fit the configuration {checkpoint.config}: "
                         + "; ".join(problems))
    model.load_state_dict({k: v.to(device, dtype, copy=True) for k, v in given.items()}, assign=True)
    return model


def _is_decoder_key(key: str) -> bool:
    return key.startswith("decoder_") or key == "mask_token"


def save_checkpoint(path, model: MaskedAutoencoder, *, norm_stats: Optional[Tuple[float, float]] = None,
                    **extra: Any) -> None:
    """Write `{'model', 'config', 'norm_stats', **extra}` atomically (temporary file, then rename)."""
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    contents = {"model": state_dict, "config": model.config.to_dict(), **extra}
    if norm_stats is not None:
        contents["norm_stats"] = {"mean": float(norm_stats[0]), "std": float(norm_stats[1])}
    with atomic_write(path) as f:
        torch.save(contents, f)
