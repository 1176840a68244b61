"""WavLM, HuBERT and wav2vec 2.0 against their references' outputs, through the HEAR API, in float32.

One file for the three: they are one encoder (encoders/wav2vec2.py over torchaudio's definitions) and one
reader (wav2vec2_files.py), and their golden folders hold the same arrays under two naming schemes
(../shared/golden/wavlm_tiny*: microsoft/unilm's WavLM.py, `layer_results` and `x`; hubert_tiny_hf*,
wav2vec2_tiny_hf*: transformers 5.25, `hidden_states` and `last_hidden_state`), so every check runs on all six
layouts (Base: post-LN, GroupNorm feature encoder, raw waveform; Large: pre-LN, LayerNorm feature encoder, each
clip's waveform normalised). The files' layouts, detection and refusals are in test_checkpoint_waveform.py.
"""
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings
from hear_msm_mae.encoders import wav2vec2 as wav2vec2_encoder

from conftest import GOLDEN_CASES, arrays, golden_audio, max_relative_error, model

RTOL = 1e-4  # relative to the largest value, float32
# FAMILY_CHECKPOINTS name: (golden folder, the hidden states, the final output, the normalised input if any)
LAYOUTS = {
    "wavlm": ("wavlm_tiny", "layer_results", "x", None),
    "wavlm_large": ("wavlm_tiny_ln", "layer_results", "x", "input_normalised"),
    "hubert": ("hubert_tiny_hf", "hidden_states", "last_hidden_state", None),
    "hubert_large": ("hubert_tiny_hf_ln", "hidden_states", "last_hidden_state", "input_values"),
    "wav2vec2": ("wav2vec2_tiny_hf", "hidden_states", "last_hidden_state", None),
    "wav2vec2_large": ("wav2vec2_tiny_hf_ln", "hidden_states", "last_hidden_state", "input_values"),
}
BASE = ["wavlm", "hubert", "wav2vec2"]


def golden(name: str, case: str):
    """(hidden states (L + 1, B, T, D), final output (B, T, D)) of a layout's case."""
    folder, hidden, final, _ = LAYOUTS[name]
    a = arrays(folder)
    return torch.from_numpy(a[f"{case}.{hidden}"]), torch.from_numpy(a[f"{case}.{final}"])


def every_layer(name: str, audio: torch.Tensor, **options):
    """The reference mode's layers 0 .. depth (frames, timestamps)."""
    m = model(name, mode="reference", layers=list(range(3)), **options)  # the golden models have 2 blocks
    assert m.encoder.depth == 2
    frames, stamps = get_timestamp_embeddings(audio, m)
    return frames.chunk(3, dim=-1), stamps


@pytest.mark.parametrize("case", GOLDEN_CASES)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layer_of_the_whole_clip(name, case):
    """mode="reference": the whole clip in one pass; layers 0 and 1 are the reference's hidden states 0 and 1,
    layer 2 (-1, the default) its final output (after the Large layouts' final LayerNorm: transformers 4.x's
    last hidden state), at the frame centres 12.5 + 20 i ms, as many as hear-baseline's (audio_ms - 5) // 20."""
    audio = golden_audio(case)
    hidden, final = golden(name, case)
    layers, stamps = every_layer(name, audio)
    for layer, expected in enumerate([hidden[0], hidden[1], final]):
        assert layers[layer].shape == expected.shape and max_relative_error(layers[layer], expected) < RTOL, layer
    n = (int(audio.shape[1] / 16) - 5) // 20
    assert torch.equal(stamps[0], 12.5 + 20 * torch.arange(n, dtype=torch.float32))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_last_block_before_the_final_norm(name, monkeypatch):
    """The last block's own output: the final output of a post-LN layout, the input of the final LayerNorm of a
    pre-LN one (transformers 5.x's hidden_states[-1], WavLM's layer_results[-1])."""
    m = model(name, mode="reference")
    last, seen, block = m.encoder.encoder.transformer.layers[-1], [], wav2vec2_encoder.block

    def recorded(layer, *args):
        out = block(layer, *args)
        if layer is last:
            seen.append(out[0])
        return out
    monkeypatch.setattr(wav2vec2_encoder, "block", recorded)
    get_timestamp_embeddings(golden_audio("a_3x4s"), m)
    hidden, final = golden(name, "a_3x4s")
    assert max_relative_error(seen[0], hidden[2]) < RTOL
    assert (max_relative_error(final, hidden[2]) > 0.1) == name.endswith("_large")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_front_end_and_the_feature_encoder(name):
    """Each clip's waveform normalised alone (Large: F.layer_norm eps 1e-5 for WavLM, Hugging Face's feature
    extractor eps 1e-7 for the others) or raw (Base); the conv stack's output (case c)."""
    folder, _, _, normalised = LAYOUTS[name]
    a, audio = arrays(folder), golden_audio("c_1x1.07s")
    m = model(name, mode="reference")
    with torch.inference_mode():
        x = m.normalised_features(audio)  # (1, 1, S)
        conv = m.encoder.features(x[:, 0])  # the engine's conv stack (its first conv as a product)
    expected = torch.from_numpy(a[f"unit.c.{normalised}"]) if normalised else audio
    assert float((x[:, 0] - expected).abs().max()) < 1e-5
    assert max_relative_error(conv, a["unit.c.conv_out"]) < RTOL


@pytest.mark.parametrize("name", BASE)
def test_base_feature_encoders_normalise_over_the_whole_input(name):
    """The Base layouts' first GroupNorm takes each channel's statistics over the whole input: the samples after
    the last whole frame (240 of case a's 64000) move every frame, so the reference mode keeps them. (So does the
    Large layouts' waveform normalisation, over each clip; their per-frame LayerNorms do not.)"""
    audio = golden_audio("a_3x4s")
    whole_frames = audio[:, :400 + 320 * ((audio.shape[1] - 400) // 320)]
    frames, _ = get_timestamp_embeddings(whole_frames, model(name, mode="reference"))
    assert max_relative_error(frames, golden(name, "a_3x4s")[1]) > 1e-3


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_default_mode_equals_the_reference_on_whole_frames_under_a_window(name):
    """A clip of whole 20-ms frames shorter than a window (20 s) is one unit in both modes: the same frames, at
    the same centres. (Otherwise the default mode completes the partial last frame with zeros, which the other
    frames attend to, and cuts clips longer than a window into windows: README.)"""
    audio = golden_audio("b_2x13s")
    audio = audio[:, :400 + 320 * ((audio.shape[1] - 400) // 320)]
    frames, stamps = get_timestamp_embeddings(audio, model(name, timestamp_hop_ms=20))
    expected, expected_stamps = get_timestamp_embeddings(audio, model(name, mode="reference"))
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < 1e-5
    assert torch.equal(stamps, expected_stamps)


def test_a_window_is_encoded_alone():
    """The default mode's windows (20 s, 1000 frames, 320080 samples) are units of their own: the second window's
    frames are the reference's frames of its samples alone (its GroupNorm, position conv and attention see only
    them)."""
    audio = torch.cat([golden_audio("b_2x13s").flatten()] * 2)[None, :int(2.2 * 320000)]
    frames, _ = get_timestamp_embeddings(audio, model("hubert", timestamp_hop_ms=20))
    alone, _ = get_timestamp_embeddings(audio[:, 320000:640080], model("hubert", mode="reference"))
    assert max_relative_error(frames[:, 1000:2000], alone) < 1e-5
    assert max_relative_error(frames[:, 1000:2000], get_timestamp_embeddings(
        audio, model("hubert", mode="reference"))[0][:, 1000:2000]) > 1e-2  # the whole clip's frames differ


def test_the_reference_mode_batches_whole_clips_within_batch_tokens():
    """One whole clip a call when a clip's tokens exceed batch_tokens, all three at once when they fit: the same
    embeddings."""
    audio = golden_audio("a_3x4s")
    calls = []
    embeddings = []
    for batch_tokens in (1, 597):  # 199 frames a clip
        m = model("hubert", mode="reference", batch_tokens=batch_tokens)
        encode = m.encoder.encode
        m.encoder.encode = lambda x, *args, **kwargs: calls.append(x.shape[0]) or encode(x, *args, **kwargs)
        embeddings.append(get_scene_embeddings(audio, m))
    assert calls == [1, 1, 1, 3]
    torch.testing.assert_close(embeddings[0], embeddings[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["hubert", "wav2vec2"])
def test_gura_fusion_is_the_mean_of_every_hidden_state(name):
    """GURA's HEAR 2021 modules (fusion_hubert_xlarge, fusion_wav2vec2): the raw waveform, the mean of every hidden
    state, 0 to depth, at 12.5 + 20 i ms: mode="reference", layers=list(range(depth + 1)), layer_pool="mean" (on
    the Base layouts, whose input is the raw waveform too)."""
    audio = golden_audio("a_3x4s")
    m = model(name, mode="reference", layers=[0, 1, 2], layer_pool="mean")
    frames, _ = get_timestamp_embeddings(audio, m)
    hidden, _ = golden(name, "a_3x4s")
    assert max_relative_error(frames, hidden.mean(dim=0)) < RTOL
    assert max_relative_error(get_scene_embeddings(audio, m), hidden.mean(dim=(0, 2))) < RTOL


def test_a_large_release_without_its_normalisation_is_far_off():
    """The golden's raw-input output (case c) differs from the normalised one: the Large releases' per-clip
    normalisation is part of parity, not a detail (hear-baseline pools it over the batch, GURA skips it)."""
    a = arrays("hubert_tiny_hf_ln")
    frames, _ = get_timestamp_embeddings(golden_audio("c_1x1.07s"), model("hubert_large", mode="reference"))
    assert max_relative_error(frames, a["c_1x1.07s.last_hidden_state"]) < RTOL
    assert max_relative_error(frames, a["unit.c.last_hidden_state_raw_input"]) > 0.1
