"""AST against its reference implementation's outputs (../shared/golden/ast_tiny): pooled outputs, logits and
tokens at 1024 frames, the position table cut (400) or interpolated (1200), hidden states, features, and
through the HEAR API the pooled scene, the short last unit and the frames (the default frequency mean)."""
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings

from conftest import (FAMILY_CHECKPOINTS, GOLDEN_CASES, arrays, encode, encoder, golden_audio, golden_path,
                      max_relative_error, model)

RTOL = 1e-4  # encoder outputs in float32, relative to the largest value
FEATURE_ATOL = 1e-4  # Kaldi fbank features, absolute


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
    short, long = (encoder("ast", unit_frames=t) for t in (400, 1200))
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
def test_ast_reference_mode_is_its_dataloader_on_every_clip(case):
    """mode="reference": the fbank padded with zero frames or cut to 1024 frames, as AST's dataloader does;
    the pooled output (cls + dist) / 2 as the scene; frames (the columns' frequency mean) at column centres."""
    a, audio = arrays("ast_tiny"), golden_audio(case)
    m = model("ast", mode="reference", scene="pooled")
    with torch.inference_mode():
        x = m.normalised_features(audio)
    x = torch.nn.functional.pad(x, (0, max(0, 1024 - x.shape[-1])), value=m.pad_value)[..., :1024]
    assert float((x - ast_features(a, case)[:, 0]).abs().max()) < FEATURE_ATOL
    assert max_relative_error(get_scene_embeddings(audio, m), a[f"{case}.pooled"]) < RTOL
    frames, stamps = get_timestamp_embeddings(audio, m)
    columns = min(-(-(x.shape[-1] - 16) // 10) + 1, 101)
    assert frames.shape[1] == stamps.shape[1] == min(-(-(m.frontend.num_frames(audio.shape[1]) - 16) // 10) + 1, 101)
    assert torch.equal(stamps[0], 87.5 + 100 * torch.arange(frames.shape[1], dtype=torch.float32)) and columns
    if case == "a_3x4s":  # the reference's tokens are of clip 0 of a
        tokens = torch.from_numpy(a["a_3x4s.tokens"])[:, 2:]  # (1, 12 * 101, D), frequency-major
        expected = tokens.reshape(1, 12, 101, -1).mean(dim=1)[:, :frames.shape[1]]
        assert max_relative_error(frames[:1], expected) < RTOL


def test_ast_short_last_unit_takes_the_middle_of_the_position_table():
    """Unpadded, a clip of 396 frames (39 columns) is one short unit, its positions the middle 39 columns of
    the table: AST's own model for input_tdim 400 (whose convolution sees the same 396 frames)."""
    a = arrays("ast_tiny")
    audio = golden_audio("a_3x4s")[:, :(396 - 1) * 160 + 400]  # fbank frames are local: the first 396 of a's
    pooled = get_scene_embeddings(audio, model("ast", scene="pooled"))
    assert max_relative_error(pooled, a["a_3x4s.pooled_t400"]) < RTOL
