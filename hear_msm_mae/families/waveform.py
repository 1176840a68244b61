"""What wav2vec 2.0, HuBERT and WavLM share as families: one Family each (wav2vec2.py, hubert.py, wavlm.py give its
name and the name its files store), their files read by wav2vec2_files.py, their encoder encoders/wav2vec2.py.

A file is WavLM's if it holds the relative position table, HuBERT's or wav2vec 2.0's by the model name it stores;
a torchaudio state dict stores none, and wav2vec 2.0 and HuBERT share the architecture, so both claim it: the
family's module (or load_model(..., family=...)) decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from . import wav2vec2_files
from ..family import Checkpoint, Family, ReferenceRecipe
from ..encoders.wav2vec2 import Wav2Vec2Encoder

DEFAULT_UNIT_SAMPLES = 400 + 320 * 999  # 1000 frames (20 s) a window: the README says what windows cost


@dataclass(frozen=True)
class Variant:
    name: str  # "hubert"
    title: str  # "HuBERT"
    module: str  # its HEAR module
    stored_names: Tuple[str, ...] = ()  # the model names its files store: cfg.model._name, args.arch, model_type
    relative_attention: bool = False  # WavLM's relative position bias (its table tells its files)


def claims(variant: Variant, contents: Dict[str, Any]) -> bool:
    """Is this file one of `variant`'s?"""
    kind = wav2vec2_files.layout(contents)
    if kind is None:
        return False
    if wav2vec2_files.has_relative_table(contents, kind):
        return variant.relative_attention
    name = wav2vec2_files.stored_name(contents, kind)
    return not variant.relative_attention and (name in variant.stored_names or kind == "torchaudio" and name is None)


def read_checkpoint(family: Family, variant: Variant, path: Path, contents: Dict[str, Any],
                    unit_frames: Optional[int] = None) -> Checkpoint:
    kind = wav2vec2_files.layout(contents)
    try:
        config, weights, frontend = wav2vec2_files.read(contents, kind, variant.relative_attention)
        grid = config.token_grid(DEFAULT_UNIT_SAMPLES if unit_frames is None else unit_frames)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: {variant.title} file ({kind} layout): {e}") from None
    return Checkpoint(path, family, config, grid, frontend, weights, None, contents)


def waveform_family(variant: Variant) -> Family:
    """The Family of wav2vec 2.0, HuBERT or WavLM: mode="reference" is the family's own code on the whole clip
    (one pass, the frames of its whole 400-sample windows, at their centres 12.5 + 20 i ms)."""
    def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
        return read_checkpoint(family, variant, path, contents, unit_frames)

    family = Family(
        name=variant.name, title=variant.title, module=variant.module,
        looks_like=lambda contents: claims(variant, contents), read=read, encoder=Wav2Vec2Encoder,
        default_norm_stats=(0.0, 1.0), timestamp_hop_ms=20.0,
        reference=ReferenceRecipe(whole_clip=True, whole_columns_only=True, trailing_frames=True),
        safe_globals=wav2vec2_files.SAFE_GLOBALS)
    return family
