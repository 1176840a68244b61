"""Audio-MAE (Huang et al., "Masked Autoencoders that Listen", 2022): HEAR module `hear_msm_mae.audiomae`.

Files (github.com/facebookresearch/AudioMAE): the pre-trained checkpoint {'model', 'optimizer',
'epoch', 'scaler', 'args'} (args hold pathlib.PosixPath values), whose Swin decoder (decoder_*,
mask_token, decoder_pos_embed) is dropped here by name; the AudioSet fine-tuned checkpoint, which has
no final norm but fc_norm and the classifier head (dropped).
Encoder: the shared ViT with a fused qkv bias and [CLS] over 16x16 patches of a 1024-frame x
128-bin Kaldi fbank (front end: frontend.KaldiFbank, 'hanning' window, on wave - wave.mean()).
Audio-MAE puts time first: its patch projection sees (time, mel) and its tokens are time-major, so
the projection is transposed and the position table (a fixed sin-cos table, read from the file)
permuted to this package's (mel, time) layout and frequency-major order; the tokens are the same.
Normalisation: (fbank + 4.2677393) / (2 * 4.5689974), AudioSet's. Units of 1024 frames (by default a short
last unit takes the first columns of the table, as the ATST authors' comparison module does for clips
under 10.24 s; pad_last_unit pads it with zero fbank frames). mode="reference" is its dataloader: every
clip padded with zero fbank frames or cut to 1024 frames (10.24 s), the columns covering the clip kept. A
fine-tuned file's clip-level output (scene="pooled") is fc_norm of the mean of the patch tokens.
"""
from __future__ import annotations

import argparse
import pathlib
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..family import Checkpoint, Family, ReferenceRecipe, model_weights, strip_prefix
from ..frontend import KaldiFbankConfig
from ..encoders.vit import VisionTransformer, config_from_weights

FRONTEND = KaldiFbankConfig(window_type="hanning", subtract_clip_mean=True)
AUDIOSET_NORM_STATS = (-4.2677393, 4.5689974)
MEL_BINS = 128
DROPPED = re.compile(r"^(decoder_|mask_token$|head\.)")


def _weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    return strip_prefix(model_weights(contents, "model"), "module.")


def looks_like(contents: Dict[str, Any]) -> bool:
    """Audio-MAE's args (audio_exp), its fine-tuned fc_norm, its Swin decoder, or its 8 x 64 patch table."""
    weights = _weights(contents)
    if "blocks.0.attn.qkv.bias" not in weights or "cls_token" not in weights or "dist_token" in weights:
        return False
    table = weights.get("pos_embed")
    return bool(getattr(contents.get("args"), "audio_exp", False)) or "fc_norm.weight" in weights or \
        "decoder_blocks.0.attn.tau" in weights or (table is not None and table.shape[1] == 1 + 8 * 64)


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    args = contents.get("args")
    if getattr(args, "use_custom_patch", False):
        raise ValueError(f"{path}: trained with overlapping patches (use_custom_patch), which this package "
                         "does not read")
    weights = {k: v for k, v in _weights(contents).items() if not DROPPED.match(k)}
    config = config_from_weights(path, weights, n_bins=MEL_BINS, qkv_bias="qkv", num_prefix_tokens=1,
                                 final_norm="norm.weight" in weights,
                                 pool="patches" if "fc_norm.weight" in weights else None)
    # (time, mel) -> (mel, time): transpose the projection; time-major rows t * gf + f -> f * gt + t
    weights["patch_embed.proj.weight"] = weights["patch_embed.proj.weight"].transpose(2, 3)
    (gf, gt), table = config.grid_size, weights["pos_embed"]
    patches = table[:, 1:].reshape(1, gt, gf, -1).transpose(1, 2).reshape(1, gf * gt, -1)
    weights["pos_embed"] = torch.cat([table[:, :1], patches], dim=1)
    return Checkpoint(path, FAMILY, config, config.token_grid(), FRONTEND, weights, None, contents)


FAMILY = Family(
    name="audiomae", title="Audio-MAE", module="hear_msm_mae.audiomae", looks_like=looks_like, read=read,
    encoder=VisionTransformer, default_norm_stats=AUDIOSET_NORM_STATS, norm_scale=2.0, pad_raw=0.0,
    freq_pool="mean", reference=ReferenceRecipe(pad_last_unit=True, first_unit_only=True),
    safe_globals=(argparse.Namespace, pathlib.PosixPath))
