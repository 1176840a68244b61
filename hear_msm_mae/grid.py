"""What the embedding engine knows of a model: its token grid and the encoder contract.

An encoder maps normalised feature units (n, 1, F, W) to tokens. `TokenGrid` says how those tokens
tile the features: after `num_prefix_tokens` prefix tokens ([CLS], distillation) come gf * cols patch
tokens, frequency-major (patch (f, t) is token prefix + f * cols + t); column t covers frames
[t * st, t * st + pt) of the unit, where st = pt for side-by-side patches and st < pt where they overlap
(AST). A full unit is `unit_frames` wide, and unit u starts at frame u * K * st (K columns a unit), so
the columns of consecutive units continue one grid.

Every encoder (encoders/: VisionTransformer, BEATsEncoder, Wav2Vec2Encoder) has the `Encoder` attributes and
methods; the engine (embedder.py) needs nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence

import torch


@dataclass(frozen=True)
class TokenGrid:
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

    def unit_tokens(self, columns: int) -> int:
        """Tokens the encoder sees for a unit of `columns` columns."""
        return self.num_prefix_tokens + self.freq_patches * columns


class Encoder(Protocol):
    """The contract between the engine and an encoder."""

    depth: int  # blocks; layer k is the output of block k
    num_prefix_tokens: int
    pool: Optional[str]  # the name of its clip-level output, or None when it has none

    def encode(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """Normalised units (n, 1, F, W) -> one (n, prefix + gf * cols, D) tensor per layer of `layers`
        (resolve_layers: 0 the embedded input, k the output of block k, `depth` (the default, also -1) the
        final output, after the final norm where the model has one)."""

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens (n, prefix + patches, D) -> the clip-level output (n, D); only where `pool` is set."""


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
