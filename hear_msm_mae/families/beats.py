"""BEATs (Chen et al., "Audio Pre-Training with Acoustic Tokenizers", 2022): HEAR module
`hear_msm_mae.beats`.

Files (github.com/microsoft/unilm/tree/master/beats: BEATs_iter3.pt, BEATs_iter3_plus_AS2M.pt, ...):
{'cfg': dict, 'model': state dict}; fine-tuned files add 'label_dict' and the classifier predictor.*
(dropped here). The configuration is the file's cfg, always (the reference's class defaults differ
from the release).
Encoder: encoders/beats.py (not a ViT: conv positions, relative position bias, post-LN) over
16x16 patches of a 128-bin Kaldi fbank of the waveform scaled by 2**15 (front end: frontend.KaldiFbank,
'povey' window). Normalisation: (fbank - 15.41663) / (2 * 6.55582).
Units: BEATs has no position table and encodes a whole clip, whatever its length. To keep memory
bounded on long clips, this package encodes units of `unit_frames` frames, by default 1008 = 63 patch
columns: one unit holds a whole 10-s clip (998 frames, padded to whole columns), the length BEATs was
pre-trained on. The last unit is only as wide as the columns it needs, and a partial last column is
completed with zero fbank frames (the reference's patch convolution drops those frames instead, and
fails on clips shorter than one column), so that the timestamps reach the end of the clip.
mode="reference" is BEATs' own extract_features: the whole clip in one pass, however long, frames after
its last whole column dropped (a clip shorter than one column is an error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from ..encoders.beats import BEATsConfig, BEATsEncoder
from ..family import Checkpoint, Family, ReferenceRecipe
from ..grid import TokenGrid
from ..frontend import KaldiFbankConfig

FRONTEND = KaldiFbankConfig(window_type="povey", input_scale=2.0 ** 15)
NORM_STATS = (15.41663, 6.55582)
DEFAULT_UNIT_FRAMES = 1008


def looks_like(contents: Dict[str, Any]) -> bool:
    return isinstance(contents.get("cfg"), dict) and isinstance(contents.get("model"), dict) and \
        "patch_embedding.weight" in contents["model"]


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], config: BEATsConfig) -> Dict[str, torch.Tensor]:
    """An official BEATs state dict -> BEATsEncoder's: the same names and tensors, except that

    - the weight-normed pos_conv (weight_g, weight_v) becomes one weight = g * v / ||v||, the norm
      taken over all dims but 2 (one per kernel tap), as torch's weight_norm(dim=2) computes it;
    - the relative position table, which the reference ties across blocks and saves once per block,
      is kept once as `encoder.relative_attention_bias.weight`: the last block's copy, which is the
      one a reference load_state_dict leaves in place (copies are loaded in order, the last wins);
    - each block's q_proj, k_proj and v_proj become one `qkv` projection (rows: query, key, value);
    - a fine-tuned file's classifier `predictor.*` is dropped.

    Anything else passes through, so the strict load still names unexpected or missing keys.
    """
    converted = {k: v for k, v in state_dict.items() if not k.startswith("predictor.")}
    conv = "encoder.pos_conv.0."
    tables = [f"encoder.layers.{i}.self_attn.relative_attention_bias.weight" for i in range(config.encoder_layers)]
    for key in [conv + "weight_g", conv + "weight_v"] + tables:
        if key not in converted:
            raise ValueError(f"not an official BEATs state dict: no {key!r}")
    g, v = converted.pop(conv + "weight_g"), converted.pop(conv + "weight_v")  # (1, 1, K), (D, D / groups, K)
    converted[conv + "weight"] = v * (g / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))
    converted["encoder.relative_attention_bias.weight"] = [converted.pop(key) for key in tables][-1]
    for i in range(config.encoder_layers):
        attn = f"encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            parts = [attn + f"{p}_proj.{kind}" for p in "qkv"]
            if all(p in converted for p in parts):
                converted[attn + f"qkv.{kind}"] = torch.cat([converted.pop(p) for p in parts])
    return converted


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    try:
        config = BEATsConfig.from_cfg(contents.get("cfg"))
        weights = convert_state_dict(contents["model"], config)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    patch = config.input_patch_size
    unit_frames = DEFAULT_UNIT_FRAMES if unit_frames is None else unit_frames
    if unit_frames < patch or unit_frames % patch:
        raise ValueError(f"unit_frames must be a positive multiple of the {patch}-frame patch, got {unit_frames}")
    grid = TokenGrid(unit_frames=unit_frames, patch_frames=patch, column_stride=patch,
                     freq_patches=config.freq_patches, num_prefix_tokens=0, embed_dim=config.encoder_embed_dim)
    return Checkpoint(path, FAMILY, config, grid, FRONTEND, weights, None, contents)


FAMILY = Family(
    name="beats", title="BEATs", module="hear_msm_mae.beats", looks_like=looks_like, read=read,
    encoder=BEATsEncoder, default_norm_stats=NORM_STATS, norm_scale=2.0, pad_raw=0.0, freq_pool="mean",
    reference=ReferenceRecipe(whole_clip=True, whole_columns_only=True))
