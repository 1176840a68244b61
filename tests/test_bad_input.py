"""Bad input gets a clear error naming the problem, never a silent wrong answer."""
import numpy as np
import pytest
import torch

import hear_msm_mae


@pytest.fixture(scope="module")
def model(tiny_checkpoint_path):
    return hear_msm_mae.load_model(tiny_checkpoint_path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny_checkpoint_path():
    from conftest import golden_checkpoint
    return golden_checkpoint()


API = [hear_msm_mae.get_scene_embeddings, hear_msm_mae.get_timestamp_embeddings]


@pytest.mark.parametrize("embed", API)
@pytest.mark.parametrize("audio, error, message", [
    (torch.zeros(16000), ValueError, "unsqueeze"),
    (torch.zeros(1, 2, 16000), ValueError, "3-D"),
    (torch.zeros(0, 16000), ValueError, "empty"),
    (torch.zeros(2, 0), ValueError, "empty"),
    (torch.zeros(1, 16000, dtype=torch.int16), TypeError, "int16"),
    (torch.full((1, 16000), float("nan")), ValueError, "NaN"),
    (torch.tensor([[0.0] * 8000 + [float("inf")] * 8000]), ValueError, "Inf"),
    (np.zeros((1, 16000), dtype=np.float32), TypeError, "ndarray"),
    (torch.zeros(1, 100), ValueError, "too short"),
    (torch.zeros(1, 16000, device="meta"), ValueError, "meta"),
])
def test_bad_audio(model, embed, audio, error, message):
    with pytest.raises(error, match=message):
        embed(audio, model)


def test_other_float_dtypes_are_converted(model):
    audio = torch.randn(1, 16000) * 0.1
    expected = hear_msm_mae.get_scene_embeddings(audio, model)
    torch.testing.assert_close(hear_msm_mae.get_scene_embeddings(audio.double(), model), expected)


@pytest.mark.parametrize("options, error, message", [
    (dict(mode="fast"), ValueError, "mode"),
    (dict(dtype="int8"), ValueError, "dtype"),
    (dict(timestamp_hop_ms=50), ValueError, "timestamp_hop_ms"),
    (dict(timestamp_hop_ms=15), ValueError, "timestamp_hop_ms"),
    (dict(norm_mean=-5.0), ValueError, "both"),
    (dict(norm_mean=-5.0, norm_std=0.0), ValueError, "positive"),
    (dict(batch_tokens=0), ValueError, "batch_tokens"),
    (dict(hop=40), TypeError, "unknown model option"),
])
def test_bad_options(tiny_checkpoint_path, options, error, message):
    with pytest.raises(error, match=message):
        hear_msm_mae.load_model(tiny_checkpoint_path, device="cpu", **options)
