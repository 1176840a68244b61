"""Audio files as a model takes them: mono float32 at its sample rate, resampled the way hear-preprocess made
the HEAR 2021 tasks' sample-rate folders.

hear-preprocess 2021 (hearbenchmark/hear-preprocess, hearpreprocess/util/audio.py `resample_wav`) converted
every 16-bit mono WAV with ffmpeg's `aresample=resampler=soxr` filter at its defaults into a 16-bit PCM file:
libsoxr's "high quality" recipe (20-bit precision, linear phase), the clip fed and drained as one stream.
`mono_at_rate` runs the same libsoxr recipe through python-soxr's `ResampleStream` (quality "HQ", float32,
as ffmpeg does with a float internal format) in blocks of `BLOCK_FRAMES` input frames, so a 10-minute 48 kHz
clip never exists in memory at more than its output size, and rounds the result to 16 bits, as the PCM
file holds it. Measured against ffmpeg 5.1 (benchmarks/resample_fidelity.py, tests/test_resample.py): with
ffmpeg's internal format set to float (`aresample=resampler=soxr:tsf=fltp`) every sample is identical, every
output length too; ffmpeg's default for 16-bit input and output, the one hear-preprocess ran, hands libsoxr
16-bit integers and libsoxr then adds TPDF dither from a clock-seeded generator, so ffmpeg differs from
itself by up to 2 LSB between two runs and from us by at most 1 LSB. Ours is deterministic.

A clip already at the wanted rate is returned as read (hear-preprocess links such files unchanged).
Channels are averaged (ffmpeg's downmix of hear-preprocess's `ac=1` for stereo).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Tuple

import numpy as np
import soundfile
import soxr
import torch

from .atomic import atomic_write

BLOCK_FRAMES = 1 << 16  # input frames read and resampled at a time
QUALITY = "HQ"  # libsoxr's recipe at ffmpeg's default precision (20 bits)
PCM_SCALE = 32768  # 16-bit full scale, as soundfile reads and writes PCM_16


def read_blocks(path, block_frames: int = BLOCK_FRAMES) -> Tuple[int, int, Iterator[np.ndarray]]:
    """(sample rate, channels, blocks): the file's samples in blocks (n, channels) float32, as stored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise ValueError(f"{path}: cannot read audio: {e}") from None
    blocks = soundfile.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True)
    return info.samplerate, info.channels, blocks


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples rounded to the nearest 16-bit value (half to even, as ffmpeg's float-to-s16), as float32."""
    return (np.clip(np.round(samples * PCM_SCALE), -PCM_SCALE, PCM_SCALE - 1) / PCM_SCALE).astype(np.float32)


def resampled(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> Iterator[np.ndarray]:
    """Mono blocks (n,) at `rate` -> mono blocks at `sample_rate`, rounded to 16 bits (see the module docstring)."""
    stream = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=QUALITY)
    for block in blocks:
        yield to_pcm16(stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32)))
    yield to_pcm16(stream.resample_chunk(np.zeros(0, np.float32), last=True))


def mono_blocks_at_rate(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> Iterator[np.ndarray]:
    """Blocks (n, channels) at `rate` -> mono blocks (m,) float32 at `sample_rate`."""
    mono = (block.mean(axis=1, dtype=np.float32) for block in blocks)
    return mono if rate == sample_rate else resampled(mono, rate, sample_rate)


def mono_at_rate(blocks: Iterable[np.ndarray], rate: int, sample_rate: int) -> np.ndarray:
    """Blocks (n, channels) at `rate` -> the clip (S,) float32, mono, at `sample_rate`."""
    parts = list(mono_blocks_at_rate(blocks, rate, sample_rate))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def load_audio(path, sample_rate: int) -> torch.Tensor:
    """Any file soundfile reads -> (S,) float32: channels averaged, resampled to `sample_rate`."""
    rate, _, blocks = read_blocks(path)
    try:
        audio = mono_at_rate(blocks, rate, sample_rate)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise ValueError(f"{path}: cannot read audio: {e}") from None
    if audio.shape[0] == 0:
        raise ValueError(f"{path}: contains no audio samples")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path}: contains NaN or Inf samples")
    return torch.from_numpy(audio)


def resample_file(source, target, sample_rate: int) -> None:
    """Write `source` as a mono 16-bit WAV at `sample_rate` (hear-preprocess's rate folders), streaming, atomically."""
    rate, _, blocks = read_blocks(source)
    with atomic_write(target) as f, soundfile.SoundFile(f, "w", sample_rate, 1, "PCM_16", format="WAV") as out:
        for block in mono_blocks_at_rate(blocks, rate, sample_rate):
            out.write((to_pcm16(block) * PCM_SCALE).astype(np.int16))
