"""AST (Gong et al., "Audio Spectrogram Transformer", 2021): HEAR module `hear_msm_mae.ast`.

Files (github.com/YuanGongND/ast, e.g. audioset_10_10_0.4593.pth, speechcommands_10_10_0.9812.pth):
the flat state dict of a DataParallel ASTModel, keys `module.v.*` (a DeiT: [CLS] and distillation
tokens, learned position table) and `module.mlp_head.*` (the classifier, dropped here, as are DeiT's
own heads v.head / v.head_dist).
Encoder: the shared ViT with a fused qkv bias and two prefix tokens over OVERLAPPING 16x16 patches of
a 128-bin Kaldi fbank (front end: frontend.KaldiFbank, 'hanning' window, on wave - wave.mean()),
stride 10 in both axes (the release names it: audioset_<fstride>_<tstride>_...; otherwise the only
stride that tiles the position table), so a column of 12 patches starts every 100 ms. AST's own
layout is already (mel, time), frequency-major.
Input length: the checkpoint's (101 columns for AudioSet's 1024 frames: the 1016 frames they span, the
last 8 are never seen), or any `unit_frames`: the position table is then cut from the middle (shorter)
or bilinearly interpolated in time (longer), as ASTModel does for another input_tdim; a short last unit
takes the middle columns, by the same rule. mode="reference" is AST's dataloader: every clip padded with
zero fbank frames or cut to the full length (1024 frames for AudioSet's), the columns covering the clip
kept.
Normalisation: (fbank + 4.2677393) / (2 * 4.5689974), AudioSet's (other releases used their data
set's: pass norm_mean / norm_std). Clip-level output (scene="pooled"): (cls + dist) / 2 of
the final output.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..family import Checkpoint, Family, ReferenceRecipe, model_weights, strip_prefix
from ..frontend import KaldiFbankConfig
from ..encoders.vit import VisionTransformer, config_from_weights

FRONTEND = KaldiFbankConfig(window_type="hanning", subtract_clip_mean=True)
AUDIOSET_NORM_STATS = (-4.2677393, 4.5689974)
MEL_BINS, PATCH = 128, 16
DROPPED = re.compile(r"^(head\.|head_dist\.|mlp_head\.)")
RELEASE_NAME = re.compile(r"^[a-z]+_(\d+)_(\d+)_")  # audioset_10_10_0.4593.pth: fstride, tstride


def _weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    weights = strip_prefix(model_weights(contents, "model", "state_dict"), "module.")
    return {(k[2:] if k.startswith("v.") else k): v for k, v in weights.items()}


def looks_like(contents: Dict[str, Any]) -> bool:
    """A DeiT with a distillation token."""
    return "dist_token" in _weights(contents)


def _strides(path: Path, num_patches: int) -> int:
    """AST's (equal) frequency and time stride: from the release's file name, else the only stride whose
    frequency patches tile the position table."""
    match = RELEASE_NAME.match(path.name)
    if match and match.group(1) == match.group(2):
        return int(match.group(1))
    fits = [s for s in range(1, PATCH + 1) if num_patches % ((MEL_BINS - PATCH) // s + 1) == 0]
    if len(fits) != 1:
        raise ValueError(f"{path}: cannot tell AST's patch stride from {num_patches} patches (fits: {fits}); "
                         "name the file as the releases do, e.g. audioset_10_10_0.4593.pth")
    return fits[0]


def resize_pos_embed(table: torch.Tensor, gf: int, gt: int, columns: int) -> torch.Tensor:
    """AST's position table (1, 2 + gf * gt, D) for `columns` time columns: the middle `columns` columns
    when fewer, bilinear interpolation in time when more (ASTModel's rule for another input_tdim)."""
    if columns == gt:
        return table
    grid = table[:, 2:].reshape(1, gf, gt, -1).permute(0, 3, 1, 2)  # (1, D, gf, gt)
    if columns < gt:
        start = gt // 2 - columns // 2
        grid = grid[..., start:start + columns]
    else:
        grid = F.interpolate(grid, size=(gf, columns), mode="bilinear")
    return torch.cat([table[:, :2], grid.permute(0, 2, 3, 1).reshape(1, gf * columns, -1)], dim=1)


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    weights = {k: v for k, v in _weights(contents).items() if not DROPPED.match(k)}
    if "pos_embed" not in weights:
        raise ValueError(f"{path}: not an AST model: no 'pos_embed' (keys start with {sorted(weights)[:5]})")
    num_patches = weights["pos_embed"].shape[1] - 2
    stride = _strides(path, num_patches)
    gf = (MEL_BINS - PATCH) // stride + 1
    gt = num_patches // gf
    if unit_frames is not None and unit_frames < PATCH:
        raise ValueError(f"unit_frames must be at least one patch ({PATCH} frames), got {unit_frames}")
    if unit_frames is None:  # the frames the checkpoint's columns span (1016 of AudioSet's 1024: the rest is unused)
        unit_frames = (gt - 1) * stride + PATCH
    columns = (unit_frames - PATCH) // stride + 1
    weights["pos_embed"] = resize_pos_embed(weights["pos_embed"], gf, gt, columns)
    config = config_from_weights(path, weights, n_bins=MEL_BINS, input_size=(MEL_BINS, unit_frames),
                                 patch_stride=(stride, stride),
                                 qkv_bias="qkv", num_prefix_tokens=2, pool="prefix", pos_embed_cut="middle")
    return Checkpoint(path, FAMILY, config, config.token_grid(), FRONTEND, weights, None, contents)


FAMILY = Family(
    name="ast", title="AST", module="hear_msm_mae.ast", looks_like=looks_like, read=read,
    encoder=VisionTransformer, default_norm_stats=AUDIOSET_NORM_STATS, norm_scale=2.0, pad_raw=0.0,
    freq_pool="mean", timestamp_hop_ms=50.0, reference=ReferenceRecipe(pad_last_unit=True, first_unit_only=True))
