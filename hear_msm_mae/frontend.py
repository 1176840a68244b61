"""The log-mel front end: 16 kHz waveform -> log-mel spectrogram, as MSM-MAE was trained on.

25 ms periodic Hann window (n_fft 400), 10 ms hop, 80 slaney mel bins over 50-8000 Hz with
slaney area normalisation, power 2, centred frames with reflect padding, then log(x + eps).
Frame i is centred on sample i * 160, so a clip of S samples gives S // 160 + 1 frames.
"""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
F_MIN, F_MAX = 50.0, 8000.0
LOG_EPS = torch.finfo(torch.float32).eps
MIN_SAMPLES = N_FFT // 2 + 1  # reflect padding needs more samples than it pads


def num_frames(num_samples: int) -> int:
    return num_samples // HOP_LENGTH + 1


class LogMelSpectrogram(nn.Module):
    """(B, S) float waveform at 16 kHz -> (B, 80, S // 160 + 1) log-mel.

    The STFT runs over chunks of `chunk_frames` frames, so memory stays bounded for long clips;
    the result equals one STFT over the whole clip.
    """

    def __init__(self, chunk_frames: int = 6000):
        super().__init__()
        self.chunk_frames = chunk_frames
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        fbank = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, F_MIN, F_MAX, N_MELS, SAMPLE_RATE, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fbank", fbank.T.contiguous(), persistent=False)  # (80, 201)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.shape[-1] < MIN_SAMPLES:
            raise ValueError(f"audio of {audio.shape[-1]} samples is too short: the front end needs at least "
                             f"{MIN_SAMPLES} samples ({MIN_SAMPLES / SAMPLE_RATE * 1000:.1f} ms at {SAMPLE_RATE} Hz)")
        padded = nn.functional.pad(audio.float().unsqueeze(1), (N_FFT // 2, N_FFT // 2), mode="reflect").squeeze(1)
        total = num_frames(audio.shape[-1])
        out = audio.new_empty(audio.shape[0], N_MELS, total, dtype=torch.float32)
        for start in range(0, total, self.chunk_frames):
            stop = min(start + self.chunk_frames, total)
            segment = padded[:, start * HOP_LENGTH:(stop - 1) * HOP_LENGTH + N_FFT]
            spec = torch.stft(segment, N_FFT, HOP_LENGTH, window=self.window, center=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2  # (B, 201, frames)
            out[:, :, start:stop] = torch.log(torch.matmul(self.mel_fbank, power) + LOG_EPS)
        return out
