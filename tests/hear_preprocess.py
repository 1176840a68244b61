"""hear-preprocess's resampling, run the way it ran (hearpreprocess/util/audio.py `resample_wav`, through
ffmpeg-python): the reference of the resampling tests and of benchmarks/resample_fidelity.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile

FFMPEG = shutil.which("ffmpeg")


def ffmpeg_resample(source: Path, target: Path, rate: int, internal: str = "") -> np.ndarray:
    """ffmpeg -i IN -af aresample=resampler=soxr -ar RATE OUT.wav (16-bit PCM out of 16-bit PCM in): the
    target's int16 samples. `internal`: more aresample options, e.g. ":tsf=fltp" (a float internal format)."""
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-af",
                    f"aresample=resampler=soxr{internal}", "-ar", str(rate), str(target)], check=True)
    return soundfile.read(str(target), dtype="int16")[0]
