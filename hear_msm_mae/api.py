"""The HEAR 2021 API: load_model, get_scene_embeddings, get_timestamp_embeddings."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from .checkpoint import build_model, load_checkpoint
from .embedder import Embedder, EmbedderOptions, resolve_dtype

DEFAULT_CHECKPOINT_NAME = "msm_mae_default.pth"  # in the package hear_msm_mae.checkpoints


def default_checkpoint() -> Path:
    """The checkpoint bundled with the package (the repository's checkpoints/ folder)."""
    path = Path(str(resources.files("hear_msm_mae.checkpoints") / DEFAULT_CHECKPOINT_NAME))
    if not path.is_file():
        raise FileNotFoundError(
            f"no bundled default checkpoint at {path}; pass a checkpoint path to load_model(), "
            "e.g. load_model('80x512p16x16_paper/checkpoint-100.pth')")
    return path


def load_model(model_file_path: Union[str, Path] = "", device: Optional[Union[str, torch.device]] = None,
               **options) -> Embedder:
    """Load an MSM-MAE checkpoint as a HEAR model, in eval mode, on `device` (GPU when there is one).

    `model_file_path`: an official MSM-MAE checkpoint, a state dict or one of this project's
    checkpoints; empty for the bundled default. `options`: the fields of EmbedderOptions
    (mode, norm_mean, norm_std, timestamp_hop_ms, dtype, batch_units).
    """
    embedder_options = EmbedderOptions.from_kwargs(**options)
    checkpoint = load_checkpoint(model_file_path or default_checkpoint())
    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = build_model(checkpoint, decoder=False, device=device, dtype=resolve_dtype(embedder_options.dtype, device))
    return Embedder(encoder, embedder_options, checkpoint.norm_stats).to(device).eval()


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
    if not torch.isfinite(audio).all():
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
