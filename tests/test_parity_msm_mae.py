"""MSM-MAE against its reference implementation's outputs (../shared/golden/80x208p16x16_tiny and
80x512p16x16_tinycls: without and with [CLS]), in float32: front end, encoder, decoder and loss, and the
original HEAR wrapper ("reference" mode: per-batch statistics, padded last unit, frame-start timestamps)."""
import argparse

import pytest
import torch

import hear_msm_mae
from hear_msm_mae.checkpoint import load_checkpoint
from hear_msm_mae.frontend import LogMelSpectrogram
from hear_msm_mae.pretrain.mae import MaskedAutoencoder

from conftest import FAMILY_CHECKPOINTS, GOLDEN_CASES, golden_path, max_relative_error, model


def test_config_is_read_from_the_official_layout(golden):
    _, path, _, spec = golden
    config = MaskedAutoencoder.load(path).config
    assert config.encoder == load_checkpoint(path).config
    for key in ["embed_dim", "depth", "num_heads", "input_size", "patch_size", "use_cls_token", "decoder_embed_dim",
                "decoder_depth", "decoder_num_heads"]:
        assert config.to_dict()[key] == spec[key], key


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_front_end(golden, case):
    _, _, arrays, _ = golden
    lms = LogMelSpectrogram()(torch.from_numpy(arrays[f"{case}.audio"]))
    expected = torch.from_numpy(arrays[f"{case}.lms"])[:, 0]
    assert lms.shape == expected.shape
    assert float((lms - expected).abs().max()) < 1e-3


def test_encoder_and_masked_reconstruction(golden):
    _, path, arrays, _ = golden
    model = MaskedAutoencoder.load(path, decoder=True).eval()
    lms = torch.from_numpy(arrays["unit.lms"])
    mask = torch.from_numpy(arrays["unit.mask"])
    with torch.no_grad():
        encoded = model.forward_encoder(lms)
        loss, pred, used_mask = model(lms, mask=mask)
    assert max_relative_error(encoded, arrays["unit.encoder_out"]) < 1e-4
    assert max_relative_error(pred, arrays["unit.recon_pred"]) < 1e-4
    assert abs(float(loss) - float(arrays["unit.recon_loss"])) / float(arrays["unit.recon_loss"]) < 1e-4
    assert torch.equal(used_mask, mask)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_reference_mode_frames_and_scene(golden, case):
    _, path, arrays, _ = golden
    model = hear_msm_mae.load_model(path, device="cpu", mode="reference", dtype="float32")
    audio = torch.from_numpy(arrays[f"{case}.audio"])
    with torch.inference_mode():
        frames = model.frame_embeddings(model.normalised_features(audio))
    scene = hear_msm_mae.get_scene_embeddings(audio, model)
    assert frames.shape == arrays[f"{case}.frames_batchnorm"].shape
    timestamp_frames, stamps = hear_msm_mae.get_timestamp_embeddings(audio, model)  # native columns, 160 ms
    assert torch.equal(timestamp_frames, frames)
    assert torch.equal(stamps, torch.from_numpy(arrays[f"{case}.timestamps_ref"]).float())
    assert max_relative_error(frames, arrays[f"{case}.frames_batchnorm"]) < 1e-4
    assert max_relative_error(scene, arrays[f"{case}.scene_batchnorm"]) < 1e-4


def test_reference_mode_depends_on_the_batch():
    """Why the default mode exists: the reference's per-batch statistics leak between clips."""
    m = model("msm_mae", mode="reference")
    audio = torch.randn(3, 32000, generator=torch.Generator().manual_seed(0)) * 0.1
    alone = hear_msm_mae.get_scene_embeddings(audio[:1], m)
    together = hear_msm_mae.get_scene_embeddings(torch.cat([audio[:1], 20 * audio[1:]]), m)
    assert (alone[0] - together[0]).abs().max() > 1e-2


def test_msm_mae_official_args_norm_stats_are_used(tmp_path):
    """An official MSM-MAE file whose args hold norm_stats = [mean, std] is normalised with them."""
    path = golden_path(FAMILY_CHECKPOINTS["msm_mae"][1])
    contents = torch.load(path, weights_only=False)
    contents["args"] = argparse.Namespace(**{**vars(contents["args"]), "norm_stats": [-5.5, 3.25]})
    folder = tmp_path / path.parent.name
    folder.mkdir()
    torch.save(contents, folder / path.name)
    assert hear_msm_mae.load_model(folder / path.name, "cpu").norm_stats == (-5.5, 3.25)
    assert hear_msm_mae.load_model(path, "cpu").norm_stats == (-7.1, 4.2)  # none stored: AudioSet's
