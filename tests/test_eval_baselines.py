"""eval.baselines: the model card's two references as one HEAR module (log-mel statistics, random weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import hear_msm_mae
from eval import baselines
from eval.embed import load_module
from hear_msm_mae.checkpoint import load_checkpoint
from hear_msm_mae.frontend import LogMelSpectrogram
from hear_msm_mae.pretrain.mae import MAEConfig, MaskedAutoencoder

CPU = torch.device("cpu")


def test_log_mel_statistics_per_clip_and_per_160_ms_window():
    model = load_module("eval.baselines", None, {"reference": "log-mel"}, CPU).model
    audio = torch.rand(2, 16000) * 2 - 1  # 1 s: 101 frames
    lms = LogMelSpectrogram()(audio)
    scene = baselines.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 160) == (2, model.scene_embedding_size)
    torch.testing.assert_close(scene, torch.cat([lms.mean(-1), lms.std(-1)], 1))
    frames, stamps = baselines.get_timestamp_embeddings(audio, model)
    assert frames.shape == (2, 22, 160) and stamps.shape == (2, 22)  # windows of 16 frames every 4: (101 - 16) // 4 + 1
    np.testing.assert_allclose(stamps[0].numpy(), 75.0 + 40.0 * np.arange(22))  # the windows' centres (ms)
    torch.testing.assert_close(frames[1, 3], torch.cat([lms[1, :, 12:28].mean(-1), lms[1, :, 12:28].std(-1)]))
    assert model.timestamp_hop_ms == 40.0


def test_log_mel_statistics_refuse_bad_input():
    with pytest.raises(ValueError, match="reads no model file and takes no options"):
        baselines.load_model("model.pth", reference="log-mel")
    with pytest.raises(ValueError, match="reads no model file and takes no options"):
        baselines.load_model(reference="log-mel", timestamp_hop_ms=20)
    with pytest.raises(ValueError, match=r"unknown reference 'noise'; eval.baselines has \['log-mel', 'random'\]"):
        baselines.load_model(reference="noise")
    model = baselines.load_model(device="cpu")
    with pytest.raises(ValueError, match="shorter than one 16-frame window"):
        baselines.get_timestamp_embeddings(torch.zeros(1, 2000), model)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):  # the HEAR API's checks
        baselines.get_scene_embeddings(np.zeros((1, 16000), np.float32), model)


def test_random_weights_are_the_checkpoints_network_initialised_as_mae(tiny_checkpoint):
    """The checkpoint's architecture and engine, MAE's initialisation with seed 0 (the same on every load), the
    caller's random state untouched, the dtype option honoured."""
    pretrained = hear_msm_mae.load_model(str(tiny_checkpoint), device="cpu", dtype="float32")
    state = torch.get_rng_state()
    random = baselines.load_model(str(tiny_checkpoint), device="cpu", reference="random", dtype="float32")
    assert torch.equal(torch.get_rng_state(), state)
    weights, trained = random.encoder.state_dict(), pretrained.encoder.state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: trained[k].shape for k in weights}  # (+ packed biases)
    torch.manual_seed(0)
    initialised = MaskedAutoencoder(MAEConfig(encoder=load_checkpoint(tiny_checkpoint).config), decoder=False)
    assert all(torch.equal(weights[k], v) for k, v in initialised.state_dict().items())
    assert not torch.equal(weights["blocks.0.mlp.fc1.weight"], trained["blocks.0.mlp.fc1.weight"])
    audio = torch.rand(2, 24000) * 2 - 1
    frames, stamps = baselines.get_timestamp_embeddings(audio, random)
    trained_frames, trained_stamps = hear_msm_mae.get_timestamp_embeddings(audio, pretrained)
    assert frames.shape == trained_frames.shape and torch.equal(stamps, trained_stamps)
    assert not torch.allclose(frames, trained_frames)
    again = baselines.load_model(str(tiny_checkpoint), device="cpu", reference="random", dtype="float32")
    assert torch.equal(baselines.get_scene_embeddings(audio, again), baselines.get_scene_embeddings(audio, random))
    assert baselines.load_model(str(tiny_checkpoint), reference="random", dtype="bfloat16").compute_dtype == \
        torch.bfloat16

