"""What a model family is to the shared engine.

A family (one small file in families/) says how its official checkpoints are read (`read`: the
encoder's configuration and a state dict in this package's names), which encoder, front end and
normalisation it uses, how its tokens tile the features (grid.TokenGrid) and its embedding defaults.
Everything else (front ends, encoders, units, batches, shifted copies, timestamps, the HEAR API) is
shared. Its HEAR module (hear_msm_mae for MSM-MAE, hear_msm_mae.m2d, ...) is `api.bind(name)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from torch import nn

from .grid import TokenGrid


@dataclass
class Checkpoint:
    """A checkpoint as its family read it."""
    path: Path
    family: "Family"
    config: Any  # the encoder's configuration (encoders: ViTConfig, BEATsConfig, ...)
    grid: TokenGrid  # how the encoder's tokens tile the features
    frontend: Any  # the front end's configuration (frontend.LogMelConfig or KaldiFbankConfig)
    state_dict: Dict[str, torch.Tensor]  # the encoder's weights, in this package's names
    norm_stats: Optional[Tuple[Any, Any]] = None  # (mean, std) stored in the file, if any: floats, or (F, 1)
    #                                                tensors, one per feature bin (a BatchNorm's running statistics)
    contents: Dict[str, Any] = field(default_factory=dict)  # the whole file as read (epoch, args, other weights)
    reference: Optional["ReferenceRecipe"] = None  # mode="reference" for this file, where the file sets it
    #                                                (ATST-Clip's chunk length); None: the family's


class ReferenceWrapper(Protocol):
    """A family's own HEAR wrapper that ReferenceRecipe's flags cannot say (its own chunks, windows or
    timestamps), written over the engine's pieces (front end, normalisation, encoder)."""

    def timestamp_embeddings(self, model: Any, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(model: embedder.Embedder, checked audio (B, S)) -> ((B, n, E), (B, n) ms)."""

    def scene_embeddings(self, model: Any, audio: torch.Tensor) -> torch.Tensor:
        """(model, checked audio (B, S)) -> (B, E)."""

    def embedding_sizes(self, model: Any) -> Tuple[int, int]:
        """(timestamp E, scene E) of this wrapper's outputs for `model`; a ValueError for model options that
        it cannot honour."""


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the family's own code embeds a whole clip (options mode="reference"), in the engine's terms: one
    embedding per patch column, at the native step."""
    batch_norm_stats: bool = False  # the whole batch normalised by its own mean and std (MSM-MAE's wrapper)
    pad_last_unit: bool = False  # the last unit padded to the full input width
    first_unit_only: bool = False  # the clip cut to one unit (Audio-MAE's and AST's dataloaders: a fixed length)
    whole_clip: bool = False  # the whole clip is one unit, however long (BEATs' extract_features)
    whole_columns_only: bool = False  # frames after the last whole column dropped (a patch convolution's rule)
    trailing_frames: bool = False  # whole_clip: the frames after the last whole column stay in the unit (they make
    #                                no column, but input-wide statistics see them: wav2vec 2.0 Base's GroupNorm)
    timestamps: str = "centres"  # the columns' "centres", or their "starts" i * duration / n (MSM-MAE's wrapper)
    batch_top_db: bool = False  # a dB front end's top_db floor from the whole batch's maximum (Dasheng, CED)
    timestamp_hop_ms: Optional[float] = None  # the wrapper's own hop, where it is not the column step (CED: 50 ms)
    wrapper: Optional[ReferenceWrapper] = None  # computes both embeddings itself (the flags above still apply)

    def __post_init__(self):
        if self.timestamps not in ("centres", "starts"):
            raise ValueError(f"timestamps must be 'centres' or 'starts', got {self.timestamps!r}")


@dataclass(frozen=True)
class Family:
    name: str  # "m2d"
    title: str  # "M2D"
    module: str  # its HEAR module, "hear_msm_mae.m2d"
    looks_like: Callable[[Dict[str, Any]], bool]  # is this file's content (the unpickled dict) one of ours?
    read: Callable[..., Checkpoint]  # (path, contents, unit_frames=None) -> Checkpoint
    encoder: Callable[[Any], nn.Module]  # Checkpoint.config -> the encoder module (weights come later)
    default_norm_stats: Tuple[float, float]  # (mean, std) when the file stores none
    norm_scale: float = 1.0  # features are (raw - mean) / (norm_scale * std)
    pad_raw: Optional[float] = None  # raw feature value of padding frames; None: the mean (0 normalised)
    freq_pool: str = "concat"  # default frame recipe: "concat" or "mean" over a column's frequency patches
    timestamp_hop_ms: float = 40.0  # default timestamp hop
    reference: Optional[ReferenceRecipe] = None  # what mode="reference" reproduces, if the family has it
    safe_globals: Tuple[Any, ...] = ()  # the classes (or (class, "module.Name") stand-ins) its files pickle


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
