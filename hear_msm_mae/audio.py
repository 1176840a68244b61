"""Reading audio files as the model wants them: mono float32 at 16 kHz."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio



def load_audio(path, sample_rate: int) -> torch.Tensor:
    """Any file soundfile reads -> (S,) float32: channels averaged, resampled to `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
    except (RuntimeError, soundfile.LibsndfileError, ValueError) as e:
        raise ValueError(f"{path}: cannot read audio: {e}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: contains no audio samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or Inf samples")
    audio = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        audio = torchaudio.functional.resample(audio, rate, sample_rate)
    return audio
