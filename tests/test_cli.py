"""`hear-msm-mae embed` on real files: any sample rate, stereo, written atomically."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import hear_msm_mae
from hear_msm_mae.audio import mono_at_rate
from hear_msm_mae.cli import main


def stereo_file(path: Path, seconds: float = 2.5, rate: int = 44100, subtype: str = "FLOAT") -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    left, right = 0.4 * np.sin(2 * np.pi * 330 * t), 0.2 * np.sin(2 * np.pi * 1250 * t)
    audio = np.stack([left, right], axis=1).astype(np.float32)
    soundfile.write(path, audio, rate, subtype=subtype)
    return audio


def test_embed_a_44k_stereo_wav(tiny_checkpoint, tmp_path):
    audio = stereo_file(tmp_path / "song.wav")
    out = tmp_path / "emb"
    main(["embed", str(tmp_path / "song.wav"), "--checkpoint", str(tiny_checkpoint), "--out", str(out),
          "--dtype", "float32", "--device", "cpu"])
    model = hear_msm_mae.load_model(tiny_checkpoint, device="cpu", dtype="float32")
    mono16k = torch.from_numpy(mono_at_rate([audio], 44100, 16000)).unsqueeze(0)  # as hear-preprocess resampled
    expected_scene = hear_msm_mae.get_scene_embeddings(mono16k, model)[0].numpy()
    expected_frames, expected_ms = hear_msm_mae.get_timestamp_embeddings(mono16k, model)
    np.testing.assert_allclose(np.load(out / "song.scene.npy"), expected_scene, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "song.timestamp.npy"), expected_frames[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "song.timestamps_ms.npy"), expected_ms[0].numpy())
    assert not list(out.glob(".*tmp"))


def test_embed_errors_name_the_file(tiny_checkpoint, tmp_path):
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(SystemExit, match="noise.wav"):
        main(["embed", str(tmp_path / "noise.wav"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="missing.wav"):
        main(["embed", str(tmp_path / "missing.wav"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)])


def test_console_script(tiny_checkpoint, tmp_path):
    stereo_file(tmp_path / "a.flac", seconds=1.2, rate=22050, subtype="PCM_16")
    script = Path(sys.executable).parent / "hear-msm-mae"
    result = subprocess.run([str(script), "embed", str(tmp_path / "a.flac"), "--checkpoint", str(tiny_checkpoint),
                             "--out", str(tmp_path / "out"), "--kind", "scene"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "out" / "a.scene.npy").shape == (960,)
    assert not (tmp_path / "out" / "a.timestamp.npy").exists()


@pytest.mark.parametrize("family", [None, "beats"])
def test_embed_with_another_family(tmp_path, family):
    """A BEATs checkpoint, its family named or detected from the file; the file's sample rate is converted."""
    from conftest import FAMILY_CHECKPOINTS, golden_path
    from hear_msm_mae.api import get_scene_embeddings, load_model

    checkpoint = golden_path(FAMILY_CHECKPOINTS["beats"][1])
    audio = stereo_file(tmp_path / "song.wav", seconds=1.5, rate=22050)
    out = tmp_path / "emb"
    main(["embed", str(tmp_path / "song.wav"), "--checkpoint", str(checkpoint), "--out", str(out),
          "--dtype", "float32", "--device", "cpu", "--options", '{"layers": [-2, -1]}']
         + (["--family", family] if family else []))
    model = load_model(checkpoint, "cpu", dtype="float32", layers=[-2, -1])
    mono16k = torch.from_numpy(mono_at_rate([audio], 22050, 16000)).unsqueeze(0)
    np.testing.assert_allclose(np.load(out / "song.scene.npy"), get_scene_embeddings(mono16k, model)[0].numpy(),
                               rtol=1e-5, atol=1e-5)
    assert np.load(out / "song.scene.npy").shape == (2 * 192,)
    assert np.load(out / "song.timestamp.npy").shape[1] == 2 * 192


def test_embed_refuses_a_file_of_another_family_with_its_name(tmp_path):
    from conftest import FAMILY_CHECKPOINTS, golden_path

    stereo_file(tmp_path / "song.wav", seconds=1.0)
    with pytest.raises(SystemExit, match="looks like a BEATs checkpoint"):
        main(["embed", str(tmp_path / "song.wav"), "--checkpoint", str(golden_path(FAMILY_CHECKPOINTS["beats"][1])),
              "--family", "m2d", "--out", str(tmp_path / "emb")])
