"""M2D (Niizumi et al., Masked Modeling Duo, 2023/2024), MSM-MAE's successor: HEAR module
`hear_msm_mae.m2d`.

Files (github.com/nttcslab/m2d releases; each zip unpacks to one folder named like the weights,
`<model>-<F>x<T>p<pf>x<pt>[p<sr>]-<date>-<tags>[_enconly]/checkpoint-N.pth`): full training
checkpoints {'model', 'optimizer', 'epoch', 'scaler', 'args'} with the target encoder
(target_blocks, target_norm), the predictor (decoder_*, mask_token) and for some variants
offline_predictor / CLAP projections, all dropped here by name; `_enconly` files (the bare encoder
state dict); EVAR fine-tuned files (keys under module.ar.runtime.backbone., task head module.head.*).
Encoder: the shared ViT with a fused qkv bias and [CLS], 16x16 (or 16x4, 80x2) patches of the same
80-bin log-mel as MSM-MAE. Normalisation: the `norm_stats` (mean, std) stored in the weights, else
(-7.1, 4.2) as M2D's runtime does for its 2022 files. The configuration comes from the args, else
the shapes (heads = width / 64); the folder name only tells the sample rate (16 kHz, or 32 kHz for
`p32k` releases: the same log-mel at 32 kHz, n_fft 800, hop 320, 50-16000 Hz, as M2D's runtime).
"Reference" mode reproduces the portable runtime (examples/portable_m2d.py): fixed statistics, the
last unit cut to whole patches, timestamps i * duration / n.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..family import Checkpoint, Family, ReferenceRecipe, model_weights, strip_prefix
from ..frontend import LogMelConfig
from ..encoders.vit import VisionTransformer, config_from_weights

DEFAULT_NORM_STATS = (-7.1, 4.2)
# the log-mel of the 32 kHz releases (`p32k`), as M2D's runtime computes it
FRONTEND_32K = LogMelConfig(sample_rate=32000, n_fft=800, hop_length=320, f_max=16000.0)
# weights of pre-training only (target encoder, predictor, CLAP projections) and EVAR's task head
DROPPED = re.compile(r"^(target_|decoder_|mask_token$|offline_predictor\.|audio_proj\.|text_proj\.|logit_scale$|"
                     r"module\.head\.)")
SAMPLE_RATE_TAG = re.compile(r"^\d+x\d+p\d+x\d+p(\d+)k")


def _weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    """The state dict, unwrapped as M2D's runtimes do: 'model', a 'backbone.' prefix, EVAR's prefix."""
    weights = model_weights(contents, "model")
    if any(k.startswith("backbone.") for k in weights):
        weights = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    weights = {k.replace("module.ar.runtime.backbone.", ""): v for k, v in weights.items()}
    return strip_prefix(weights, "module.", "_orig_mod.")


def looks_like(contents: Dict[str, Any]) -> bool:
    """A ViT with a fused qkv bias and one [CLS] token, over 80-bin log-mel patches: the norm_stats, target
    encoder or args that M2D files have, or else a position table that tiles 80 // pf frequency patches
    (Audio-MAE's 128-bin tables do not: 8 x 64 patches)."""
    weights = _weights(contents)
    if "blocks.0.attn.qkv.bias" not in weights or "cls_token" not in weights or "dist_token" in weights or \
            "patch_embed.proj.weight" not in weights or "pos_embed" not in weights:
        return False
    if "norm_stats" in weights or any(k.startswith("target_blocks.") for k in weights) or \
            str(getattr(contents.get("args"), "model", "")).startswith("m2d"):
        return True
    freq_patches = 80 // weights["patch_embed.proj.weight"].shape[2]
    return freq_patches > 0 and (weights["pos_embed"].shape[1] - 1) % freq_patches == 0


def frontend_config(path: Path) -> LogMelConfig:
    """M2D names its 32 kHz variants in the folder (`...-80x608p16x16p32k-...`); 16 kHz otherwise."""
    parts = path.parent.name.split("-")
    match = SAMPLE_RATE_TAG.match(parts[1]) if len(parts) > 1 else None
    if match is None or match.group(1) == "16":
        return LogMelConfig()
    if match.group(1) == "32":
        return FRONTEND_32K
    raise ValueError(f"{path}: M2D releases are at 16 or 32 kHz, the folder name says {match.group(1)} kHz")


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    frontend = frontend_config(path)
    weights = {k: v for k, v in _weights(contents).items() if not DROPPED.match(k)}
    stats = weights.pop("norm_stats", None)
    norm_stats: Optional[Tuple[float, float]] = (float(stats[0]), float(stats[1])) if stats is not None else None
    config = config_from_weights(path, weights, n_bins=frontend.n_mels,
                                 input_size=getattr(contents.get("args"), "input_size", None), qkv_bias="qkv",
                                 num_prefix_tokens=1)
    return Checkpoint(path, FAMILY, config, config.token_grid(), frontend, weights, norm_stats, contents)


FAMILY = Family(
    name="m2d", title="M2D", module="hear_msm_mae.m2d", looks_like=looks_like, read=read,
    encoder=VisionTransformer, default_norm_stats=DEFAULT_NORM_STATS,
    reference=ReferenceRecipe(timestamps="starts"),
    safe_globals=(argparse.Namespace,))
