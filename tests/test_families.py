"""Every family against its reference implementation's own outputs (../shared/golden/*/golden.npz).

Encoder-level arrays (tokens, hidden states, pooled outputs) are computed from the reference's own
features, so they test the encoder and the checkpoint mapping alone; features, frames, scene
embeddings and timestamps are computed from the audio, through the HEAR API.
"""
import json

import numpy as np
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings, load_model
from hear_msm_mae.checkpoint import build_encoder, load_checkpoint

from conftest import FAMILY_CHECKPOINTS, GOLDEN, GOLDEN_CASES, golden_audio, golden_path, max_relative_error

RTOL = 1e-4  # encoder outputs in float32, relative to the largest value
FEATURE_ATOL = 1e-4  # Kaldi fbank features, absolute


def arrays(folder: str) -> dict:
    return dict(np.load(GOLDEN / folder / "golden.npz"))


def spec(folder: str) -> dict:
    return json.loads((GOLDEN / folder / "golden.json").read_text())


def encoder(name: str):
    family, relative = FAMILY_CHECKPOINTS[name]
    return build_encoder(load_checkpoint(golden_path(relative), family))


def model(name: str, **options):
    family, relative = FAMILY_CHECKPOINTS[name]
    return load_model(golden_path(relative), "cpu", family, dtype="float32", **options)


def time_major(tokens: torch.Tensor, prefix: int, freq_patches: int) -> torch.Tensor:
    """Our frequency-major tokens (n, prefix + gf * gt, D) in a time-major reference's order (t * gf + f)."""
    n, _, d = tokens.shape
    patches = tokens[:, prefix:].reshape(n, freq_patches, -1, d).transpose(1, 2).reshape(n, -1, d)
    return torch.cat([tokens[:, :prefix], patches], dim=1)


def encode(enc, features: torch.Tensor, layers=None):
    with torch.no_grad():
        return enc.encode(features, layers)


# -- M2D ----------------------------------------------------------------------------------------------

M2D = "m2d_vit_tiny-80x208p16x16-golden"


@pytest.mark.parametrize("name", ["m2d", "m2d_enconly"])
def test_m2d_tokens_and_hidden_states(name):
    a, enc = arrays(M2D), encoder(name)
    for case in GOLDEN_CASES:
        unit = torch.from_numpy(a[f"{case}.features"][..., :208])  # the first unit (short for case c)
        assert max_relative_error(encode(enc, unit)[0], a[f"{case}.tokens"]) < RTOL
    hidden = a["unit.hidden_states"]  # input of block 0, outputs of blocks 1..depth (before the final norm)
    states = encode(enc, torch.from_numpy(a["a_3x4s.features"][..., :208]), layers=[0, 1, 2])
    assert max_relative_error(states[0], hidden[0]) < RTOL and max_relative_error(states[1], hidden[1]) < RTOL
    assert max_relative_error(states[2], a["a_3x4s.tokens"]) < RTOL  # the final output is normed


@pytest.mark.parametrize("name", ["m2d", "m2d_enconly"])
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_m2d_portable_runtime_outputs(name, case):
    a = arrays(M2D)
    m = model(name, mode="reference")
    audio = golden_audio(case)
    features = a[f"{case}.features"][:, 0]
    with torch.inference_mode():
        ours = m.normalised_features(audio)
    assert float((ours - torch.from_numpy(features[..., :ours.shape[-1]])).abs().max()) < 5e-4  # STFT vs nnAudio
    frames, stamps = get_timestamp_embeddings(audio, m)
    assert frames.shape == a[f"{case}.frames"].shape
    assert max_relative_error(frames, a[f"{case}.frames"]) < RTOL
    assert max_relative_error(get_scene_embeddings(audio, m), a[f"{case}.scene"]) < RTOL
    assert torch.equal(stamps, torch.from_numpy(a[f"{case}.timestamps"]))


def test_m2d_norm_stats_come_from_the_weights():
    m = model("m2d_enconly")
    assert m.norm_stats == pytest.approx(tuple(spec(M2D)["config"]["norm_stats"]))


# -- Audio-MAE ----------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("case", ["a_3x4s", "c_1x1.07s"])  # b (13 s) is two units here, cut to 10.24 s there
def test_audiomae_finetuned_scene_through_the_api(case):
    m = model("audiomae_ft", scene="pooled", pad_last_unit=True)  # the reference pads every clip to 1024 frames
    scene = get_scene_embeddings(golden_audio(case), m)
    assert max_relative_error(scene, arrays("audiomae_tiny_ft")[f"{case}.pooled"]) < RTOL


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_audiomae_frames_through_the_api(case):
    """Columns of the reference's padded 1024-frame unit, frequency patches concatenated."""
    a, m = arrays("audiomae_tiny"), model("audiomae", freq_pool="concat", pad_last_unit=True)
    with torch.inference_mode():
        frames = m.frame_embeddings(m.normalised_features(golden_audio(case)))
    fbank_frames = spec("audiomae_tiny")["config"]["n_fbank_frames"][case][0]
    assert frames.shape[1] == -(-fbank_frames // 16)  # every column covering the clip
    cols = min(frames.shape[1], 64)  # the reference cuts b (13 s) to its first unit
    expected = torch.from_numpy(a[f"{case}.tokens"][:, 1:]).reshape(frames.shape[0], 64, 8 * 192)[:, :cols]
    assert max_relative_error(frames[:, :cols], expected) < RTOL


def test_audiomae_atst_frame_recipe():
    """The ATST authors' comparison module: its own statistics, no padding, tokens averaged over frequency."""
    a, enc = arrays("audiomae_tiny"), encoder("audiomae")
    stats = spec("audiomae_tiny")["config"]["frame_embedding_atst"]["transform"]
    assert "-6.030435443767988" in stats and "4.102992546322562" in stats
    m = model("audiomae", norm_mean=-6.030435443767988, norm_std=4.102992546322562)
    for case in ("a_3x4s", "c_1x1.07s"):
        with torch.inference_mode():
            x = m.normalised_features(golden_audio(case))
        x = x[..., :x.shape[-1] // 16 * 16].unsqueeze(1)  # whole patches only
        tokens = encode(enc, x)[0]
        frames = tokens[:, 1:].reshape(x.shape[0], 8, -1, 192).mean(dim=1)
        assert max_relative_error(frames, a[f"{case}.atst_frames"]) < RTOL


# -- AST ----------------------------------------------------------------------------------------------

def ast_features(a: dict, case: str, frames: int = 1024) -> torch.Tensor:
    return torch.from_numpy(a[f"{case}.features"][:, :frames]).transpose(1, 2).unsqueeze(1)  # (n, 1, 128, T)


def test_ast_pooled_logits_tokens_at_1024():
    a, enc = arrays("ast_tiny"), encoder("ast")
    head = torch.load(golden_path(FAMILY_CHECKPOINTS["ast"][1]), weights_only=True)
    for case in GOLDEN_CASES:
        tokens = encode(enc, ast_features(a, case))[0]
        pooled = enc.pooled(tokens)
        assert max_relative_error(pooled, a[f"{case}.pooled"]) < RTOL
        logits = torch.nn.functional.linear(
            torch.nn.functional.layer_norm(pooled, (192,), head["module.mlp_head.0.weight"],
                                           head["module.mlp_head.0.bias"], eps=1e-5),
            head["module.mlp_head.1.weight"], head["module.mlp_head.1.bias"])
        assert max_relative_error(logits, a[f"{case}.logits"]) < RTOL
        if case == "a_3x4s":
            assert max_relative_error(tokens[:1], a["a_3x4s.tokens"]) < RTOL


def test_ast_other_input_lengths_cut_or_interpolate_the_position_table():
    a = arrays("ast_tiny")
    path = golden_path(FAMILY_CHECKPOINTS["ast"][1])
    short, long = (build_encoder(load_checkpoint(path, "ast", unit_frames=t)) for t in (400, 1200))
    m = model("ast", unit_frames=1200)
    hidden = encode(short, ast_features(a, "a_3x4s", 400)[:1], layers=[0, 1, 2])
    assert all(max_relative_error(h, a["unit.hidden_states"][k]) < RTOL for k, h in enumerate(hidden[:2]))
    for case in GOLDEN_CASES:
        assert max_relative_error(short.pooled(encode(short, ast_features(a, case, 400))[0]),
                                  a[f"{case}.pooled_t400"]) < RTOL
        with torch.inference_mode():  # the front end at target_length 1200: padded with zero frames or cut
            x = m.normalised_features(golden_audio(case))
        x = torch.nn.functional.pad(x, (0, max(0, 1200 - x.shape[-1])), value=m.pad_value)[..., :1200]
        assert max_relative_error(long.pooled(encode(long, x.unsqueeze(1))[0]), a[f"{case}.pooled_t1200"]) < RTOL


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_ast_features_and_scene_through_the_api(case):
    a, m = arrays("ast_tiny"), model("ast", scene="pooled", pad_last_unit=True)  # padded to 1024 frames, as AST's
    with torch.inference_mode():
        x = m.normalised_features(golden_audio(case))
    x = torch.nn.functional.pad(x, (0, max(0, 1024 - x.shape[-1])), value=m.pad_value)[..., :1024]
    assert float((x - ast_features(a, case)[:, 0]).abs().max()) < FEATURE_ATOL
    if case != "b_2x13s":  # b (13 s) is two units here, cut to 10.24 s there
        assert max_relative_error(get_scene_embeddings(golden_audio(case), m), a[f"{case}.pooled"]) < RTOL


def test_ast_short_last_unit_takes_the_middle_of_the_position_table():
    """Unpadded, a clip of 396 frames (39 columns) is one short unit, its positions the middle 39 columns of
    the table: AST's own model for input_tdim 400 (whose convolution sees the same 396 frames)."""
    a = arrays("ast_tiny")
    audio = golden_audio("a_3x4s")[:, :(396 - 1) * 160 + 400]  # fbank frames are local: the first 396 of a's
    pooled = get_scene_embeddings(audio, model("ast", scene="pooled"))
    assert max_relative_error(pooled, a["a_3x4s.pooled_t400"]) < RTOL


# -- BEATs --------------------------------------------------------------------------------------------

def whole_columns(audio: torch.Tensor) -> torch.Tensor:
    """The clip cut to the fbank frames of its whole 16-frame columns: what BEATs' patches see (a frame
    depends only on its own 400 samples, so these frames are the reference's)."""
    frames = (1 + (audio.shape[-1] - 400) // 160) // 16 * 16
    return audio[:, :(frames - 1) * 160 + 400]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_beats_features_and_tokens_through_the_api(case):
    """A unit long enough for the clip: frames (frequency patches concatenated) are the reference's tokens."""
    a = arrays("beats_tiny")
    m = model("beats", unit_frames=1312, freq_pool="concat")
    with torch.inference_mode():
        x = m.normalised_features(golden_audio(case))
        frames = m.frame_embeddings(m.normalised_features(whole_columns(golden_audio(case))))
    assert float((x.transpose(1, 2) - torch.from_numpy(a[f"{case}.features"])).abs().max()) < FEATURE_ATOL
    tokens = torch.from_numpy(a[f"{case}.tokens"])  # (n, cols * 8, D), time-major
    assert max_relative_error(frames, tokens.reshape(tokens.shape[0], -1, 8 * tokens.shape[-1])) < RTOL


def test_beats_layers_are_the_hidden_states():
    a = arrays("beats_tiny")
    m = model("beats", freq_pool="concat", layers=[0, 1, 2], layer_pool="concat")
    with torch.inference_mode():
        frames = m.frame_embeddings(m.normalised_features(whole_columns(golden_audio("a_3x4s"))))
    for layer, state in enumerate(frames.chunk(3, dim=-1)):
        hidden = torch.from_numpy(a["unit.hidden_states"][layer])
        assert max_relative_error(state, hidden.reshape(3, -1, 8 * 192)) < RTOL


# -- every family -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_every_layout_loads_strictly_and_is_detected(name):
    family, relative = FAMILY_CHECKPOINTS[name]
    checkpoint = load_checkpoint(golden_path(relative))  # no family given: detected
    assert checkpoint.family.name == family
    build_encoder(checkpoint)  # strict: raises on any missing, unexpected or mis-shaped weight


@pytest.mark.parametrize("name", ["m2d", "audiomae", "ast", "beats", "msm_mae"])
def test_a_file_of_another_family_is_refused_by_name(name):
    family, relative = FAMILY_CHECKPOINTS[name]
    other = "beats" if family != "beats" else "ast"
    with pytest.raises(ValueError, match=rf"looks like an? {load_checkpoint(golden_path(relative)).family.title}"):
        load_checkpoint(golden_path(relative), other)


def test_m2d_32k_releases_get_the_32k_front_end(tmp_path):
    """M2D names its 32 kHz releases in the folder (p32k): same encoder, log-mel at 32 kHz (100 frames/s)."""
    import shutil

    from hear_msm_mae.frontend import LogMelConfig

    source = golden_path(FAMILY_CHECKPOINTS["m2d_enconly"][1])
    folder = tmp_path / "m2d_vit_tiny-80x208p16x16p32k-golden_enconly"
    folder.mkdir()
    shutil.copy(source, folder / source.name)
    m32, m16 = load_model(folder / source.name, "cpu", dtype="float32"), model("m2d_enconly")
    assert m32.sample_rate == 32000 and m32.frontend.config == LogMelConfig.m2d_32k()
    audio16 = golden_audio("a_3x4s")
    audio32 = torch.from_numpy(np.repeat(audio16.numpy(), 2, axis=1))  # the same sound at twice the rate
    frames32, stamps32 = get_timestamp_embeddings(audio32, m32)
    frames16, stamps16 = get_timestamp_embeddings(audio16, m16)
    assert torch.equal(stamps32, stamps16) and frames32.shape == frames16.shape
    assert float(torch.nn.functional.cosine_similarity(frames32, frames16, dim=-1).mean()) > 0.9
    with pytest.raises(ValueError, match="16 or 32 kHz"):
        folder48 = tmp_path / "m2d_vit_tiny-80x208p16x16p48k-golden"
        folder48.mkdir()
        shutil.copy(source, folder48 / source.name)
        load_checkpoint(folder48 / source.name)


def test_msm_mae_official_args_norm_stats_are_used(tmp_path):
    """An official MSM-MAE file whose args hold norm_stats = [mean, std] is normalised with them."""
    import argparse

    path = golden_path(FAMILY_CHECKPOINTS["msm_mae"][1])
    contents = torch.load(path, weights_only=False)
    contents["args"] = argparse.Namespace(**{**vars(contents["args"]), "norm_stats": [-5.5, 3.25]})
    folder = tmp_path / path.parent.name
    folder.mkdir()
    torch.save(contents, folder / path.name)
    assert load_model(folder / path.name, "cpu").norm_stats == (-5.5, 3.25)
    assert load_model(path, "cpu").norm_stats == (-7.1, 4.2)  # none stored: AudioSet's


def test_audiomae_layers_through_the_api():
    """layers=[0, 1, 2]: the embedded input, block 1, and the final output, each as frame embeddings."""
    a = arrays("audiomae_tiny")
    m = model("audiomae", freq_pool="concat", layers=[0, 1, 2], layer_pool="concat", pad_last_unit=True)
    with torch.inference_mode():
        frames = m.frame_embeddings(m.normalised_features(golden_audio("a_3x4s")[:1]))  # (1, 25, 3 * 8 * 192)
    hidden = [a["unit.hidden_states"][0], a["unit.hidden_states"][1], a["a_3x4s.tokens"][:1]]
    for layer, (ours, theirs) in enumerate(zip(frames.chunk(3, dim=-1), hidden)):
        expected = torch.from_numpy(theirs[:, 1:]).reshape(1, 64, 8 * 192)[:, :frames.shape[1]]
        assert max_relative_error(ours, expected) < RTOL, layer


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_embeddings_do_not_depend_on_the_batch(name):
    m = model(name)
    audio = golden_audio("a_3x4s")
    batch = torch.cat([audio, 10 * audio[:1]])
    scene = get_scene_embeddings(batch, m)
    frames, stamps = get_timestamp_embeddings(batch, m)
    alone_frames, alone_stamps = get_timestamp_embeddings(audio[1:2], m)
    torch.testing.assert_close(get_scene_embeddings(audio[1:2], m)[0], scene[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone_frames[0], frames[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(alone_stamps[0], stamps[1])


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_bfloat16_is_close_to_float32(name):
    family, relative = FAMILY_CHECKPOINTS[name]
    audio = golden_audio("b_2x13s")
    exact = get_scene_embeddings(audio, model(name))
    fast = load_model(golden_path(relative), "cpu", family, dtype="bfloat16")
    assert next(fast.encoder.parameters()).dtype == torch.bfloat16
    assert float(torch.nn.functional.cosine_similarity(get_scene_embeddings(audio, fast), exact).min()) > 0.999


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_bad_audio_is_refused_alike(name):
    m = model(name)
    for audio, error, message in [(torch.zeros(1, 100), ValueError, "too short"),
                                  (torch.zeros(1, 16000, dtype=torch.int16), TypeError, "int16"),
                                  (torch.zeros(16000), ValueError, "unsqueeze"),
                                  (torch.full((1, 16000), float("nan")), ValueError, "NaN")]:
        for embed in (get_scene_embeddings, get_timestamp_embeddings):
            with pytest.raises(error, match=message):
                embed(audio, m)


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_a_truncated_file_is_refused_by_name(name, tmp_path):
    family, relative = FAMILY_CHECKPOINTS[name]
    broken = tmp_path / f"truncated-{golden_path(relative).name}"
    broken.write_bytes(golden_path(relative).read_bytes()[:200_000])
    with pytest.raises(ValueError, match=f"{broken.name}.*truncated"):
        load_model(broken, "cpu", family)


@pytest.mark.parametrize("options, message", [
    (dict(scene="pooled"), "no clip-level output"),
    (dict(mode="reference"), "no reference HEAR wrapper"),
    (dict(unit_frames=400), "fixed at 1024"),
    (dict(layers=[3]), "out of range"),
    (dict(timestamp_hop_ms=30), "timestamp_hop_ms"),
])
def test_options_a_family_cannot_honour_are_errors(options, message):
    with pytest.raises(ValueError, match=message):
        model("audiomae", **options)
