"""The reference implementation's outputs (../shared/golden) reproduced in float32."""
import pytest
import torch

import hear_msm_mae
from hear_msm_mae.checkpoint import build_model, load_checkpoint
from hear_msm_mae.frontend import LogMelSpectrogram

from conftest import GOLDEN_CASES, max_relative_error


def test_config_is_read_from_the_official_layout(golden):
    _, path, _, spec = golden
    config = load_checkpoint(path).config
    for key in ["embed_dim", "depth", "num_heads", "use_cls_token", "decoder_embed_dim",
                "decoder_depth", "decoder_num_heads"]:
        assert getattr(config, key) == spec[key], key
    assert list(config.input_size) == spec["input_size"] and list(config.patch_size) == spec["patch_size"]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_front_end(golden, case):
    _, _, arrays, _ = golden
    lms = LogMelSpectrogram()(torch.from_numpy(arrays[f"{case}.audio"]))
    expected = torch.from_numpy(arrays[f"{case}.lms"])[:, 0]
    assert lms.shape == expected.shape
    assert float((lms - expected).abs().max()) < 1e-3


def test_encoder_and_masked_reconstruction(golden):
    _, path, arrays, _ = golden
    model = build_model(load_checkpoint(path), decoder=True).eval()
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
