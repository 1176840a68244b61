"""MSM-MAE (Niizumi et al., HEAR 2021): the family this package is named after; its HEAR module is
`hear_msm_mae` itself, with the bundled default checkpoint.

Files: the official training layout `<F>x<T>p<pf>x<pt>_<name>/checkpoint-N.pth` = {'model', 'epoch',
'args'} (decoder included: dropped here by name; pretrain/mae.py reads it), bare or encoder-only
state dicts, and this package's own checkpoints, which add 'config' (pretrain.mae.MAEConfig as a flat
dict) and 'norm_stats' ({'mean', 'std'} of the pre-training log-mels). The configuration comes from
the stored config, then the stored args or the folder name, then the tensor shapes (heads = width / 64).
Encoder: the shared ViT with query and value biases (zero key bias), [CLS] optional, fixed sin-cos
positions, frequency-major 16x16 patches of the 80-bin log-mel (frontend.LogMelSpectrogram).
Normalisation: the checkpoint's statistics (ours, or args.norm_stats where an official file has
them), else AudioSet's (-7.1, 4.2); the original wrapper ("reference" mode) normalises each batch by
its own statistics and zero-pads the last unit to the full width.
"""
from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..family import Checkpoint, Family, ReferenceRecipe, model_weights, strip_prefix
from ..frontend import LogMelConfig
from ..encoders.vit import ViTConfig, VisionTransformer, config_from_weights

FRONTEND = LogMelConfig()  # 16 kHz, 80 mel bins
DEFAULT_CHECKPOINT_NAME = "msm_mae_default.pth"  # in the package hear_msm_mae.checkpoints
AUDIOSET_NORM_STATS = (-7.1, 4.2)  # log-mel statistics of AudioSet for this front end (as in M2D's runtime)
FOLDER_NAME = re.compile(r"(\d+)x(\d+)p(\d+)x(\d+)")


def default_checkpoint() -> Path:
    """The checkpoint bundled with the package (the repository's checkpoints/ folder)."""
    path = Path(str(resources.files("hear_msm_mae.checkpoints") / DEFAULT_CHECKPOINT_NAME))
    if not path.is_file():
        raise FileNotFoundError(
            f"no bundled default checkpoint at {path}; pass a checkpoint path to load_model(), "
            "e.g. load_model('80x512p16x16_paper/checkpoint-100.pth')")
    return path


def vit_config(input_size=(80, 208), patch_size=(16, 16), embed_dim=768, depth=12, num_heads=12,
               mlp_ratio=4.0, use_cls_token=False) -> ViTConfig:
    """MSM-MAE's encoder: the ViT with query/value biases and optionally one [CLS] token."""
    return ViTConfig(input_size=input_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                     num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias="qv", num_prefix_tokens=int(use_cls_token))


STORED_ENCODER_FIELDS = ("input_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "use_cls_token")


def stored_vit_config(stored: Dict[str, Any]) -> ViTConfig:
    """The encoder of this package's stored 'config' dict (pretrain.mae.MAEConfig.to_dict)."""
    return vit_config(**{k: stored[k] for k in STORED_ENCODER_FIELDS if k in stored})


def weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    """The whole state dict of an MSM-MAE file (encoder and decoder)."""
    return strip_prefix(model_weights(contents, "model"), "module.", "backbone.", "_orig_mod.")


def looks_like(contents: Dict[str, Any]) -> bool:
    """MSM-MAE's attention has separate query and value biases."""
    return "blocks.0.attn.q_bias" in weights(contents)


def is_decoder_key(key: str) -> bool:
    return key.startswith("decoder_") or key == "mask_token"


def _stored_input_size(path: Path, args) -> Optional[Tuple[int, int]]:
    value = getattr(args, "input_size", None)
    if isinstance(value, str):
        value = [int(v) for v in value.split("x")]
    if value is not None:
        return tuple(int(v) for v in value)
    match = FOLDER_NAME.search(path.parent.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def stored_norm_stats(contents: Dict[str, Any]) -> Optional[Tuple[float, float]]:
    """This package's {'mean', 'std'}, or an official file's args.norm_stats = [mean, std]."""
    stats = contents.get("norm_stats")
    if isinstance(stats, dict):
        return float(stats["mean"]), float(stats["std"])
    stats = getattr(contents.get("args"), "norm_stats", None)
    if isinstance(stats, (list, tuple)) and len(stats) == 2:
        return float(stats[0]), float(stats[1])
    return None


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    encoder = {k: v for k, v in weights(contents).items() if not is_decoder_key(k)}
    if isinstance(contents.get("config"), dict):
        config = stored_vit_config(contents["config"])
    else:
        config = config_from_weights(path, encoder, n_bins=FRONTEND.n_mels,
                                     input_size=_stored_input_size(path, contents.get("args")), qkv_bias="qv",
                                     num_prefix_tokens=int("cls_token" in encoder))
    return Checkpoint(path, FAMILY, config, config.token_grid(), FRONTEND, encoder, stored_norm_stats(contents),
                      contents)


FAMILY = Family(
    name="msm_mae", title="MSM-MAE", module="hear_msm_mae", looks_like=looks_like, read=read,
    encoder=VisionTransformer, default_norm_stats=AUDIOSET_NORM_STATS,
    reference=ReferenceRecipe(batch_norm_stats=True, pad_last_unit=True, timestamps="starts"),
    safe_globals=(argparse.Namespace,))
