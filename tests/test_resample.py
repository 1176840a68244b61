"""hear_msm_mae.audio's resampling against ffmpeg + libsoxr run the way hear-preprocess ran it (Debian's ffmpeg,
installed by the Makefile's system-deps), streaming in bounded memory, and eval.embed on a 48 kHz task against
the same task's 16 kHz folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from eval.embed import embed_tasks, load_module, peak_rss_mb, reset_peak_rss
from eval.embedded import load_task_data
from hear_msm_mae.audio import mono_at_rate, read_blocks, resample_file
from hear_preprocess import FFMPEG, ffmpeg_resample
from test_eval_tasks import make_task

needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (make system-deps installs it)")


def signal(rate: int, frames: int, seed: int = 0) -> np.ndarray:
    """Noise, tones near the new Nyquist and a burst near full scale, as 16-bit samples."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    x = 0.2 * rng.standard_normal(frames) + 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 7900 * t)
    x[frames // 3:frames // 3 + 200] = 0.999
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def ours(path: Path, rate: int, block_frames: int = 1 << 16) -> np.ndarray:
    source_rate, _, blocks = read_blocks(path, block_frames)
    return np.round(mono_at_rate(blocks, source_rate, rate) * 32768).astype(np.int16)


@needs_ffmpeg
@pytest.mark.parametrize("source_rate,rate,frames", [(48000, 16000, 48000 * 3), (48000, 16000, 48005),
                                                     (44100, 16000, 44100 * 2 + 7), (48000, 32000, 48000),
                                                     (22050, 16000, 22050), (16000, 32000, 16001)])
def test_identical_to_ffmpeg_soxr_with_a_float_internal_format(tmp_path, source_rate, rate, frames):
    source = tmp_path / "in.wav"
    soundfile.write(str(source), signal(source_rate, frames), source_rate, subtype="PCM_16")
    expected = ffmpeg_resample(source, tmp_path / "ffmpeg.wav", rate, ":tsf=fltp")
    np.testing.assert_array_equal(ours(source, rate), expected)  # every sample, and the length
    np.testing.assert_array_equal(ours(source, rate, block_frames=1000), expected)  # whatever the block size
    resample_file(source, tmp_path / "ours.wav", rate)
    info = soundfile.info(str(tmp_path / "ours.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (rate, 1, "PCM_16")
    np.testing.assert_array_equal(soundfile.read(str(tmp_path / "ours.wav"), dtype="int16")[0], expected)


@needs_ffmpeg
def test_within_one_lsb_of_hear_preprocess_whose_ffmpeg_dithers(tmp_path):
    """With 16-bit input and output ffmpeg hands libsoxr integers, and libsoxr adds TPDF dither seeded from the
    clock: two ffmpeg runs differ from each other (by up to 2 LSB, benchmarks/resample_fidelity.py), each from us
    by at most 1."""
    source = tmp_path / "in.wav"
    soundfile.write(str(source), signal(48000, 48000 * 4), 48000, subtype="PCM_16")
    first, second = (ffmpeg_resample(source, tmp_path / f"ffmpeg{i}.wav", 16000).astype(int) for i in (1, 2))
    mine = ours(source, 16000).astype(int)
    assert len(first) == len(mine) == 64000
    assert np.abs(mine - first).max() == 1 and np.abs(mine - second).max() == 1
    assert (mine == first).mean() > 0.5 and np.abs(mine - first).mean() < 0.5
    assert np.array_equal(mine, ours(source, 16000))  # we are deterministic


def test_a_ten_minute_clip_is_resampled_in_bounded_memory(tmp_path):
    """Beehive's 10-minute 48 kHz clips: the file is read in blocks, never whole (115 MB as float32)."""
    source = tmp_path / "ten_minutes.wav"
    with soundfile.SoundFile(str(source), "w", 48000, 1, "PCM_16") as f:
        for seed in range(60):
            f.write(signal(48000, 480000, seed))
    reset_peak_rss()
    before = peak_rss_mb()
    resample_file(source, tmp_path / "out.wav", 16000)
    assert peak_rss_mb() - before < 40
    assert soundfile.info(str(tmp_path / "out.wav")).frames == 600 * 16000


def test_a_48khz_task_embeds_as_its_16khz_folder(tmp_path, tiny_checkpoint):
    """eval.embed on a task with only a 48000/ folder gives the embeddings of the same task with the 16000/
    folder hear_msm_mae.audio writes (eval.data resample) — bit for bit, so the same scores."""
    task = make_task(tmp_path / "a", "scene-v0-full", sample_rate=48000, files_per_split=3)
    shutil.copytree(task.parent, tmp_path / "b")
    for wav in (tmp_path / "b" / task.name / "48000").rglob("*.wav"):
        resample_file(wav, tmp_path / "b" / task.name / "16000" / wav.parent.name / wav.name, 16000)
    shutil.rmtree(tmp_path / "b" / task.name / "48000")
    loaded = load_module("hear_msm_mae", tiny_checkpoint, {"dtype": "float32"}, torch.device("cpu"))
    embedded = {side: embed_tasks(loaded, tmp_path / side, tmp_path / f"emb-{side}") / task.name for side in "ab"}
    a, b = (load_task_data(embedded[side]) for side in "ab")
    for split in a.splits:
        np.testing.assert_array_equal(a.splits[split].embeddings, b.splits[split].embeddings)
    assert (embedded["a"] / "audio-digest.json").read_text() != (embedded["b"] / "audio-digest.json").read_text()


def test_hear_msm_mae_embed_reads_a_48khz_file_as_its_16khz_version(tmp_path, tiny_checkpoint):
    from hear_msm_mae import cli

    soundfile.write(str(tmp_path / "clip48.wav"), signal(48000, 48000 * 2), 48000, subtype="PCM_16")
    resample_file(tmp_path / "clip48.wav", tmp_path / "clip16.wav", 16000)
    cli.main(["embed", str(tmp_path / "clip48.wav"), str(tmp_path / "clip16.wav"), "--out", str(tmp_path / "out"),
              "--checkpoint", str(tiny_checkpoint), "--dtype", "float32", "--device", "cpu"])
    for kind in ("scene", "timestamp"):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"clip48.{kind}.npy"),
                                      np.load(tmp_path / "out" / f"clip16.{kind}.npy"))
