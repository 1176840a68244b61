"""The front ends: waveform (B, S) -> log features (B, n_bins, T), frequency on dim 1, time on dim 2.

`LogMelSpectrogram` (MSM-MAE, M2D): 16 kHz, 25 ms periodic Hann window (n_fft 400), 10 ms hop, 80 slaney
mel bins over 50-8000 Hz with slaney area normalisation, power 2, centred frames with reflect padding,
then log(x + eps). Frame i is centred on sample i * 160, so a clip of S samples gives S // 160 + 1 frames.
M2D's 32 kHz releases use the same at 32 kHz: n_fft 800, hop 320, 50-16000 Hz (families/m2d.py).
The same class computes torchaudio's `MelSpectrogram` + `AmplitudeToDB(top_db)` (`log="db"`, HTK mel scale
without area normalisation): 10 log10(max(x, 1e-10)), then every value raised to at least the clip's
maximum - top_db (torchaudio takes that maximum over the whole batch for (B, F, T) input: `batch_floor`).

`KaldiFbank` (Audio-MAE, AST, BEATs): `torchaudio.compliance.kaldi.fbank` with the options those models
use, batched and chunked over time. Frame i covers samples [i * hop, i * hop + win) (snip_edges), so a
clip gives 1 + (S - win) // hop frames and frame 0 is centred at win / 2. Optionally subtract the
clip's mean (Audio-MAE, AST); scale the waveform (BEATs: 2**15); then per frame, in float32: subtract
the frame mean, pre-emphasise (x[j] - 0.97 x[j - 1], x[-1] := x[0]), multiply by the symmetric
Hann window ('hanning') or its 0.85th power ('povey'), zero-pad to the next power of two (400 -> 512),
power spectrum |rfft|^2, Kaldi's triangular mel banks over 20 Hz - Nyquist (`kaldi.get_mel_banks`), then
log(max(x, float32 eps)).

`Waveform` (wav2vec 2.0, HuBERT, WavLM, whose convolutions are their own front end): the samples themselves,
one bin, one frame per sample, each clip optionally standardised over its own samples.

All three expose the `FrontEnd` attributes, so callers never need this module's constants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Union

import torch
import torchaudio
from torch import nn

LOG_EPS = torch.finfo(torch.float32).eps
DB_AMIN = 1e-10  # torchaudio's AmplitudeToDB clamps powers to this before 10 log10


class FrontEnd(Protocol):
    """What an embedding engine needs to know about a front end."""

    sample_rate: int  # Hz
    hop_length: int  # samples between frames
    n_bins: int  # features per frame
    min_samples: int  # the fewest samples it accepts (they give at least one frame)
    frame_offset_ms: float  # time of the centre of frame 0

    def num_frames(self, num_samples: int) -> int: ...

    def __call__(self, audio: torch.Tensor) -> torch.Tensor: ...  # (B, S) -> (B, n_bins, T) float32


def _check_audio(audio: torch.Tensor, min_samples: int, sample_rate: int) -> None:
    if audio.dim() != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
    if audio.shape[0] == 0:
        raise ValueError("audio is an empty batch: no clips")
    if audio.shape[-1] < min_samples:
        raise ValueError(f"audio of {audio.shape[-1]} samples is too short: the front end needs at least "
                         f"{min_samples} samples ({min_samples / sample_rate * 1000:.1f} ms at {sample_rate} Hz)")


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 16000
    n_fft: int = 400  # = the window length
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    mel_scale: str = "slaney"  # "slaney" (slaney scale, area normalised) or "htk" (htk scale, no normalisation)
    log: str = "ln"  # "ln": log(x + float32 eps); "db": 10 log10(max(x, 1e-10)) (torchaudio's AmplitudeToDB)
    top_db: Optional[float] = None  # "db": values below the maximum - top_db are raised to it

    def __post_init__(self):
        if self.mel_scale not in ("slaney", "htk") or self.log not in ("ln", "db"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk' and log 'ln' or 'db', got {self}")
        if self.top_db is not None and self.log != "db":
            raise ValueError("top_db needs log='db'")


class LogMelSpectrogram(nn.Module):
    """(B, S) float waveform -> (B, n_mels, S // hop + 1) log-mel (16 kHz: 80 bins every 10 ms).

    The STFT runs over time chunks of about `chunk_frames` frames in all (chunk_frames // B per clip; by
    default 2^20 samples of frames, 4 MB in float32): memory stays bounded on long clips, and the working
    set in cache (8 clips of 10 s against one chunk, 32 MB of ATST's 1024-sample frames: whole calls of
    ATST-Frame 1.006-1.046x, ATST-Clip 1.03x, Dasheng 1.016x, MSM-MAE 1.000x in same-process A/Bs, the
    same bits at those shapes). The result equals one STFT over the whole clip within float32 rounding (the
    mel product's sums may round differently at another chunk width: 1-2e-7 relative, seen at 20-128 clips a
    batch).
    """

    frame_offset_ms = 0.0  # centred frames

    def __init__(self, config: LogMelConfig = LogMelConfig(), chunk_frames: Optional[int] = None):
        super().__init__()
        self.config = config
        self.chunk_frames = chunk_frames or max(1, (1 << 20) // config.n_fft)
        self.sample_rate, self.hop_length, self.n_bins = config.sample_rate, config.hop_length, config.n_mels
        self.min_samples = config.n_fft // 2 + 1  # reflect padding needs more samples than it pads
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True), persistent=False)
        fbank = torchaudio.functional.melscale_fbanks(config.n_fft // 2 + 1, config.f_min, config.f_max,
                                                      config.n_mels, config.sample_rate,
                                                      norm="slaney" if config.mel_scale == "slaney" else None,
                                                      mel_scale=config.mel_scale)
        self.register_buffer("mel_fbank", fbank.T.contiguous(), persistent=False)  # (n_mels, n_fft / 2 + 1)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, audio: torch.Tensor, batch_floor: bool = False) -> torch.Tensor:
        """`batch_floor`: the top_db floor from the maximum of the whole batch (torchaudio's for (B, F, T) input)
        instead of each clip's."""
        _check_audio(audio, self.min_samples, self.sample_rate)
        n_fft, hop = self.config.n_fft, self.hop_length
        padded = nn.functional.pad(audio.float().unsqueeze(1), (n_fft // 2, n_fft // 2), mode="reflect").squeeze(1)
        total, step = self.num_frames(audio.shape[-1]), max(1, self.chunk_frames // audio.shape[0])
        out = audio.new_empty(audio.shape[0], self.n_bins, total, dtype=torch.float32)
        for start in range(0, total, step):
            stop = min(start + step, total)
            segment = padded[:, start * hop:(stop - 1) * hop + n_fft]
            spec = torch.stft(segment, n_fft, hop, window=self.window, center=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2  # (B, n_fft / 2 + 1, frames)
            mel = torch.matmul(self.mel_fbank, power)  # (B, n_mels, frames)
            if self.config.log == "ln":
                out[:, :, start:stop] = torch.log(mel + LOG_EPS)
            else:
                out[:, :, start:stop] = 10 * torch.log10(mel.clamp_(min=DB_AMIN))
        if self.config.top_db is not None:
            peak = out.amax() if batch_floor else out.amax(dim=(1, 2), keepdim=True)
            out = torch.maximum(out, peak - self.config.top_db, out=out)
        return out


@dataclass(frozen=True)
class KaldiFbankConfig:
    """The `kaldi.fbank` options that differ between Audio-MAE/AST ('hanning') and BEATs ('povey', input
    scaled by 2**15); every other option is Kaldi's default (see the module docstring)."""

    num_mel_bins: int = 128
    sample_frequency: int = 16000
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"
    input_scale: float = 1.0
    subtract_clip_mean: bool = False  # Audio-MAE's and AST's dataloaders: fbank(wave - wave.mean())

    def __post_init__(self):
        if self.window_type not in ("hanning", "povey"):
            raise ValueError(f"window_type must be 'hanning' or 'povey', got {self.window_type!r}")


class KaldiFbank(nn.Module):
    """(B, S) float waveform -> (B, num_mel_bins, 1 + (S - win) // hop) Kaldi log-mel filterbank.

    Each clip's (T, bins).T equals `torchaudio.compliance.kaldi.fbank(clip[None] * input_scale,
    num_mel_bins=..., sample_frequency=..., frame_length=..., frame_shift=..., window_type=...,
    dither=0.0)` to float32 rounding (max error 2e-6 on log features, a few ulp). Computed in
    float32, all clips at once, over time chunks of about `chunk_frames` frames in all (chunk_frames // B
    per clip): memory stays bounded on long clips, and the working set stays in cache on big batches.

    Audio-MAE's and AST's dataloaders call fbank on `wave - wave.mean()` (`subtract_clip_mean`). With
    remove_dc_offset that is a no-op in exact arithmetic but not in float32: skipping it moves log features
    by up to 3e-4 on noise and 4e-2 on a pure tone (bins holding only rounding noise), and the golden
    Audio-MAE/AST features by 4.6e-5 after normalisation. So it is done, with each clip's mean reduced as
    the reference reduces it: the golden features are reproduced to 1.2e-7.
    """

    def __init__(self, config: KaldiFbankConfig = KaldiFbankConfig(), chunk_frames: int = 2048):
        super().__init__()
        self.config, self.chunk_frames = config, chunk_frames
        self.sample_rate = config.sample_frequency
        # Kaldi's rounding of ms to samples, as torchaudio does it
        self.win_length = int(config.sample_frequency * config.frame_length_ms * 0.001)
        self.hop_length = int(config.sample_frequency * config.frame_shift_ms * 0.001)
        self.n_fft = 1 << (self.win_length - 1).bit_length()  # round_to_power_of_two: 400 -> 512
        self.n_bins, self.min_samples = config.num_mel_bins, self.win_length
        self.frame_offset_ms = self.win_length / 2 / self.sample_rate * 1000
        window = torch.hann_window(self.win_length, periodic=False)
        if config.window_type == "povey":
            window = window.pow(0.85)
        self.register_buffer("window", window, persistent=False)  # (win,)
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            config.num_mel_bins, self.n_fft, float(config.sample_frequency), 20.0, 0.0, 100.0, -500.0, 1.0)
        banks = nn.functional.pad(banks.float(), (0, 1))  # Kaldi gives the Nyquist bin no weight
        self.register_buffer("mel_banks", banks.T.contiguous(), persistent=False)  # (n_fft // 2 + 1, bins)

    def num_frames(self, num_samples: int) -> int:
        return max(0, 1 + (num_samples - self.win_length) // self.hop_length)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        _check_audio(audio, self.min_samples, self.sample_rate)
        audio = audio.float()
        offset = audio.new_zeros(audio.shape[0], 1)  # (B, 1)
        if self.config.subtract_clip_mean:
            for i, clip in enumerate(audio):  # reduced alone, as the reference does: a batched mean rounds otherwise
                offset[i] = clip.mean()
        window, mel_banks = self.window.to(audio.device), self.mel_banks.to(audio.device)
        total, step = self.num_frames(audio.shape[-1]), max(1, self.chunk_frames // audio.shape[0])
        out = audio.new_empty(audio.shape[0], self.n_bins, total)
        for start in range(0, total, step):
            stop = min(start + step, total)
            segment = audio[:, start * self.hop_length:(stop - 1) * self.hop_length + self.win_length]
            segment = (segment - offset) * self.config.input_scale
            frames = segment.unfold(1, self.win_length, self.hop_length)  # (B, n, win), a view
            frames = frames - frames.mean(dim=2, keepdim=True)  # remove_dc_offset
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)  # x[j - 1], x[-1] := x[0]
            frames = (frames - 0.97 * previous) * window
            spectrum = torch.fft.rfft(frames, n=self.n_fft)  # (B, n, n_fft // 2 + 1), zero-padded
            power = spectrum.real ** 2 + spectrum.imag ** 2  # 4x faster than abs() ** 2, within 2 float32 ulp
            log_mel = torch.matmul(power, mel_banks).clamp_min(LOG_EPS).log()  # (B, n, bins)
            out[:, :, start:stop] = log_mel.transpose(1, 2)
        return out


@dataclass(frozen=True)
class WaveformConfig:
    sample_rate: int = 16000
    min_samples: int = 400  # the encoder's receptive field: its first frame needs this many samples
    normalize_eps: Optional[float] = None  # each clip to (x - mean) / sqrt(biased var + eps); None: the raw samples


class Waveform(nn.Module):
    """(B, S) float waveform -> (B, 1, S) float32: one bin, one frame per sample (hop 1).

    With `normalize_eps`, each clip is standardised over its own samples, as the releases trained on
    normalised audio expect: F.layer_norm(clip, clip.shape) (eps 1e-5: fairseq, WavLM), or Hugging Face's feature
    extractor (eps 1e-7). Sample i spans [i, i + 1) / sample_rate, so its centre is half
    a sample in (frame_offset_ms) and samples [a, b) are centred at (a + b) / 2 / sample_rate.
    """

    hop_length = 1
    n_bins = 1

    def __init__(self, config: WaveformConfig = WaveformConfig()):
        super().__init__()
        self.config, self.sample_rate, self.min_samples = config, config.sample_rate, config.min_samples
        self.frame_offset_ms = 500 / config.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return num_samples

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        _check_audio(audio, self.min_samples, self.sample_rate)
        if self.config.normalize_eps is None:  # a copy: the engine normalises its features in place
            return audio.to(torch.float32, copy=True).unsqueeze(1)
        audio = audio.float()
        return nn.functional.layer_norm(audio, audio.shape[-1:], eps=self.config.normalize_eps).unsqueeze(1)


def build_frontend(config: Union[LogMelConfig, KaldiFbankConfig, WaveformConfig]) -> nn.Module:
    """The front end a configuration names."""
    if isinstance(config, WaveformConfig):
        return Waveform(config)
    return LogMelSpectrogram(config) if isinstance(config, LogMelConfig) else KaldiFbank(config)
