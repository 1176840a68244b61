"""Audio-MAE against its reference implementation's outputs (../shared/golden/audiomae_tiny, pre-trained, and
audiomae_tiny_ft, fine-tuned): front end, tokens, hidden states, pooled outputs and logits from the reference's
features, and through the HEAR API its padded units, its layers and the ATST authors' frame recipe (the
default frequency mean)."""
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings

from conftest import (FAMILY_CHECKPOINTS, GOLDEN_CASES, arrays, encode, encoder, golden_audio, golden_path,
                      max_relative_error, model, spec, time_major, whole_columns)

RTOL = 1e-4  # encoder outputs in float32, relative to the largest value
FEATURE_ATOL = 1e-4  # Kaldi fbank features, absolute


def features_mel_time(a: dict, case: str) -> torch.Tensor:
    """The reference's (n, 1, time, mel) features in this package's (n, 1, mel, time) layout."""
    return torch.from_numpy(a[f"{case}.features"]).transpose(-1, -2)


@pytest.mark.parametrize("name, folder", [("audiomae", "audiomae_tiny"), ("audiomae_ft", "audiomae_tiny_ft")])
def test_audiomae_tokens_and_features(name, folder):
    a, enc, m = arrays(folder), encoder(name), model(name)
    for case in GOLDEN_CASES:
        tokens = encode(enc, features_mel_time(a, case))[0]
        assert max_relative_error(time_major(tokens, 1, 8), a[f"{case}.tokens"]) < RTOL
        with torch.inference_mode():  # the front end: fbank, padded with zero frames or cut to 1024, normalised
            x = m.normalised_features(golden_audio(case))
        x = torch.nn.functional.pad(x, (0, max(0, 1024 - x.shape[-1])), value=m.pad_value)[..., :1024]
        assert float((x - features_mel_time(a, case)[:, 0]).abs().max()) < FEATURE_ATOL


def test_audiomae_hidden_states():
    a = arrays("audiomae_tiny")
    states = encode(encoder("audiomae"), features_mel_time(a, "a_3x4s")[:1], layers=[0, 1])
    for layer, state in enumerate(states):
        assert max_relative_error(time_major(state, 1, 8), a["unit.hidden_states"][layer]) < RTOL


def test_audiomae_finetuned_pooled_output_and_logits():
    a, enc = arrays("audiomae_tiny_ft"), encoder("audiomae_ft")
    head = torch.load(golden_path(FAMILY_CHECKPOINTS["audiomae_ft"][1]), weights_only=False)["model"]
    for case in GOLDEN_CASES:
        pooled = enc.pooled(encode(enc, features_mel_time(a, case))[0])
        assert max_relative_error(pooled, a[f"{case}.pooled"]) < RTOL
        logits = torch.nn.functional.linear(pooled, head["head.weight"], head["head.bias"])
        assert max_relative_error(logits, a[f"{case}.logits"]) < RTOL


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_audiomae_reference_mode_is_its_dataloader_on_every_clip(case):
    """mode="reference": the clip padded with zero fbank frames or cut to 1024 frames, as Audio-MAE's
    dataloader does; one frame per column covering the clip (frequency patches concatenated here), at the
    column centres; a fine-tuned file's pooled output as the scene."""
    a, m = arrays("audiomae_tiny"), model("audiomae", mode="reference", freq_pool="concat")
    audio = golden_audio(case)
    frames, stamps = get_timestamp_embeddings(audio, m)
    fbank_frames = spec("audiomae_tiny")["config"]["n_fbank_frames"][case][0]
    columns = min(-(-fbank_frames // 16), 64)  # the columns covering the clip, within the first 1024 frames
    expected = torch.from_numpy(a[f"{case}.tokens"][:, 1:]).reshape(frames.shape[0], 64, 8 * 192)[:, :columns]
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < RTOL
    assert torch.equal(stamps[0], 87.5 + 160 * torch.arange(columns, dtype=torch.float32))
    pooled = get_scene_embeddings(audio, model("audiomae_ft", mode="reference", scene="pooled"))
    assert max_relative_error(pooled, arrays("audiomae_tiny_ft")[f"{case}.pooled"]) < RTOL


def test_audiomae_atst_frame_recipe_through_the_api():
    """The ATST authors' comparison module: its own statistics, no padding, whole patches only, tokens
    averaged over frequency (the default freq_pool), one embedding per 160 ms column."""
    stats = spec("audiomae_tiny")["config"]["frame_embedding_atst"]["transform"]
    assert "-6.030435443767988" in stats and "4.102992546322562" in stats
    m = model("audiomae", norm_mean=-6.030435443767988, norm_std=4.102992546322562, timestamp_hop_ms=160)
    a = arrays("audiomae_tiny")
    for case in ("a_3x4s", "c_1x1.07s"):
        frames, _ = get_timestamp_embeddings(whole_columns(golden_audio(case)), m)
        assert frames.shape == a[f"{case}.atst_frames"].shape
        assert max_relative_error(frames, a[f"{case}.atst_frames"]) < RTOL


def test_audiomae_layers_through_the_api():
    """layers=[0, 1, 2]: the embedded input, block 1, and the final output, each as frame embeddings."""
    a = arrays("audiomae_tiny")
    m = model("audiomae", mode="reference", freq_pool="concat", layers=[0, 1, 2], layer_pool="concat")
    with torch.inference_mode():
        frames = m.frame_embeddings(m.normalised_features(golden_audio("a_3x4s")[:1]))  # (1, 25, 3 * 8 * 192)
    hidden = [a["unit.hidden_states"][0], a["unit.hidden_states"][1], a["a_3x4s.tokens"][:1]]
    for layer, (ours, theirs) in enumerate(zip(frames.chunk(3, dim=-1), hidden)):
        expected = torch.from_numpy(theirs[:, 1:]).reshape(1, 64, 8 * 192)[:, :frames.shape[1]]
        assert max_relative_error(ours, expected) < RTOL, layer
