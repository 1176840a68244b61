"""CED against its reference code's outputs (../shared/golden/ced_tiny: RicherMans/CED and its HEAR wrapper
HEAR_CED), in float32. Through the HEAR API, mode="reference" is HEAR_CED: timestamps from 7677-sample windows
every 50 ms under one top_db floor for all windows of the call, scene from 1012-frame chunks averaged, each
clip alone and in its batch; the encoder (tokens, layers, chunks) from the reference's features. Not
reproduced: the AudioSet classifier's logits and probabilities (logits, output, per_clip.output): the head
(outputlayer) is dropped, as HEAR_CED drops it for its embeddings."""
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings, load_model
from hear_msm_mae.checkpoint import load_checkpoint

from conftest import GOLDEN_CASES, arrays, encoder, golden_audio, golden_path, max_relative_error, model

CASES = [*GOLDEN_CASES, "d_topdb_2x1.07s"]  # d: a loud clip beside a quiet one ending in digital silence
LAYOUTS = ["ced", "ced_statedict"]  # {'config', 'model'} and the bare state dict
RTOL = 1e-4  # relative to the largest value
FEATURE_ATOL, MEL_ATOL = 1e-4, 1e-3
CHUNK = 1012  # frames: CED's target_length


def audio(case: str) -> torch.Tensor:
    a = arrays("ced_tiny")
    return torch.from_numpy(a[f"{case}.audio"]) if f"{case}.audio" in a else golden_audio(case)


def encode(features: torch.Tensor, layers=None):
    """Golden features (n, 1, 64, T) cut to whole 16-frame columns -> our encoder's outputs."""
    with torch.no_grad():
        return encoder("ced").encode(features[..., :features.shape[-1] // 16 * 16], layers)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_reference_mode_is_hear_ced(layout, case):
    """HEAR_CED's timestamp embeddings (k * 50 ms) and scene embeddings, in the batch and each clip alone."""
    a, x, m = arrays("ced_tiny"), audio(case), model(layout, mode="reference")
    assert m.timestamp_hop_ms == 50 and m.scene_embedding_size == m.timestamp_embedding_size == 192
    frames, stamps = get_timestamp_embeddings(x, m)
    expected = torch.from_numpy(a[f"{case}.hear.timestamp_embeddings"])
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < RTOL
    assert torch.equal(stamps, torch.from_numpy(a[f"{case}.hear.timestamps"]))
    assert max_relative_error(get_scene_embeddings(x, m), a[f"{case}.hear.scene_embeddings"]) < RTOL
    alone = [get_timestamp_embeddings(clip[None], m)[0] for clip in x]
    assert max_relative_error(torch.cat(alone), a[f"{case}.hear.per_clip.timestamp_embeddings"]) < RTOL
    alone = [get_scene_embeddings(clip[None], m) for clip in x]
    assert max_relative_error(torch.cat(alone), a[f"{case}.hear.per_clip.scene_embeddings"]) < RTOL


@pytest.mark.parametrize("case", CASES)
def test_front_end_and_batchnorm(case):
    """The dB mel (one floor for the batch, as the reference's) and init_bn's features."""
    a, x, m = arrays("ced_tiny"), audio(case), model("ced", mode="reference")
    with torch.inference_mode():
        mel, features = m.frontend(x, batch_floor=True), m.normalised_features(x)
    assert float((mel - torch.from_numpy(a[f"{case}.mel_db"])).abs().max()) < MEL_ATOL
    assert float((features - torch.from_numpy(a[f"{case}.features"][:, 0])).abs().max()) < FEATURE_ATOL


@pytest.mark.parametrize("case", ["a_3x4s", "c_1x1.07s", "d_topdb_2x1.07s"])  # one pass: at most 1012 frames
def test_tokens_and_layers(case):
    """Frequency-major tokens of the whole columns (time + frequency positions), every layer, and their mean (the
    `pooled` vector the head sees, HEAR_CED's scene)."""
    a = arrays("ced_tiny")
    hidden = a[f"{case}.hidden_states"]
    layers = encode(torch.from_numpy(a[f"{case}.features"]), [0, 1, -1])
    for ours, expected in zip(layers, (hidden[0], hidden[1], a[f"{case}.tokens"])):
        assert ours.shape == expected.shape and max_relative_error(ours, expected) < RTOL
    assert max_relative_error(layers[-1].mean(dim=1), a[f"{case}.pooled"]) < RTOL


def test_chunks_of_a_long_clip():
    """13 s = 1301 frames: chunks [0, 1012) and [1012, 1301) + zeros after init_bn, each cut to its 63 whole
    columns; their token means, whose mean is HEAR_CED's scene (golden arrays: chunk first, then clip)."""
    a = arrays("ced_tiny")
    features = torch.from_numpy(a["b_2x13s.features"])
    last = torch.nn.functional.pad(features[..., CHUNK:], (0, 2 * CHUNK - features.shape[-1]))
    for index, chunk in enumerate((features[..., :CHUNK], last)):
        (tokens,) = encode(chunk)
        assert max_relative_error(tokens, a["b_2x13s.tokens_chunks"][index]) < RTOL
        assert max_relative_error(tokens.mean(dim=1), a["b_2x13s.pooled_chunks"][index]) < RTOL
    scene = get_scene_embeddings(audio("b_2x13s"), model("ced", mode="reference"))
    assert max_relative_error(scene, torch.from_numpy(a["b_2x13s.pooled_chunks"]).mean(dim=0)) < RTOL


@pytest.mark.parametrize("frames, chunks", [(1012, [(0, 1008)]), (1013, [(0, 1008), (1012, 1013)]),
                                            (2023, [(0, 1008), (1012, 2020)]), (2024, [(0, 1008)])])
def test_the_chunk_rules_golden_json_documents(frames, chunks):
    """One pass up to 1012 frames; above, 1012-frame chunks, a partial last one padded with zeros (1013 frames: a
    second chunk of one frame), a whole last one DROPPED (2024 frames: the first chunk only; CED's else branch)."""
    m = model("ced", mode="reference")
    clip = torch.randn(1, (frames - 1) * 160, generator=torch.Generator().manual_seed(frames)) * 0.1
    with torch.inference_mode():
        x = m.normalised_features(clip)
        assert x.shape[-1] == frames
        units = [torch.nn.functional.pad(x[..., start:stop], (0, 1008 - (stop - start))) for start, stop in chunks]
        expected = torch.cat([m.encode_units(unit.unsqueeze(1)) for unit in units], dim=1).mean(dim=1)
    assert max_relative_error(get_scene_embeddings(clip, m), expected) < 1e-5


def test_a_clip_shorter_than_one_column_has_no_reference_scene():
    m = model("ced", mode="reference")
    with pytest.raises(ValueError, match="shorter than one patch column"):
        get_scene_embeddings(torch.zeros(1, 2399), m)  # 15 frames
    assert get_scene_embeddings(torch.zeros(1, 2400), m).shape == (1, 192)  # 16 frames (golden.json)
    assert get_timestamp_embeddings(torch.zeros(1, 2399), m)[0].shape == (1, 3, 192)  # windows: any length


def test_the_batch_floor_in_the_reference_mode_and_not_in_the_default_one():
    """d_topdb: the loud clip's floor reaches the quiet clip's silence in the reference mode (HEAR_CED's scene
    and timestamps differ in the batch and alone), not in the default mode."""
    a, x = arrays("ced_tiny"), audio("d_topdb_2x1.07s")
    for kind in ("scene_embeddings", "timestamp_embeddings"):
        difference = a[f"d_topdb_2x1.07s.hear.{kind}"][1] - a[f"d_topdb_2x1.07s.hear.per_clip.{kind}"][1]
        assert abs(difference).max() > 0.05  # golden.json: 0.072 and 0.173
    default = model("ced")
    torch.testing.assert_close(get_scene_embeddings(x, default)[1:], get_scene_embeddings(x[1:], default),
                               rtol=1e-6, atol=1e-6)
    frames, frames_alone = (get_timestamp_embeddings(clips, default)[0] for clips in (x, x[1:]))
    torch.testing.assert_close(frames[1:], frames_alone, rtol=1e-6, atol=1e-6)
    with torch.inference_mode():  # the default mode's features are the reference's for the clip alone
        torch.testing.assert_close(default.normalised_features(x)[1:],
                                   model("ced", mode="reference").normalised_features(x[1:]), rtol=0, atol=1e-6)


def test_reference_mode_options():
    """HEAR_CED's embeddings are the engine's column embeddings averaged: `layers` and `freq_pool` apply."""
    x = audio("c_1x1.07s")
    plain = model("ced", mode="reference")
    both = model("ced", mode="reference", layers=[0, -1], freq_pool="concat")
    assert both.timestamp_embedding_size == both.scene_embedding_size == 2 * 4 * 192
    frames = get_timestamp_embeddings(x, both)[0].reshape(1, -1, 2, 4, 192)
    torch.testing.assert_close(frames[:, :, 1].mean(dim=2), get_timestamp_embeddings(x, plain)[0],
                               rtol=1e-5, atol=1e-5)
    scene = get_scene_embeddings(x, both).reshape(1, 2, 4, 192)
    torch.testing.assert_close(scene[:, 1].mean(dim=1), get_scene_embeddings(x, plain), rtol=1e-5, atol=1e-5)


def test_the_mae_encoder_layout_and_detection(tmp_path):
    """The MAE-pretrained encoders (audiotransformer_*_mae_as_10s.pt): the same names without the classifier."""
    state = torch.load(golden_path("ced_tiny/ced_tiny_golden_statedict.pt"), weights_only=True)
    path = tmp_path / "audiotransformer_tiny_mae_as_10s.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("outputlayer.")}, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.family.name == "ced" and checkpoint.grid.unit_frames == 1008
    x = audio("c_1x1.07s")
    expected = get_scene_embeddings(x, model("ced"))
    assert torch.equal(get_scene_embeddings(x, load_model(path, "cpu", dtype="float32")), expected)
