"""The HEAR 2021 API over every family: load_model, get_scene_embeddings, get_timestamp_embeddings.

Each family's HEAR module (hear_msm_mae for MSM-MAE, hear_msm_mae.m2d, .audiomae, .ast, .beats)
binds `load_model` to its family with `bind`; the two embedding functions are the same for all.
One clip's way: load_model reads the file (checkpoint.py, by its family in families/), builds the
encoder (encoders/) and wraps it in the engine (embedder.py: front end, units,
batches, timestamps), which the two embedding functions call after checking the audio.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Tuple, Union

import torch

from .checkpoint import build_encoder, load_checkpoint
from .embedder import Embedder, EmbedderOptions
from .families import get_family
from .family import Family
from .linear import can_pack, pack
from .precision import resolve_dtype
from .releases import resolve


def load_model(model_file_path: Union[str, Path], device: Optional[Union[str, torch.device]] = None,
               family: Optional[Union[str, Family]] = None, **options) -> Embedder:
    """A checkpoint as a HEAR model, in eval mode, on `device` (GPU when there is one).

    `model_file_path`: a file, or the name of an official checkpoint file (hear_msm_mae.releases, e.g.
    "80x512p16x16_paper/checkpoint-100.pth", "BEATs_iter3.pt"), fetched into the cache on first use.

    `family`: "msm_mae", "m2d", "audiomae", "ast", "beats", "dasheng" or "ced"; None: detected from the file.
    `options`: the fields of EmbedderOptions (mode, norm_mean, norm_std, timestamp_hop_ms, dtype,
    batch_tokens, pad_last_unit, freq_pool, layers, layer_pool, scene, unit_frames).
    """
    embedder_options = EmbedderOptions.from_kwargs(**options)
    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Ordinary tensors even when called under torch.inference_mode(): inference tensors carry no version
    # counter, which the caches of weights computed from weights (e.g. conv.SpectralWeights) key on.
    with torch.inference_mode(False):
        checkpoint = load_checkpoint(resolve(model_file_path), family, embedder_options.unit_frames)
        encoder = build_encoder(checkpoint, device=device, dtype=resolve_dtype(embedder_options.dtype, device))
        if can_pack(device):
            pack(encoder)
        return Embedder(encoder, checkpoint, embedder_options).to(device).eval()


def bind(family_name: str, default_path: Optional[Callable[[], Path]] = None) -> Callable[..., Embedder]:
    """`load_model(model_file_path, device=None, **options)` for one family's HEAR module."""
    def family_load_model(model_file_path: Union[str, Path] = "", device: Optional[Union[str, torch.device]] = None,
                          **options) -> Embedder:
        family = get_family(family_name)
        if not model_file_path:
            if default_path is None:
                raise ValueError(f"{family.module}.load_model needs the path of an official {family.title} "
                                 "checkpoint (this package ships none)")
            model_file_path = default_path()
        return load_model(model_file_path, device, family, **options)

    family_load_model.__doc__ = f"""Load a {family_name} checkpoint as a HEAR model: see hear_msm_mae.api.load_model."""
    return family_load_model


def check_audio(audio, model: Embedder) -> torch.Tensor:
    """Validate a HEAR audio batch (n_sounds, n_samples); return it as float32 on the model's device."""
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.dim() != 2:
        raise ValueError(f"audio must have shape (n_sounds, n_samples), got {audio.dim()}-D shape "
                         f"{tuple(audio.shape)}" + (" (use audio.unsqueeze(0) for one clip)" if audio.dim() == 1 else ""))
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"audio is empty: shape {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise TypeError(f"audio must be floating point in [-1, 1] at {model.sample_rate} Hz, got {audio.dtype}; "
                        "convert integer PCM first (e.g. int16 / 32768)")
    if audio.device != model.device:
        raise ValueError(f"audio is on {audio.device} but the model is on {model.device}; "
                         f"move one of them (audio.to({str(model.device)!r}))")
    audio = audio.float()
    if not torch.isfinite(torch.stack(torch.aminmax(audio))).all():  # NaN propagates to both (20x isfinite's 3 passes)
        raise ValueError("audio contains NaN or Inf samples")
    return audio


def get_scene_embeddings(audio: torch.Tensor, model: Embedder) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, model.scene_embedding_size) float32."""
    audio = check_audio(audio, model)
    with torch.inference_mode():
        return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: torch.Tensor, model: Embedder) -> Tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> ((n_sounds, n, model.timestamp_embedding_size), (n_sounds, n) ms)."""
    audio = check_audio(audio, model)
    with torch.inference_mode():
        return model.timestamp_embeddings(audio)
