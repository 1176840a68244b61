"""What Dasheng and CED share: the AudioTransformer of their authors' code, its files and how they are read.

Both are ViTs over a 64-bin dB mel spectrogram: torchaudio's MelSpectrogram (16 kHz, periodic Hann window of
n_fft = 512 samples, 10-ms hop, centred frames, HTK mel scale over 0-8000 Hz without area normalisation,
power 2) and AmplitudeToDB(top_db=120) (FRONTEND), then `init_bn`, a BatchNorm2d over the 64 mel bins, then
a patch convolution (64x4 Dasheng, 16x16 CED) plus learned time (1, D, 1, gt) and frequency (1, D, gf, 1)
positions, pre-LN blocks with a fused qkv bias, exact GELU and LayerNorm eps 1e-6, a final norm, no prefix
token; tokens are frequency-major, as the shared ViT's.

A file is {'model': state dict, 'config': ...} or the bare state dict, in the reference's names. Read into
the shared ViT's:
- `front_end.0.spectrogram.window`, `front_end.0.mel_scale.fb` (torchaudio's persistent buffers) are checked
  against FRONTEND's and dropped: a file made with another front end is refused;
- `init_bn.1.*` in eval mode is a fixed affine map per mel bin, so it becomes the checkpoint's normalisation
  statistics, one per bin: (x - mean_f) / std_f, std_f = sqrt(running_var + 1e-5) / weight, mean_f =
  running_mean - bias * std_f. Padding frames are then 0 after it, as in CED's padded chunks;
  num_batches_tracked is dropped;
- `time_pos_embed` + `freq_pos_embed` become one frequency-major table `pos_embed` (1, gf * gt, D); a narrower
  unit takes its first columns, as the reference slices the time table;
- `outputlayer.*` (the AudioSet classifier: LayerNorm + Linear) is dropped.
Everything else must fit the ViT exactly (strict loading).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..family import Checkpoint, Family, model_weights
from ..frontend import LogMelConfig, LogMelSpectrogram
from ..encoders.vit import config_from_weights

FRONTEND = LogMelConfig(n_fft=512, n_mels=64, f_min=0.0, f_max=8000.0, mel_scale="htk", log="db", top_db=120.0)
# the reference constructors' front-end arguments, at the values FRONTEND computes
FRONTEND_ARGS = {"n_fft": FRONTEND.n_fft, "win_size": FRONTEND.n_fft, "hop_size": FRONTEND.hop_length,
                 "n_mels": FRONTEND.n_mels, "f_min": FRONTEND.f_min, "f_max": FRONTEND.f_max, "center": True,
                 "top_db": FRONTEND.top_db}
BATCHNORM_EPS = 1e-5  # torch's BatchNorm2d default, which init_bn keeps
BATCHNORM = "init_bn.1."


def weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    return model_weights(contents, "model")


def model_args(contents: Dict[str, Any]) -> Dict[str, Any]:
    """The model's constructor arguments in the file: a training config's `model_args`, a plain `config`, or a
    Hugging Face folder's config.json `encoder_kwargs` (hf_folder.py; Dasheng's DashengConfig)."""
    for config, key in ((contents.get("config"), "model_args"), (contents.get("config.json"), "encoder_kwargs")):
        if isinstance(config, dict):
            return config[key] if isinstance(config.get(key), dict) else config
    return {}


def looks_like(found: Dict[str, Any], patch: Tuple[int, int]) -> bool:
    """State dict `found` has separate time and frequency position tables, and patches of `patch` (bins, frames)."""
    kernel = found.get("patch_embed.proj.weight")
    return "time_pos_embed" in found and "freq_pos_embed" in found and isinstance(kernel, torch.Tensor) and \
        tuple(kernel.shape[2:]) == patch


def _take(path: Path, found: Dict[str, Any], key: str) -> torch.Tensor:
    if key not in found:
        raise ValueError(f"{path}: no {key!r} in this AudioTransformer file (its keys start with {sorted(found)[:5]})")
    return found.pop(key)


def _check_frontend(path: Path, found: Dict[str, Any], args: Dict[str, Any]) -> None:
    """Refuse a file whose front end (constructor arguments or stored buffers) is not FRONTEND; drop the buffers."""
    differing = {k: v for k, v in args.items() if k in FRONTEND_ARGS and v != FRONTEND_ARGS[k]}
    if differing:
        raise ValueError(f"{path}: front end {differing} is not the released one ({FRONTEND_ARGS}), which this "
                         "package computes")
    ours = LogMelSpectrogram(FRONTEND)
    buffers = {"front_end.0.spectrogram.window": ours.window, "front_end.0.mel_scale.fb": ours.mel_fbank.T}
    for key, expected in buffers.items():
        stored = found.pop(key, None)
        if stored is not None and (stored.shape != expected.shape or
                                   not torch.allclose(stored.float(), expected, rtol=1e-4, atol=1e-6)):
            raise ValueError(f"{path}: {key} {tuple(stored.shape)} is not the released front end's "
                             f"{tuple(expected.shape)} ({FRONTEND})")


def batchnorm_stats(path: Path, found: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """init_bn in eval mode as (mean, std) per mel bin, (F, 1) each: bn(x) = (x - mean) / std."""
    weight, bias, running_mean, running_var = (_take(path, found, BATCHNORM + k).double()
                                               for k in ("weight", "bias", "running_mean", "running_var"))
    found.pop(BATCHNORM + "num_batches_tracked", None)
    if not bool((weight != 0).all()):
        raise ValueError(f"{path}: {BATCHNORM}weight has zeros: init_bn is not invertible per bin")
    std = (running_var + BATCHNORM_EPS).sqrt() / weight
    return (running_mean - bias * std).float()[:, None], std.float()[:, None]


def read(path: Path, contents: Dict[str, Any], found: Dict[str, Any], family: Family,
         release_heads: Dict[int, int]) -> Checkpoint:
    """A Dasheng or CED file (`contents`, its state dict `found` in the reference's names) as a Checkpoint of the
    shared ViT. Heads: the config's `num_heads`, else `release_heads` by width, else width / 64."""
    args = model_args(contents)
    found = {k: v for k, v in found.items() if not k.startswith("outputlayer.")}
    kernel = found.get("patch_embed.proj.weight")
    num_heads = args.get("num_heads") or (release_heads.get(kernel.shape[0]) if kernel is not None else None)
    _check_frontend(path, found, args)
    norm_stats = batchnorm_stats(path, found)
    time = _take(path, found, "time_pos_embed")  # (1, D, 1, gt)
    freq = _take(path, found, "freq_pos_embed")  # (1, D, gf, 1)
    found["pos_embed"] = (freq + time).flatten(2).transpose(1, 2)  # (1, D, gf, gt) -> (1, gf * gt, D)
    config = config_from_weights(path, found, n_bins=FRONTEND.n_mels, qkv_bias="qkv",
                                 **({"num_heads": num_heads} if num_heads else {}))
    stride = args.get("patch_stride", config.patch_size)
    if (tuple(stride) if isinstance(stride, (list, tuple)) else (stride, stride)) != config.patch_size:
        raise ValueError(f"{path}: patch_stride {stride} is not the patch size {config.patch_size}: no release has "
                         "such a grid, and this package does not compute it")
    return Checkpoint(path, family, config, config.token_grid(), FRONTEND, found, norm_stats, contents)
