"""CED (Dinkel et al., "CED: Consistent ensemble distillation for audio tagging", ICASSP 2024): HEAR module
`hear_msm_mae.ced`.

Files (github.com/RicherMans/CED; zenodo records 8275319 and 8275347): the AudioSet taggers
audiotransformer_{tiny,mini,small,base}_mAP_*.pt, {'config': the training config (its `model_args`),
'model': state dict} or the bare state dict, their classifier `outputlayer.*` dropped here; the MAE-pretrained
encoders audiotransformer_*_mae_as_10s.pt, the same names without the classifier. Read as
families/audio_transformer.py says: the 64-mel dB front end, init_bn as per-bin statistics, 16x16 patches (4
per column, a column every 160 ms), time + frequency positions as one table of 63 columns (1008 frames);
heads width / 64 (3, 4, 6, 12).
Default mode: units of 63 columns, the last one only as wide as it needs; each clip floored at its own
maximum - 120 dB; a frame is a column's 4 patches averaged (as HEAR_CED does), every 40 ms by shifted copies.
mode="reference" is CED's own HEAR wrapper, HEAR_CED (hear_ced/hear_wrapper.py, `HearCEDWrapper`), below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch.nn import functional as F

from ..family import Checkpoint, Family, ReferenceRecipe
from ..encoders.vit import VisionTransformer
from . import audio_transformer

PATCH = (16, 16)


class HearCED:
    """HEAR_CED's embeddings (family.ReferenceWrapper), over the engine's front end, normalisation and encoder.

    Timestamps: the clip zero-padded by WINDOW // 2 before and WINDOW - WINDOW // 2 after, a WINDOW-sample
    window every HOP samples (S // HOP + 1 of them, at k * 50 ms), all windows of all clips of the call under
    one top_db floor (the loudest window's maximum - 120 dB); each window is 48 frames, 3 whole columns, and
    its embedding the mean of its columns. Scene: the whole clips under one floor for the call; a clip of at
    most CHUNK frames is one unit of its whole columns (frames after the last dropped), a longer one is cut
    into CHUNK-frame chunks (the last 4 frames of each dropped by the patch grid), a partial last chunk padded
    with zeros after init_bn and a whole last chunk dropped, as CED does; the scene is the mean of every
    column of every chunk, padding included. Encoder calls hold at most `batch_tokens` tokens.
    """

    WINDOW, HOP, CHUNK = 7677, 800, 1012  # samples, samples, frames (CED's target_length)

    def embedding_sizes(self, model: Any) -> Tuple[int, int]:
        """The engine's column embeddings (any `layers`, `freq_pool`), the scene their mean."""
        return model.timestamp_embedding_size, model.timestamp_embedding_size

    def timestamp_embeddings(self, model: Any, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n_clips = audio.shape[0]
        windows = F.pad(audio, (self.WINDOW // 2, self.WINDOW - self.WINDOW // 2)).unfold(-1, self.WINDOW, self.HOP)
        per_call = self._units_per_call(model, model.frontend.num_frames(self.WINDOW))
        # each window floored at its own maximum, then all at the loudest one's: one floor for all, as in one call
        x = torch.cat([model.frontend(part) for clip in windows for part in clip.split(per_call)])
        x = model.normalise(torch.maximum(x, x.amax() - model.frontend.config.top_db))  # (B * n, F, 48)
        frames = self._encode(model, x.unsqueeze(1)).mean(dim=1).reshape(n_clips, windows.shape[1], -1)
        stamps = torch.arange(windows.shape[1], dtype=torch.float32, device=audio.device) * model.timestamp_hop_ms
        return frames, stamps.repeat(n_clips, 1)

    def scene_embeddings(self, model: Any, audio: torch.Tensor) -> torch.Tensor:
        x = model.normalised_features(audio)  # (B, F, T), one floor for the batch
        (n_clips, n_bins, frames), chunk = x.shape, self.CHUNK
        if frames <= chunk:
            units = x.unsqueeze(1)  # (B, 1, F, T)
        else:
            chunks = frames // chunk + (1 if frames % chunk else -1)
            x = F.pad(x, (0, max(0, chunks * chunk - frames)))[..., :chunks * chunk]
            units = x.reshape(n_clips, n_bins, chunks, chunk).transpose(1, 2).reshape(-1, 1, n_bins, chunk)
        return self._encode(model, units).reshape(n_clips, -1, model.timestamp_embedding_size).mean(dim=1)

    @staticmethod
    def _units_per_call(model: Any, frames: int) -> int:
        return max(1, model.options.batch_tokens // model.grid.unit_tokens(frames // model.grid.patch_frames))

    def _encode(self, model: Any, units: torch.Tensor) -> torch.Tensor:
        """(N, 1, F, w) units -> (N, columns, E): their whole columns (frames after the last dropped), in bounded
        encoder calls."""
        patch = model.grid.patch_frames
        if units.shape[-1] < patch:
            raise ValueError(f"a clip of {units.shape[-1]} frames is shorter than one patch column ({patch} frames), "
                             "which CED's own code cannot embed; mode='default' pads it")
        units = units[..., :units.shape[-1] // patch * patch]
        per_call = self._units_per_call(model, units.shape[-1])
        return torch.cat([model.encode_units(part) for part in units.split(per_call)])


def looks_like(contents: Dict[str, Any]) -> bool:
    return audio_transformer.looks_like(audio_transformer.weights(contents), PATCH)


def read(path: Path, contents: Dict[str, Any], unit_frames: Optional[int] = None) -> Checkpoint:
    return audio_transformer.read(path, contents, audio_transformer.weights(contents), FAMILY, {})


FAMILY = Family(
    name="ced", title="CED", module="hear_msm_mae.ced", looks_like=looks_like, read=read,
    encoder=VisionTransformer, default_norm_stats=(0.0, 1.0),  # unused: every file has its init_bn statistics
    freq_pool="mean", reference=ReferenceRecipe(
        batch_top_db=True, timestamp_hop_ms=HearCED.HOP * 1000 / audio_transformer.FRONTEND.sample_rate,
        wrapper=HearCED()))
