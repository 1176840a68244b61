"""Embedding behaviour: batch independence, bounded batches, timestamps, dtypes, the HEAR contract."""
import math

import pytest
import torch

import hear_msm_mae

SR = 16000


def load(path, **options):
    options.setdefault("dtype", "float32")
    return hear_msm_mae.load_model(path, device="cpu", **options)


def clips(n, seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tones = torch.sin(2 * math.pi * (200 + 300 * torch.rand(n, 1, generator=g)) * t)
    return 0.3 * tones + 0.05 * torch.randn(n, len(t), generator=g)


def test_hear_attributes_and_outputs(tiny_checkpoint):
    model = load(tiny_checkpoint)
    assert not model.training
    assert model.sample_rate == 16000
    assert type(model.scene_embedding_size) is int and type(model.timestamp_embedding_size) is int
    audio = clips(2, 1.3)
    scene = hear_msm_mae.get_scene_embeddings(audio, model)
    frames, times = hear_msm_mae.get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == torch.float32
    assert frames.shape[:1] == (2,) and frames.shape[2] == model.timestamp_embedding_size
    assert times.shape == frames.shape[:2] and frames.dtype == times.dtype == torch.float32
    assert scene.device == frames.device == times.device == audio.device


@pytest.mark.parametrize("seconds", [0.9, 3.3, 7.0])
def test_default_mode_is_batch_independent(tiny_checkpoint, seconds):
    model = load(tiny_checkpoint)
    audio = clips(5, seconds)
    alone = hear_msm_mae.get_scene_embeddings(audio[2:3], model)
    frames_alone, _ = hear_msm_mae.get_timestamp_embeddings(audio[2:3], model)
    for batch, index in ((audio, 2), (audio[1:4], 1), (torch.cat([audio[2:3], 10 * audio[:2]]), 0)):
        torch.testing.assert_close(hear_msm_mae.get_scene_embeddings(batch, model)[index], alone[0],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hear_msm_mae.get_timestamp_embeddings(batch, model)[0][index], frames_alone[0],
                                   rtol=1e-5, atol=1e-5)


def test_reference_mode_depends_on_the_batch(tiny_checkpoint):
    """Why the default mode exists: per-batch statistics leak between clips."""
    model = load(tiny_checkpoint, mode="reference")
    audio = clips(3, 2.0)
    alone = hear_msm_mae.get_scene_embeddings(audio[:1], model)
    together = hear_msm_mae.get_scene_embeddings(torch.cat([audio[:1], 20 * audio[1:]]), model)
    assert (alone[0] - together[0]).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["default", "reference"])
def test_bounded_batches_give_the_same_embeddings(tiny_checkpoint, mode):
    audio = clips(3, 9.5)  # 4 full 208-frame units + a short one per clip
    whole = hear_msm_mae.get_scene_embeddings(audio, load(tiny_checkpoint, mode=mode))
    for units in (1, 2, 5):  # a 208-frame unit is 65 tokens
        model = load(tiny_checkpoint, mode=mode, batch_tokens=65 * units)
        torch.testing.assert_close(hear_msm_mae.get_scene_embeddings(audio, model), whole, rtol=1e-5, atol=1e-5)


def encoder_input_shapes(model, audio):
    shapes = []
    hook = model.encoder.patch_embed.register_forward_hook(lambda module, inputs, output: shapes.append(inputs[0].shape))
    hear_msm_mae.get_scene_embeddings(audio, model)
    hook.remove()
    return shapes


def test_units_share_encoder_calls_and_no_compute_goes_to_padding(tiny_checkpoint):
    audio = clips(4, 5.0)  # 501 frames: 2 full 208-frame units + 85 frames (6 patch columns)
    assert encoder_input_shapes(load(tiny_checkpoint), audio) == [(8, 1, 80, 208), (4, 1, 80, 96)]
    # the reference wrapper pads the last unit to the full width: it then shares the call with the full ones
    assert encoder_input_shapes(load(tiny_checkpoint, mode="reference"), audio) == [(12, 1, 80, 208)]


def test_scene_is_the_mean_of_native_frames(tiny_checkpoint):
    model = load(tiny_checkpoint, timestamp_hop_ms=160)
    audio = clips(2, 4.0)
    frames, times = hear_msm_mae.get_timestamp_embeddings(audio, model)
    with torch.inference_mode():
        native = model.frame_embeddings(model.normalised_features(audio))
    assert torch.equal(frames, native[:, :frames.shape[1]])
    torch.testing.assert_close(hear_msm_mae.get_scene_embeddings(audio, model), native.mean(dim=1))


@pytest.mark.parametrize("hop_ms", [10, 20, 40, 80, 160])
@pytest.mark.parametrize("seconds", [0.05, 0.3, 1.07, 4.0, 13.0])
def test_timestamp_rules(tiny_checkpoint, hop_ms, seconds):
    model = load(tiny_checkpoint, timestamp_hop_ms=hop_ms)
    audio = clips(2, seconds)
    frames, times = hear_msm_mae.get_timestamp_embeddings(audio, model)
    assert torch.equal(times[0], times[1])
    duration_ms = audio.shape[1] / SR * 1000
    assert 0 <= float(times.min()) and float(times.max()) <= duration_ms
    if times.shape[1] > 1:
        steps = times[0].diff()
        assert float((steps - hop_ms).abs().max()) < 1e-3  # regular, no drift
        assert float(times[0, 0]) <= hop_ms  # starts within one hop
        assert float(times[0, -1]) >= duration_ms - hop_ms  # reaches the end


def test_finer_hop_is_real_resolution_not_repetition(tiny_checkpoint):
    model = load(tiny_checkpoint)  # 40 ms hop: four shifted encodings
    audio = clips(1, 3.0)
    frames, times = hear_msm_mae.get_timestamp_embeddings(audio, model)
    with torch.inference_mode():
        native = model.frame_embeddings(model.normalised_features(audio))
    lead = model.lead_frames() // model.hop_frames  # embeddings before the first native column
    aligned = frames[0, lead::4]
    torch.testing.assert_close(aligned, native[0, :aligned.shape[0]], rtol=1e-5, atol=1e-5)
    neighbours = (frames[0, 1:] - frames[0, :-1]).abs().amax(dim=1)
    assert float(neighbours.min()) > 1e-3  # every embedding differs from the one before it


def test_bfloat16_is_close_to_float32(tiny_checkpoint):
    audio = clips(3, 3.0)
    exact = hear_msm_mae.get_scene_embeddings(audio, load(tiny_checkpoint, dtype="float32"))
    model = load(tiny_checkpoint, dtype="bfloat16")
    assert model.compute_dtype == torch.bfloat16 and model.frontend.mel_fbank.dtype == torch.float32
    fast = hear_msm_mae.get_scene_embeddings(audio, model)
    assert fast.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(exact, fast).min()) > 0.999
