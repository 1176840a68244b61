"""What a model family is to the shared engine, and finding a file's family.

A family (hear_msm_mae/msm_mae.py, m2d.py, audiomae.py, ast.py, beats.py) is one small file that
says how its official checkpoints are read (`read`: configuration and a state dict in this
package's names), which front end and normalisation its encoder expects, how its clips are cut into
units, and its embedding defaults. Everything else (front ends, encoders, units, batches, shifted
copies, timestamps, the HEAR API) is shared.

The encoders (vit.VisionTransformer, beats_encoder.BEATsEncoder) share one contract:
`encode(x, layers=None)` maps normalised units x (n, 1, F, W) to one tensor (n, prefix + gf * cols, D)
per requested layer, patch tokens frequency-major (patch (f, t) at prefix + f * cols + t); layer 0 is
the embedded input, k the output of block k, `depth` (the default, also -1) the final output; and they
expose `depth`, `num_prefix_tokens` and `pool`, the name of their clip-level output (`pooled(tokens)`) or None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

# name -> module; the order is the order in which `detect_family` asks each family about a file
FAMILY_MODULES = {
    "beats": "hear_msm_mae.beats",
    "ast": "hear_msm_mae.ast",
    "msm_mae": "hear_msm_mae.msm_mae",
    "audiomae": "hear_msm_mae.audiomae",
    "m2d": "hear_msm_mae.m2d",
}


@dataclass(frozen=True)
class TokenGrid:
    """How an encoder's tokens tile the features: see embedder.py."""
    unit_frames: int  # W: frames of one full input unit
    patch_frames: int  # pt: frames one column covers
    column_stride: int  # st: frames between consecutive columns
    freq_patches: int  # gf: patches in one column
    num_prefix_tokens: int  # tokens before the patch tokens ([CLS], distillation)
    embed_dim: int  # D

    @property
    def unit_columns(self) -> int:
        """K: columns in a full unit."""
        return (self.unit_frames - self.patch_frames) // self.column_stride + 1

    def columns_for(self, frames: int) -> int:
        """Columns needed to cover `frames` frames (at least one)."""
        return 1 + max(0, math.ceil((frames - self.patch_frames) / self.column_stride))

    def frames_for(self, columns: int) -> int:
        """Frames that `columns` consecutive columns span."""
        return (columns - 1) * self.column_stride + self.patch_frames


@dataclass
class Checkpoint:
    """A checkpoint as its family read it."""
    path: Path
    family: "Family"
    config: Any  # the encoder's configuration (ViTConfig, MAEConfig for MSM-MAE, BEATsConfig)
    grid: TokenGrid  # how the encoder's tokens tile the features
    frontend: Any  # the front end's configuration (frontend.LogMelConfig or KaldiFbankConfig)
    state_dict: Dict[str, torch.Tensor]  # the encoder's weights, in this package's names
    norm_stats: Optional[Tuple[float, float]] = None  # (mean, std) stored in the file, if any
    contents: Dict[str, Any] = field(default_factory=dict)  # the rest of the file (epoch, args, ...)
    decoder_state_dict: Dict[str, torch.Tensor] = field(default_factory=dict)  # MSM-MAE's decoder


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the family's own HEAR wrapper embeds a clip (options mode="reference")."""
    batch_norm_stats: bool  # normalise by the statistics of the whole batch (MSM-MAE) instead of fixed ones
    pad_last_unit: bool  # zero-pad the last unit to the full input width


@dataclass(frozen=True)
class Family:
    name: str  # "m2d"
    title: str  # "M2D"
    looks_like: Callable[[Dict[str, Any]], bool]  # does this file's content belong to the family?
    read: Callable[..., Checkpoint]  # (path, contents, unit_frames=None) -> Checkpoint
    encoder: Callable[[Any], nn.Module]  # Checkpoint.config -> the encoder module (weights come later)
    default_norm_stats: Tuple[float, float]  # (mean, std) when the file stores none
    norm_scale: float = 1.0  # features are (raw - mean) / (norm_scale * std)
    pad_raw: Optional[float] = None  # raw feature value of padding frames; None: the mean (0 normalised)
    freq_pool: str = "concat"  # default frame recipe: "concat" or "mean" over a column's frequency patches
    timestamp_hop_ms: float = 40.0  # default timestamp hop
    reference: Optional[ReferenceRecipe] = None  # the family's original HEAR wrapper, if it has one

    @property
    def module(self) -> str:
        return FAMILY_MODULES[self.name]


def resolve_layers(layers: Optional[Sequence[int]], depth: int) -> List[int]:
    """Layer indices in 0..depth (negative ones count from depth); None: the final output only."""
    if layers is None:
        return [depth]
    if not layers or not all(type(layer) is int for layer in layers):
        raise ValueError(f"layers must be a non-empty list of integers, got {layers!r}")
    bad = [layer for layer in layers if not -depth - 1 <= layer <= depth]
    if bad:
        raise ValueError(f"layers {bad} out of range for an encoder of {depth} blocks (0..{depth} or "
                         f"{-depth - 1}..-1)")
    return [layer % (depth + 1) for layer in layers]


def get_family(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILY_MODULES)}")
    return import_module(FAMILY_MODULES[name]).FAMILY


def detect_family(contents: Dict[str, Any]) -> Optional[Family]:
    """The family whose files look like `contents` (the unpickled file), or None."""
    for name in FAMILY_MODULES:
        family = get_family(name)
        if family.looks_like(contents):
            return family
    return None


def model_weights(contents: Dict[str, Any], *unwrap: str) -> Dict[str, Any]:
    """The state dict in a file: `contents[key]` for the first key of `unwrap` holding a dict, else the
    file itself (a bare state dict)."""
    for key in unwrap:
        if isinstance(contents.get(key), dict):
            return contents[key]
    return contents


def strip_prefix(state_dict: Dict[str, Any], *prefixes: str) -> Dict[str, Any]:
    """Remove the first of `prefixes` that every key has (DataParallel's "module.", ...)."""
    for prefix in prefixes:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict
