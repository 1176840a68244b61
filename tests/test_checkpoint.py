"""Checkpoint reading: the accepted layouts of every family, finding a file's family, and refusing what is
unsafe, missing, corrupt, mismatched or another family's."""
import argparse
import os
import pickle
import re

import pytest
import torch

import hear_msm_mae
from hear_msm_mae.checkpoint import build_encoder, load_checkpoint
from hear_msm_mae.families.msm_mae import vit_config
from hear_msm_mae.pretrain.mae import MAEConfig, MaskedAutoencoder

from conftest import FAMILY_CHECKPOINTS, golden_path


def scene(path, audio, **options):
    return hear_msm_mae.get_scene_embeddings(audio, hear_msm_mae.load_model(path, device="cpu", dtype="float32",
                                                                            **options))


@pytest.fixture(scope="module")
def audio():
    return torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1


class CreatesFile:
    """Unpickling this would call os.system and create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "payload": CreatesFile(target)}, f)
    torch.save({"model": {"x": torch.zeros(1)}, "payload": CreatesFile(target)}, tmp_path / "evil_zip.pth")
    for candidate in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(ValueError, match="refused"):
            load_checkpoint(candidate)
        assert not target.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        hear_msm_mae.load_model(tmp_path / "nope.pth")


def test_mismatched_weights_name_the_key(tiny_checkpoint, tmp_path):
    contents = torch.load(tiny_checkpoint, weights_only=False)
    contents["model"]["blocks.1.mlp.fc2.weight"] = torch.zeros(192, 100)
    path = tmp_path / "mismatch.pth"
    torch.save(contents, path)
    with pytest.raises(ValueError, match=r"mismatch.pth.*blocks.1.mlp.fc2.weight"):
        hear_msm_mae.load_model(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(ValueError, match="other.pth"):
        load_checkpoint(path)


def test_bare_encoder_only_and_prefixed_state_dicts(tiny_checkpoint, tmp_path, audio):
    expected = scene(tiny_checkpoint, audio)
    state_dict = torch.load(tiny_checkpoint, weights_only=False)["model"]
    # No stored args: the input size comes from the official folder name, then from the shapes.
    variants = {
        "80x208p16x16_bare/checkpoint-1.pth": state_dict,
        "encoder_only.pth": {k: v for k, v in state_dict.items() if not k.startswith("decoder") and k != "mask_token"},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in state_dict.items()}},
    }
    for name, contents in variants.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        torch.save(contents, path)
        assert load_checkpoint(path).config.input_size == (80, 208)
        torch.testing.assert_close(scene(path, audio), expected, rtol=0, atol=1e-6)


def test_folder_name_contradicting_the_weights(tiny_checkpoint, tmp_path):
    """A folder name that contradicts the weights (16x16 patches do not tile 40 mel bins) names the file."""
    state_dict = torch.load(tiny_checkpoint, weights_only=False)["model"]
    path = tmp_path / "40x416p8x32_odd" / "checkpoint-1.pth"
    path.parent.mkdir()
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match="40x416p8x32_odd"):
        load_checkpoint(path)


def test_own_checkpoint_round_trip(tmp_path, audio):
    config = MAEConfig(vit_config(input_size=(80, 96), embed_dim=64, depth=2, num_heads=2, use_cls_token=True),
                       decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1)
    model = MaskedAutoencoder(config)
    path = tmp_path / "run" / "checkpoint-3.pth"
    model.save(path, norm_stats=(-5.0, 3.0), epoch=3, args=argparse.Namespace(input_size=[80, 96], model="custom"))
    loaded = load_checkpoint(path)
    assert loaded.config == config.encoder and loaded.norm_stats == (-5.0, 3.0) and loaded.contents["epoch"] == 3
    assert not list(path.parent.glob("*.tmp"))
    embedder = hear_msm_mae.load_model(path, device="cpu", dtype="float32")
    assert embedder.norm_stats == (-5.0, 3.0)
    assert embedder.scene_embedding_size == 5 * 64
    rebuilt = MaskedAutoencoder.load(path, decoder=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)
    # Options override the stored statistics.
    assert hear_msm_mae.load_model(path, device="cpu", norm_mean=1.0, norm_std=2.0).norm_stats == (1.0, 2.0)


# -- every family ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_every_layout_loads_strictly_and_is_detected(name):
    family, relative = FAMILY_CHECKPOINTS[name]
    checkpoint = load_checkpoint(golden_path(relative))  # no family given: detected
    assert checkpoint.family.name == family
    build_encoder(checkpoint)  # strict: raises on any missing, unexpected or mis-shaped weight


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_a_file_of_another_family_is_refused_by_name(name):
    family, relative = FAMILY_CHECKPOINTS[name]
    other = "beats" if family != "beats" else "ast"
    title = load_checkpoint(golden_path(relative)).family.title
    with pytest.raises(ValueError, match=rf"looks like an? {title} checkpoint, not"):
        load_checkpoint(golden_path(relative), other)


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_a_truncated_file_is_refused_by_name(name, tmp_path):
    family, relative = FAMILY_CHECKPOINTS[name]
    broken = tmp_path / f"truncated-{golden_path(relative).name}"
    broken.write_bytes(golden_path(relative).read_bytes()[:200_000])
    with pytest.raises(ValueError, match=f"{re.escape(broken.name)}.*truncated"):  # WavLM-Base+_...
        hear_msm_mae.api.load_model(broken, "cpu", family)


def test_a_file_two_families_claim_is_refused_naming_both(tmp_path):
    """M2D's encoder-only file given a fine-tuned Audio-MAE's fc_norm: M2D claims it by its norm_stats,
    Audio-MAE by its fc_norm; detection says so instead of picking one, and a family given by name decides."""
    contents = torch.load(golden_path(FAMILY_CHECKPOINTS["m2d_enconly"][1]), weights_only=True)
    contents.update({"fc_norm.weight": torch.ones(192), "fc_norm.bias": torch.zeros(192)})
    path = tmp_path / "ambiguous.pth"
    torch.save(contents, path)
    with pytest.raises(ValueError, match=r"ambiguous.pth.*M2D \(family='m2d'\) and Audio-MAE \(family='audiomae'\)"):
        load_checkpoint(path)
    assert load_checkpoint(path, "m2d").family.name == "m2d"


def test_a_file_no_family_claims_is_refused_naming_the_families(tmp_path):
    path = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"unknown.pth: not a checkpoint of any family.*MSM-MAE, M2D, Audio-MAE, AST, "
                                         r"BEATs.*'encoder.weight'"):
        load_checkpoint(path)
