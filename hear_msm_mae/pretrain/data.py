"""Pre-training data: folders of audio -> a log-mel cache -> random crops of one input unit.

The cache holds one float32 .npy per audio file, the front end's log-mel (80, T) before
normalisation, at CACHE/<root number>_<root name>/<path inside the root>.npy. Conversion runs in
parallel worker processes, skips files already converted and writes each .npy atomically, so an
interrupted conversion resumes where it stopped. Files that cannot be read (or are too short for
the front end) are reported by name and left out.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ..atomic import atomic_write

# File name endings of the formats soundfile reads, plus common aliases.
AUDIO_SUFFIXES = frozenset({"." + name.lower() for name in soundfile.available_formats()} |
                           {".aif", ".oga", ".opus", ".wave"})


@dataclass
class CacheResult:
    files: List[Path]  # cache files of every readable audio file, in the sorted order of the sources
    failed: List[Tuple[Path, str]]  # (audio file, reason) of the files left out


def find_audio(roots: Sequence[Path]) -> List[Tuple[int, Path, Path]]:
    """(root number, root, audio file) for every audio file under the roots, sorted."""
    found = []
    for number, root in enumerate(roots):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"audio folder not found: {root}")
        found += [(number, root, p) for p in sorted(root.rglob("*"))
                  if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]
    return found


def cache_path(cache_dir: Path, number: int, root: Path, audio_file: Path) -> Path:
    relative = audio_file.relative_to(root)
    return Path(cache_dir) / f"{number}_{root.resolve().name}" / relative.with_name(relative.name + ".npy")


def _init_worker():
    torch.set_num_threads(1)


def convert(job: Tuple[Path, Path]) -> Tuple[Path, Path, Optional[str]]:
    """Audio file -> its log-mel .npy; returns (source, target, error message or None)."""
    from ..audio import load_audio
    from ..frontend import LogMelSpectrogram

    source, target = job
    try:
        frontend = LogMelSpectrogram()
        lms = frontend(load_audio(source, frontend.sample_rate).unsqueeze(0))[0]  # (80, T)
    except (ValueError, FileNotFoundError) as e:
        return source, target, str(e)
    with atomic_write(target) as f:
        np.save(f, lms.numpy().astype(np.float32))
    return source, target, None


def build_cache(roots: Sequence[Path], cache_dir: Path, workers: int = 1) -> CacheResult:
    """Convert every audio file under `roots` that has no cache file yet; report the ones that fail."""
    found = find_audio(roots)
    if not found:
        raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {[str(r) for r in roots]}")
    jobs = [(audio_file, cache_path(cache_dir, n, root, audio_file)) for n, root, audio_file in found]
    todo = [job for job in jobs if not job[1].is_file()]
    failed = {}
    if todo:
        print(f"log-mel cache {cache_dir}: {len(jobs) - len(todo)} of {len(jobs)} files done, converting "
              f"{len(todo)} with {workers} worker(s)", file=sys.stderr)
        with contextlib.ExitStack() as stack:
            if workers > 1:
                pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers, _init_worker))
                results = pool.imap_unordered(convert, todo, chunksize=4)
            else:
                results = map(convert, todo)
            for source, _, error in tqdm(results, total=len(todo), desc="log-mel cache", unit="file"):
                if error is not None:
                    failed[source] = error
                    tqdm.write(f"skipped {source}: {error}", file=sys.stderr)
    files = [target for source, target in jobs if source not in failed and target.is_file()]
    return CacheResult(files, sorted(failed.items()))


def norm_stats(files: Sequence[Path], max_files: int = 10000) -> Tuple[float, float]:
    """Mean and standard deviation of all log-mel values of (up to `max_files` evenly spread) files."""
    chosen = files[::max(1, -(-len(files) // max_files))]
    total = total_sq = count = 0.0
    for path in tqdm(chosen, desc="log-mel statistics", unit="file"):
        lms = np.load(path, mmap_mode="r").astype(np.float64)
        total, total_sq, count = total + lms.sum(), total_sq + np.square(lms).sum(), count + lms.size
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean ** 2, 0.0)))


class CropDataset(Dataset):
    """Item i: a normalised crop (1, 80, frames) of cache file i; shorter files zero-padded at the end.

    The crop offset is a function of (seed, epoch, i) only, so a resumed run sees the same data.
    """

    def __init__(self, files: Sequence[Path], frames: int, mean: float, std: float, seed: int = 0):
        self.files, self.frames, self.mean, self.std, self.seed = list(files), frames, mean, std, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        lms = np.load(self.files[index], mmap_mode="r")  # (80, T)
        start = np.random.default_rng((self.seed, self.epoch, index)).integers(0, max(lms.shape[1] - self.frames, 0) + 1)
        return crop_unit(lms, start, self.frames, self.mean, self.std)


def crop_unit(lms: np.ndarray, start: int, frames: int, mean: float, std: float) -> torch.Tensor:
    """(80, T) log-mel -> normalised (1, 80, frames) from frame `start`, zero-padded past the end."""
    unit = torch.zeros(1, lms.shape[0], frames)
    part = torch.from_numpy(np.array(lms[:, start:start + frames], dtype=np.float32))
    unit[0, :, :part.shape[1]] = (part - mean) / std
    return unit
