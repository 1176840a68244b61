"""MSM-MAE (Niizumi et al., HEAR 2021): the family this package is named after; its HEAR module is
`hear_msm_mae` itself (this file's load_model), with the bundled default checkpoint.

Files: the official training layout `<F>x<T>p<pf>x<pt>_<name>/checkpoint-N.pth` = {'model', 'epoch',
'args'} (decoder included), bare or encoder-only state dicts, and this package's own checkpoints,
which add 'config' (MAEConfig as a dict) and 'norm_stats' ({'mean', 'std'} of the pre-training
log-mels). The configuration comes from the stored config, then the stored args or the folder name,
then the tensor shapes (heads = width / 64).
Encoder: the shared ViT with query and value biases (zero key bias), [CLS] optional, fixed sin-cos
positions, frequency-major 16x16 patches of the 80-bin log-mel (front end: frontend.LogMelSpectrogram).
Normalisation: the checkpoint's statistics (ours, or args.norm_stats where an official file has
them), else AudioSet's (-7.1, 4.2); the original wrapper ("reference" mode) normalises each batch by
its own statistics and zero-pads the last unit to the full width.
"""
from __future__ import annotations

import re
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .api import bind, get_scene_embeddings, get_timestamp_embeddings  # noqa: F401  (the HEAR API)
from .family import Checkpoint, Family, ReferenceRecipe, model_weights, strip_prefix
from .frontend import LogMelConfig
from .model import MAEConfig
from .vit import VisionTransformer, config_from_weights

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


def _weights(contents: Dict[str, Any]) -> Dict[str, Any]:
    return strip_prefix(model_weights(contents, "model"), "module.", "backbone.", "_orig_mod.")


def looks_like(contents: Dict[str, Any]) -> bool:
    """MSM-MAE's attention has separate query and value biases."""
    return "blocks.0.attn.q_bias" in _weights(contents)


def _is_decoder_key(key: str) -> bool:
    return key.startswith("decoder_") or key == "mask_token"


def _stored_input_size(path: Path, args) -> Optional[Tuple[int, int]]:
    value = getattr(args, "input_size", None)
    if isinstance(value, str):
        value = [int(v) for v in value.split("x")]
    if value is not None:
        return tuple(int(v) for v in value)
    match = FOLDER_NAME.search(path.parent.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def infer_config(path: Path, state_dict: Dict[str, Any], contents: Dict[str, Any]) -> MAEConfig:
    """MAEConfig for a state dict: stored config first, then args / folder name, then shapes."""
    if isinstance(contents.get("config"), dict):
        known = {f.name for f in fields(MAEConfig)}
        return MAEConfig(**{k: v for k, v in contents["config"].items() if k in known})
    args = contents.get("args")
    use_cls_token = "cls_token" in state_dict
    decoder = {}
    if "decoder_embed.weight" in state_dict:
        width = state_dict["decoder_embed.weight"].shape[0]
        decoder = dict(decoder_embed_dim=width, decoder_num_heads=max(width // 64, 1),
                       decoder_depth=1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("decoder_blocks.")))
    return config_from_weights(path, state_dict, MAEConfig, n_bins=FRONTEND.n_mels, num_prefix=int(use_cls_token),
                               input_size=_stored_input_size(path, args), use_cls_token=use_cls_token,
                               norm_pix_loss=bool(getattr(args, "norm_pix_loss", False)), **decoder)


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
    weights = _weights(contents)
    config = infer_config(path, weights, contents)
    rest = {k: v for k, v in contents.items() if k != "model"} if isinstance(contents.get("model"), dict) else {}
    return Checkpoint(path, FAMILY, config, config.encoder_config().token_grid(), FRONTEND,
                      {k: v for k, v in weights.items() if not _is_decoder_key(k)}, stored_norm_stats(contents),
                      rest, {k: v for k, v in weights.items() if _is_decoder_key(k)})


FAMILY = Family(
    name="msm_mae", title="MSM-MAE", looks_like=looks_like, read=read,
    encoder=lambda config: VisionTransformer(config.encoder_config()),
    default_norm_stats=AUDIOSET_NORM_STATS,
    reference=ReferenceRecipe(batch_norm_stats=True, pad_last_unit=True))

load_model = bind("msm_mae", default_checkpoint)
