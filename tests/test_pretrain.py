"""Pre-training: log-mel cache, training step, checkpoint layout, resume, DDP, visualize, installed default."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import hear_msm_mae
from hear_msm_mae.checkpoint import load_checkpoint, read_file
from hear_msm_mae.cli import main as cli_main
from hear_msm_mae.pretrain.mae import MAEConfig, MaskedAutoencoder
from hear_msm_mae.pretrain.data import CropDataset, build_cache
from hear_msm_mae.pretrain.trainer import PretrainConfig, Trainer, train

from conftest import REPO, golden_checkpoint

# The golden checkpoints' architecture: 192-d, 2 layers, decoder 128-d, 1 layer
TINY = dict(model="tiny", depth=2, decoder_depth=1, decoder_num_heads=2)
CLIPS, HOLDOUT = 24, 2  # files in the shared audio folder; files kept out of training


def key_shapes(state_dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def write_clips(folder: Path, count: int, seed: int = 0) -> None:
    """Short clips of tones, chirps and noise at mixed rates and channel counts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rate = (16000, 22050, 44100)[i % 3]
        t = np.arange(int(rate * rng.uniform(1.0, 3.0))) / rate
        f0 = rng.uniform(150, 1500)
        tone = np.sin(2 * np.pi * (f0 + rng.uniform(-1, 1) * 200 * t) * t) * (t % rng.uniform(0.2, 0.6) < 0.15)
        audio = 0.3 * tone + 0.03 * rng.standard_normal(len(t))
        if i % 4 == 1:
            audio = np.stack([audio, 0.5 * audio], axis=1)  # stereo
        soundfile.write(str(folder / f"clip{i:02d}.{'flac' if i % 5 == 0 else 'wav'}"), audio, rate)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    write_clips(folder, CLIPS)
    return folder


@pytest.fixture(scope="module")
def cache_dir(audio_dir, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("lms")
    build_cache([audio_dir], cache)
    return cache


def tiny_config(audio_dir, cache_dir, out, **changes) -> PretrainConfig:
    settings = dict(audio=[str(audio_dir)], out=str(out), cache=str(cache_dir), epochs=2, batch_size=4,
                    warmup_epochs=0.5, lr=1e-3, precision="float32", num_workers=0, convert_workers=1,
                    save_every=100, recon_every=100, holdout=HOLDOUT, **TINY)
    settings.update(changes)
    return PretrainConfig(**settings)


# -- data ----------------------------------------------------------------------------------------------

def test_cache_converts_once_skips_corrupt_files_by_name(tmp_path, capsys):
    audio = tmp_path / "audio"
    write_clips(audio / "a", 3)
    write_clips(audio / "b", 2, seed=1)
    (audio / "b" / "broken.wav").write_bytes(b"RIFF0000WAVEnot really audio")
    soundfile.write(str(audio / "b" / "empty.wav"), np.zeros((0,)), 16000)
    cache = tmp_path / "cache"

    first = build_cache([audio / "a", audio / "b"], cache, workers=2)
    err = capsys.readouterr().err
    assert len(first.files) == 5
    assert sorted(p.name for p, _ in first.failed) == ["broken.wav", "empty.wav"]
    assert "broken.wav" in err and "empty.wav" in err
    lms = np.load(first.files[0])
    assert lms.dtype == np.float32 and lms.shape[0] == 80
    assert not list(cache.rglob("*.tmp"))

    # a second run converts only the lost cache file (and tries the two bad files again)
    stamps = {p: p.stat().st_mtime_ns for p in first.files}
    first.files[1].unlink()
    second = build_cache([audio / "a", audio / "b"], cache, workers=1)
    assert "4 of 7 files done, converting 3" in capsys.readouterr().err
    assert second.files == first.files
    assert all(p.stat().st_mtime_ns == stamps[p] for p in first.files if p != first.files[1])


def test_crops_are_normalised_padded_and_reproducible(cache_dir):
    files = sorted(cache_dir.rglob("*.npy"))
    dataset = CropDataset(files, 208, mean=-5.0, std=3.0, seed=1)
    short = next(i for i, f in enumerate(files) if np.load(f).shape[1] < 208)
    unit = dataset[short]
    frames = np.load(files[short]).shape[1]
    assert unit.shape == (1, 80, 208)
    assert torch.all(unit[..., frames:] == 0)
    assert torch.allclose(unit[0, :, :frames], (torch.from_numpy(np.load(files[short])) + 5.0) / 3.0)
    long = next(i for i, f in enumerate(files) if np.load(f).shape[1] > 250)
    dataset.set_epoch(0)
    a = dataset[long]
    dataset.set_epoch(1)
    b, c = dataset[long], dataset[long]
    assert torch.equal(b, c) and not torch.equal(a, b)


# -- training ------------------------------------------------------------------------------------------

def test_one_step_changes_weights_and_lowers_loss_on_a_fixed_batch(audio_dir, cache_dir, tmp_path):
    trainer = Trainer(tiny_config(audio_dir, cache_dir, tmp_path / "run", warmup_epochs=0))
    batch = torch.stack([trainer.dataset[i] for i in range(4)])
    mask = (torch.rand(4, 65, generator=torch.Generator().manual_seed(0)).argsort(1) >= 16).float()

    def fixed_loss():
        with torch.no_grad():
            return float(trainer.model(batch, mask=mask)[0])

    before_weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = fixed_loss()
    trainer.train_step(batch)
    after = fixed_loss()
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before_weights[k])]
    assert after < before
    assert "blocks.0.attn.qkv.weight" in changed and "decoder_pred.weight" in changed
    assert "pos_embed" not in changed  # fixed sin-cos table
    assert trainer.step == 1


def test_checkpoint_layout_is_the_official_one(audio_dir, cache_dir, tmp_path):
    golden = read_file(golden_checkpoint())
    run = tmp_path / "run"
    train(tiny_config(audio_dir, cache_dir, run, epochs=1))
    saved = read_file(run / "checkpoint-0.pth")
    assert key_shapes(saved["model"]) == key_shapes(golden["model"])
    assert saved["epoch"] == 0 and vars(saved["args"])["input_size"] == [80, 208]
    assert saved["args"].mask_ratio == 0.75 and saved["args"].model == "mae_vit_tiny_patch16x16"
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "norm_stats"} <= set(saved)
    final = read_file(run / "model.pth")
    assert key_shapes(final["model"]) == key_shapes(golden["model"])
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(final)

    # ViT-Base (the paper's) as the trainer builds and saves it = MaskedAutoencoder(MAEConfig())
    base = Trainer(tiny_config(audio_dir, cache_dir, tmp_path / "base", model="base", depth=None,
                               decoder_depth=None, decoder_num_heads=None))
    base.save(tmp_path / "base" / "base.pth", training_state=False)
    assert key_shapes(read_file(tmp_path / "base" / "base.pth")["model"]) == \
        key_shapes(MaskedAutoencoder(MAEConfig()).state_dict())


def test_saved_model_round_trips_through_load_model(audio_dir, cache_dir, tmp_path):
    run = tmp_path / "run"
    model = train(tiny_config(audio_dir, cache_dir, run, epochs=1))
    stats = json.loads((run / "dataset.json").read_text())
    embedder = hear_msm_mae.load_model(str(run / "model.pth"), device="cpu", dtype="float32")
    assert embedder.norm_stats == (stats["mean"], stats["std"])
    encoder = embedder.encoder.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("decoder_") and key != "mask_token":
            assert torch.equal(encoder[key], value), key
    audio = torch.from_numpy(soundfile.read(str(sorted(audio_dir.glob("*.wav"))[0]))[0]).float()
    scene = hear_msm_mae.get_scene_embeddings(torch.randn(2, 16000) * 0.1, embedder)
    assert scene.shape == (2, 5 * 192) and torch.isfinite(scene).all() and audio.numel() > 0
    assert load_checkpoint(run / "checkpoint-last.pth").config == model.config.encoder


def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(audio_dir, cache_dir, tmp_path):
    steady = train(tiny_config(audio_dir, cache_dir, tmp_path / "steady", epochs=2))
    interrupted = tiny_config(audio_dir, cache_dir, tmp_path / "resumed", epochs=2)
    steps_per_epoch = (CLIPS - HOLDOUT) // 4
    train(replace(interrupted, stop_after_steps=steps_per_epoch + 2))  # stops inside the second epoch
    assert read_file(tmp_path / "resumed" / "checkpoint-last.pth")["step"] == steps_per_epoch + 2
    resumed = train(interrupted)
    for key, value in steady.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    log = [json.loads(l) for l in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(l) for l in (tmp_path / "steady" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 2 * steps_per_epoch + 1))
    assert [r["loss"] for r in log] == [r["loss"] for r in reference]


def test_two_process_gloo_ddp_lowers_loss_and_keeps_ranks_identical(audio_dir, cache_dir, tmp_path):
    config = tiny_config(audio_dir, cache_dir, tmp_path / "run", epochs=6, batch_size=3, lr=2e-3, warmup_epochs=1)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from hear_msm_mae.pretrain.trainer import PretrainConfig, train
        torch.set_num_threads(1)
        model = train(PretrainConfig(**{config.__dict__!r}))
        torch.save(model.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.pt")
    """))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             "2", str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps_per_epoch = (CLIPS - HOLDOUT) // 2 // 3
    assert len(log) == 6 * steps_per_epoch  # the global batch is 2 x 3: each rank sees half the files
    losses = [r["loss"] for r in log]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    saved = read_file(tmp_path / "run" / "checkpoint-last.pth")
    assert len(saved["rng"]) == 2


# -- pictures and the installed package -----------------------------------------------------------------

def test_training_pictures_and_visualize_command(audio_dir, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(audio_dir, cache_dir, run, epochs=2, recon_every=1))
    for name in ("loss.png", "recon-epoch0.png", "recon-epoch1.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    clip = sorted(audio_dir.glob("*.wav"))[1]
    out = tmp_path / "recon.png"
    cli_main(["visualize", "--checkpoint", str(run / "model.pth"), str(clip), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "loss on masked patches" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no decoder"):
        encoder_only = tmp_path / "encoder.pth"
        state = read_file(run / "model.pth")
        state["model"] = {k: v for k, v in state["model"].items() if not k.startswith(("decoder", "mask_token"))}
        torch.save(state, encoder_only)
        cli_main(["visualize", "--checkpoint", str(encoder_only), str(clip), "--out", str(out)])


def test_installed_package_finds_its_default_checkpoint(tmp_path):
    """pip install (not editable) of what git tracks, as from a clean clone; run from another folder."""
    clone, target = tmp_path / "clone", tmp_path / "site"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(clone)], check=True, capture_output=True, timeout=300)
    code = ("import hear_msm_mae, torch; from hear_msm_mae import default_checkpoint; "
            "m = hear_msm_mae.load_model(); "
            "print(hear_msm_mae.__file__, default_checkpoint(), "
            "hear_msm_mae.get_scene_embeddings(torch.zeros(1, 16000), m).shape[1])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    module, checkpoint, size = result.stdout.split()
    assert module.startswith(str(target)) and checkpoint.startswith(str(target))
    grid = load_checkpoint(REPO / "checkpoints" / "msm_mae_default.pth").grid
    assert int(size) == grid.freq_patches * grid.embed_dim
