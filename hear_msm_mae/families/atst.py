"""ATST (Li et al., "ATST: Audio Representation Learning with Teacher-Student Transformer", 2022;
"Self-supervised Audio Teacher-Student Transformer for Both Clip-level and Frame-level Tasks", 2024):
HEAR modules `hear_msm_mae.atst_frame` and `hear_msm_mae.atst_clip`, two families in one file.

The variants share their files' layouts, front end, patches and blocks; ATST-Clip adds a [CLS] token.
Each has its own HEAR module (one module, one model, as hear-eval-kit and result tables name them)
because what their authors take from them differs (mode="reference": ATST-Frame's HEAR wrapper,
ATST-Clip's linear evaluation, atst_reference.py); a file of the other variant is refused naming
its module (norm_frame vs cls_token tells them apart).

Files (github.com/Audio-WestlakeU/audiossl): Lightning checkpoints (ATST-Frame small and base, ATST-Clip
small), the teacher encoder under state_dict['model.teacher.encoder.*']; ATST-Clip base {'student',
'teacher', 'optimizer', 'epoch', 'args', 'byol_loss'}, the encoder under teacher['module.backbone.*'].
The student, the BYOL projectors and predictor and the pre-training mask_embed are dropped by name; the
optimizer state is never read, but unpickling it needs the numpy objects of SAFE_GLOBALS.
Configuration: width from the patch projection, depth from the block indices, heads from the width
(HEADS); the stored training arguments must say 64x4 patches over 64 mels.
Encoder: the shared ViT without qkv bias over 64x4 patches, one token per 40 ms (all 64 mel bins x 4
frames): the reference's Linear(256, D) on patches flattened mel-major (index mel * 4 + frame) is the
Conv2d weight (D, 1, 64, 4). Learned 1-D positions whose slot 0 is [CLS]'s (ATST-Frame has no [CLS] and
starts at slot 1: its slot 0 is dropped). The final norm (norm_frame, norm) is applied to every block
output read, as ATST's get_intermediate_layers does.
Front end: torchaudio's MelSpectrogram (1024-sample window and FFT, 160 hop, 64 HTK mels, 60-7800 Hz)
and AmplitudeToDB(top_db=80), per clip, then the authors' fixed MinMax(-79.6482, 50.6842) to [-1, 1]:
(x - mean) / std with mean, std = (min + max) / 2, (max - min) / 2. Padding frames are 0 after it,
what the authors' collate_fn pads with.
Units (default mode): the reference's chunks cut to whole columns, 1000 frames (ATST-Frame: 10 s) and
600 (ATST-Clip: its 6-s training length); unit_frames: any multiple of 4 up to the table's 1000.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .atst_reference import ClipWrapper, FrameWrapper, LinearEvaluation
from ..family import Checkpoint, Family, ReferenceRecipe
from ..frontend import LogMelConfig
from ..encoders.vit import VisionTransformer, config_from_weights

try:  # NumPy 2 keeps numpy.core only as an alias of numpy._core
    from numpy._core.multiarray import scalar as numpy_scalar
except ImportError:  # NumPy 1
    from numpy.core.multiarray import scalar as numpy_scalar

FRONTEND = LogMelConfig(n_fft=1024, n_mels=64, f_min=60.0, f_max=7800.0, mel_scale="htk", log="db", top_db=80.0)
MIN_MAX = (-79.6482, 50.6842)  # the authors' MinMax bounds, dB
NORM_STATS = ((MIN_MAX[0] + MIN_MAX[1]) / 2, (MIN_MAX[1] - MIN_MAX[0]) / 2)
PATCH = (64, 4)  # (mel bins, frames)
# width -> heads: small and base (audiossl's FrameAST_small/_base, AST_small/_base: 64-wide heads), and the
# 64-wide test models of ../shared/golden (2 heads); the files do not say
HEADS = {384: 6, 768: 12, 64: 2}
TRAINING = {"n_mels": 64, "patch_h": 64, "patch_w": 4, "patch_height": 64, "patch_width": 4, "pos_type": "cut",
            "patch_embed": "Linear", "nprompt": 0}  # the stored arguments this package reads files of
PREFIXES = ("model.teacher.encoder.", "module.backbone.")  # Lightning, ATST-Clip base
DROPPED = re.compile(r"^(model\.student\.|model\.teacher\.projector\.|module\.head\.|mask_embed$)")
RENAMED = {"patch_embed.patch_embed.bias": "patch_embed.proj.bias", "norm_frame.weight": "norm.weight",
           "norm_frame.bias": "norm.bias"}
SAFE_GLOBALS = (
    (numpy_scalar, "numpy.core.multiarray.scalar"),  # the optimizer's np.float64 lr and weight decay...
    np.dtype,  # ... their dtype ...
    type(np.dtype(np.float64)),  # ... whose pickled state names numpy.dtypes.Float64DType
    argparse.Namespace,  # ATST-Clip base's args
)


def _encoder_weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    """The teacher encoder's weights, its prefix removed and the other networks dropped by name."""
    layout = contents.get("state_dict", contents.get("teacher"))
    if not isinstance(layout, dict):
        return {}
    weights = {next((k[len(p):] for p in PREFIXES if k.startswith(p)), k): v for k, v in layout.items()}
    return {k: v for k, v in weights.items() if not DROPPED.match(k)}


def _training_arguments(contents: Dict[str, Any]) -> Dict[str, Any]:
    args = contents.get("hyper_parameters", contents.get("args"))
    return vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})


def looks_like(contents: Dict[str, Any], clip: bool) -> bool:
    weights = _encoder_weights(contents)
    return "patch_embed.patch_embed.weight" in weights and ("cls_token" in weights) == clip


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None, *, clip: bool) -> Checkpoint:
    args, weights = _training_arguments(contents), _encoder_weights(contents)
    other = {k: args[k] for k in TRAINING if k in args and args[k] != TRAINING[k]}
    if other:
        raise ValueError(f"{path}: trained with {other}; this package reads ATST's 64x4-patch models ({TRAINING})")
    projection, table = weights.pop("patch_embed.patch_embed.weight", None), weights.get("pos_embed")
    if projection is None or table is None or tuple(projection.shape[1:]) != (PATCH[0] * PATCH[1],):
        raise ValueError(f"{path}: not an ATST encoder over 64x4 patches (weights start with {sorted(weights)[:5]})")
    width = projection.shape[0]
    if width not in HEADS:
        raise ValueError(f"{path}: an ATST encoder {width} wide; its heads are known for widths {sorted(HEADS)}")
    weights = {RENAMED.get(k, k): v for k, v in weights.items()}
    weights["patch_embed.proj.weight"] = projection.reshape(width, 1, *PATCH)
    weights["pos_embed"] = table if clip else table[:, 1:]
    config = config_from_weights(path, weights, n_bins=PATCH[0], qkv_bias="none", num_prefix_tokens=int(clip),
                                 num_heads=HEADS[width], norm_every_block=True, pool="prefix" if clip else None)
    full = config.input_size[1]
    chunk_frames = _clip_chunk_frames(contents, args) if clip else full
    if unit_frames is None:
        unit_frames = min(full, chunk_frames // PATCH[1] * PATCH[1])
    if unit_frames % PATCH[1] or not 0 < unit_frames <= full:
        raise ValueError(f"unit_frames must be a multiple of {PATCH[1]} up to the position table's {full} frames, "
                         f"got {unit_frames}")
    grid = dataclasses.replace(config.token_grid(), unit_frames=unit_frames)
    reference = ReferenceRecipe(wrapper=ClipWrapper(LinearEvaluation(chunk_frames))) if clip else None
    return Checkpoint(path, CLIP if clip else FRAME, config, grid, FRONTEND, weights, contents=contents,
                      reference=reference)


def _clip_chunk_frames(contents: Dict[str, Any], args: Dict[str, Any]) -> int:
    """ATST-Clip's training length in frames, as its authors' loader reads it: the Lightning file's
    train_len (absent from the release: 6 s), or the base file's anchor_len[0]."""
    seconds = args.get("train_len", 6.0) if "state_dict" in contents else args.get("anchor_len", [6.0])[0]
    return int(seconds * FRONTEND.sample_rate / FRONTEND.hop_length + 1)  # 6 s: 601


def _family(clip: bool, **fields) -> Family:
    return Family(looks_like=partial(looks_like, clip=clip), read=partial(read, clip=clip),
                  encoder=VisionTransformer, default_norm_stats=NORM_STATS, safe_globals=SAFE_GLOBALS, **fields)


FRAME = _family(False, name="atst_frame", title="ATST-Frame", module="hear_msm_mae.atst_frame",
                reference=ReferenceRecipe(wrapper=FrameWrapper()))
CLIP = _family(True, name="atst_clip", title="ATST-Clip", module="hear_msm_mae.atst_clip")  # reference: per file
