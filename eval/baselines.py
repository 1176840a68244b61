"""The two references the model card puts an MSM-MAE checkpoint beside, as one HEAR 2021 module.

    python -m eval.run --module eval.baselines --model-options '{"reference": "log-mel"}' ...
    python -m eval.run --module eval.baselines --model CKPT --model-options '{"reference": "random"}' ...

- `reference="log-mel"` (no model file): the mean and the standard deviation over time of each of the 80
  log-mel bins of MSM-MAE's front end (hear_msm_mae.frontend.LogMelSpectrogram: 16 kHz, 25 ms windows
  every 10 ms), 160 values. Scene: over the whole clip. Timestamps: over the window a timestamp embedding
  of a 16x16-patch model covers, 16 frames (160 ms), every 4 frames (40 ms), at the window's centre.
- `reference="random"` (model file: an MSM-MAE checkpoint, by default the bundled one; other options:
  load_model's): the checkpoint's network with random weights, MAE's initialisation drawn with seed 0,
  through the same engine as the checkpoint (front end, normalisation, units, timestamps).

If a checkpoint beats these, its numbers mean something: the first says what the spectrogram's plain
statistics already give, the second what the architecture gives without training. `make demo`
(eval.run.reference_runs) and benchmarks/probe_quality.py run both beside the bundled checkpoint.
Embeddings: float32, (n_sounds, 160) and (n_sounds, n, 160) for log-mel statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from hear_msm_mae import default_checkpoint, get_scene_embeddings, get_timestamp_embeddings
from hear_msm_mae.checkpoint import load_checkpoint
from hear_msm_mae.embedder import Embedder, EmbedderOptions
from hear_msm_mae.frontend import LogMelSpectrogram
from hear_msm_mae.precision import resolve_dtype
from hear_msm_mae.pretrain.mae import MAEConfig, MaskedAutoencoder

__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]
REFERENCES = ("log-mel", "random")
RANDOM_SEED = 0


@dataclass(frozen=True)
class LogMelStatisticsConfig:
    window_frames: int = 16  # a timestamp embedding's window: one column of 16-frame patches (160 ms)
    hop_frames: int = 4  # between timestamps (40 ms, the HEAR modules' default hop)


class LogMelStatistics(nn.Module):
    """(B, S) audio -> per-bin mean and std (ddof 1) of its log-mel: scene (B, 160), timestamps (B, n, 160)."""

    def __init__(self, config: LogMelStatisticsConfig = LogMelStatisticsConfig()):
        super().__init__()
        self.config = config
        self.frontend = LogMelSpectrogram()
        self.sample_rate = self.frontend.sample_rate
        self.frame_ms = self.frontend.hop_length * 1000 / self.sample_rate
        self.scene_embedding_size = self.timestamp_embedding_size = 2 * self.frontend.n_bins
        self.timestamp_hop_ms = config.hop_frames * self.frame_ms

    @property
    def device(self) -> torch.device:
        return self.frontend.window.device

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        lms = self.frontend(audio)  # (B, 80, T)
        return torch.cat([lms.mean(-1), lms.std(-1)], dim=1)

    def timestamp_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        lms = self.frontend(audio)  # (B, 80, T), frame i centred at i * 10 ms
        if lms.shape[-1] < c.window_frames:
            raise ValueError(f"audio of {audio.shape[-1]} samples is shorter than one {c.window_frames}-frame "
                             f"window ({(c.window_frames - 1) * self.frame_ms:g} ms)")
        windows = lms.unfold(-1, c.window_frames, c.hop_frames)  # (B, 80, n, window)
        embeddings = torch.cat([windows.mean(-1), windows.std(-1)], dim=1).transpose(1, 2)  # (B, n, 160)
        centres = (np.arange(windows.shape[2]) * c.hop_frames + (c.window_frames - 1) / 2) * self.frame_ms
        stamps = torch.as_tensor(centres, dtype=torch.float32, device=audio.device)
        return embeddings.contiguous(), stamps.expand(audio.shape[0], -1)


def random_weights(model_file_path, device: torch.device, **options) -> Embedder:
    """The MSM-MAE checkpoint's network with MAE's initialisation (seed RANDOM_SEED, the caller's random
    state untouched), in the HEAR modules' engine with their `options`."""
    embedder_options = EmbedderOptions.from_kwargs(**options)
    checkpoint = load_checkpoint(model_file_path, "msm_mae")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        encoder = MaskedAutoencoder(MAEConfig(encoder=checkpoint.config), decoder=False)
    encoder = encoder.to(device, resolve_dtype(embedder_options.dtype, device)).eval()
    return Embedder(encoder, checkpoint, embedder_options).to(device).eval()


def load_model(model_file_path: str = "", device: Optional[Union[str, torch.device]] = None,
               reference: str = "log-mel", **options) -> nn.Module:
    """One reference as a HEAR model in eval mode on `device` (CUDA when available, else CPU)."""
    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if reference == "log-mel":
        if model_file_path or options:
            raise ValueError("the log-mel reference reads no model file and takes no options, got "
                             f"{model_file_path!r} and {options}")
        return LogMelStatistics().to(device).eval()
    if reference == "random":
        return random_weights(model_file_path or default_checkpoint(), device, **options)
    raise ValueError(f"unknown reference {reference!r}; eval.baselines has {list(REFERENCES)}")

