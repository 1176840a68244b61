"""BEATs against its reference implementation's outputs (../shared/golden/beats_tiny), in float32: the encoder
from the reference's features (every layer, the steps before the blocks, the release's weight-norm and tied
bias table, its cfg), and through the HEAR API the features, tokens, layers and frames (the default
frequency mean)."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings
from hear_msm_mae.encoders.beats import BEATsConfig, BEATsEncoder
from hear_msm_mae.checkpoint import build_encoder, load_checkpoint
from hear_msm_mae.families.beats import convert_state_dict

from conftest import GOLDEN, GOLDEN_CASES, arrays, golden_audio, max_relative_error, model, whole_columns

RTOL = 1e-4  # encoder outputs in float32, relative to the largest value
FEATURE_ATOL = 1e-4  # Kaldi fbank features, absolute
BEATS_DIR = GOLDEN / "beats_tiny"
TABLE = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


@pytest.fixture(scope="module")
def official():
    """(the official checkpoint {'cfg', 'model'}, the golden arrays, golden.json)."""
    path = BEATS_DIR / "BEATs_tiny_golden.pt"
    if not path.is_file():
        pytest.skip(f"golden data not found at {path}")
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    return checkpoint, dict(np.load(BEATS_DIR / "golden.npz")), json.loads((BEATS_DIR / "golden.json").read_text())


def load(checkpoint, state_dict=None, **changes) -> BEATsEncoder:
    config = dataclasses.replace(BEATsConfig.from_cfg(checkpoint["cfg"]), **changes)
    enc = BEATsEncoder(config).eval()
    enc.load_state_dict(convert_state_dict(state_dict or checkpoint["model"], config), strict=True)
    return enc


def unit(features: np.ndarray) -> torch.Tensor:
    """Golden (n, T, 128) features -> (n, 1, 128, W): frequency x time, cut to whole patches as BEATs' conv does."""
    width = features.shape[1] // 16 * 16
    return torch.from_numpy(features[:, :width]).transpose(1, 2).unsqueeze(1)


def frequency_major(tokens: np.ndarray, gf: int = 8) -> torch.Tensor:
    """Reference tokens (n, cols * gf, D), index t * gf + f -> index f * cols + t."""
    n, count, dim = tokens.shape
    return torch.from_numpy(tokens).view(n, count // gf, gf, dim).transpose(1, 2).reshape(n, count, dim)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_tokens(official, case):
    checkpoint, golden, spec = official
    x = unit(golden[f"{case}.features"])
    with torch.no_grad():
        (tokens,) = load(checkpoint).encode(x)
    expected = frequency_major(golden[f"{case}.tokens"])
    assert tokens.shape == expected.shape == (x.shape[0], spec["cases"][case]["n_tokens"], 192)
    assert max_relative_error(tokens, expected) < 1e-4
    assert float((tokens - expected).abs().max()) < 1e-5  # golden.json: a re-implementation got 1.9e-6


def test_every_layer_and_the_steps_before_the_encoder(official):
    checkpoint, golden, _ = official
    enc = load(checkpoint)
    seen = {}
    for name, module in [("patch_embed", enc.layer_norm), ("encoder_input", enc.post_extract_proj)]:
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))  # returns None
    with torch.no_grad():
        states = enc.encode(unit(golden["a_3x4s.features"]), layers=list(range(enc.depth + 1)))
    hidden = golden["unit.hidden_states"]
    assert len(states) == len(hidden) == enc.depth + 1
    for layer, state in enumerate(states):
        assert max_relative_error(state, frequency_major(hidden[layer])) < 1e-4, layer
        assert float((state - frequency_major(hidden[layer])).abs().max()) < 1e-5, layer
    for name in ["patch_embed", "encoder_input"]:  # time-major, as the reference's
        assert max_relative_error(seen[name], golden[f"unit.{name}"]) < 1e-4, name


def test_layer_indices(official):
    checkpoint, golden, _ = official
    enc = load(checkpoint)
    x = unit(golden["c_1x1.07s.features"])
    with torch.no_grad():
        first, last, final = enc.encode(x, layers=[-3, -1, 2])
        (default,) = enc.encode(x)
        (zero,) = enc.encode(x, layers=[0])
    assert torch.equal(last, final) and torch.equal(default, final) and torch.equal(first, zero)
    for bad in ([3], [-4], [1.0], []):
        with pytest.raises(ValueError):
            enc.encode(x, layers=bad)


def test_bad_input_shapes(official):
    checkpoint, _, _ = official
    enc = load(checkpoint)
    for shape in [(1, 1, 128, 40), (1, 1, 128, 0), (1, 1, 80, 32), (1, 2, 128, 32), (128, 32)]:
        with pytest.raises(ValueError, match="multiple of 16"):
            enc.encode(torch.zeros(shape))


def test_pos_conv_fold_equals_torch_weight_norm(official):
    checkpoint, _, _ = official
    state = checkpoint["model"]
    g, v = state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
    conv = torch.nn.Conv1d(192, 192, 128, groups=16)
    conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)
        conv.parametrizations.weight.original1.copy_(v)
    folded = convert_state_dict(state, BEATsConfig.from_cfg(checkpoint["cfg"]))["encoder.pos_conv.0.weight"]
    torch.testing.assert_close(folded, conv.weight.detach(), rtol=1e-6, atol=1e-7)


def test_the_last_copy_of_the_tied_table_wins(official):
    checkpoint, golden, spec = official
    state, layers = checkpoint["model"], spec["config"]["encoder_layers"]
    assert all(torch.equal(state[TABLE.format(0)], state[TABLE.format(i)]) for i in range(layers))
    x = unit(golden["c_1x1.07s.features"])

    def tokens_with(layer: int) -> torch.Tensor:
        changed = dict(state)
        changed[TABLE.format(layer)] = state[TABLE.format(layer)] + 0.5 * torch.randn_like(state[TABLE.format(0)])
        enc = load(checkpoint, changed)
        assert torch.equal(enc.encoder.relative_attention_bias.weight, changed[TABLE.format(layers - 1)])
        with torch.no_grad():
            return enc.encode(x)[0]

    with torch.no_grad():
        (original,) = load(checkpoint).encode(x)
    assert torch.equal(tokens_with(0), original)
    assert (tokens_with(layers - 1) - original).abs().max() > 1e-2


def test_builds_on_meta_and_loads_by_assignment(official):
    checkpoint, golden, _ = official
    config = BEATsConfig.from_cfg(checkpoint["cfg"])
    with torch.device("meta"):
        enc = BEATsEncoder(config)
    enc.load_state_dict(convert_state_dict(checkpoint["model"], config), strict=True, assign=True)
    assert not any(t.is_meta for t in enc.state_dict().values())
    x = unit(golden["c_1x1.07s.features"])
    with torch.no_grad():
        assert torch.equal(enc.eval().encode(x)[0], load(checkpoint).encode(x)[0])


def test_a_finetuned_file_loads_without_its_classifier(official, tmp_path):
    """Fine-tuned releases add cfg entries, the predictor and label_dict: the encoder is the same."""
    checkpoint, golden, _ = official
    state = {**checkpoint["model"], "predictor.weight": torch.randn(5, 192), "predictor.bias": torch.randn(5)}
    path = tmp_path / "BEATs_iter3_finetuned_on_AS2M_cpt2.pt"
    torch.save({"cfg": {**checkpoint["cfg"], "finetuned_model": True, "predictor_class": 5,
                        "predictor_dropout": 0.0}, "model": state, "label_dict": {0: "/m/09x0r"}}, path)
    loaded = load_checkpoint(path)
    assert loaded.family.name == "beats" and loaded.contents["label_dict"] == {0: "/m/09x0r"}
    x = unit(golden["a_3x4s.features"])
    with torch.no_grad():
        assert torch.equal(build_encoder(loaded).encode(x)[0], load(checkpoint).encode(x)[0])


def test_config_errors(official):
    checkpoint, _, _ = official
    cfg = checkpoint["cfg"]
    with pytest.raises(ValueError, match="'max_distance'"):
        BEATsConfig.from_cfg({k: v for k, v in cfg.items() if k != "max_distance"})
    for key, value in [("layer_norm_first", True), ("deep_norm", False), ("gru_rel_pos", False),
                       ("activation_fn", "relu"), ("encoder_attention_heads", 5), ("input_patch_size", 10),
                       ("encoder_layers", 0), ("num_buckets", 2.5)]:
        with pytest.raises(ValueError, match=f"{key}={value!r}"):
            BEATsConfig.from_cfg({**cfg, key: value})
    with pytest.raises(ValueError, match="not an official"):
        convert_state_dict({}, BEATsConfig.from_cfg(cfg))


def test_equal_widths_need_no_projection():
    config = BEATsConfig(encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                         encoder_attention_heads=2, embed_dim=64)
    enc = BEATsEncoder(config).eval()
    assert not any(k.startswith("post_extract_proj") for k in enc.state_dict())
    with torch.no_grad():
        (tokens,) = enc.encode(torch.randn(2, 1, 128, 48))
    assert tokens.shape == (2, 24, 64)


# -- through the HEAR API -------------------------------------------------------------------------

def reference_frames(case: str, layer: int = None) -> torch.Tensor:
    """The reference's tokens (or hidden states) of a case as frames (n, columns, 8 * D): time-major tokens
    are column after column, each column's 8 frequency patches in order."""
    a = arrays("beats_tiny")
    tokens = torch.from_numpy(a[f"{case}.tokens"] if layer is None else a["unit.hidden_states"][layer])
    return tokens.reshape(tokens.shape[0], -1, 8 * tokens.shape[-1])


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_beats_reference_mode_is_extract_features_of_the_whole_clip(case):
    """mode="reference": the whole clip in one pass (13 s included), frames after its last whole column
    dropped as BEATs' patch convolution drops them; timestamps at the column centres; the scene (the default
    frequency mean) is the mean of every token."""
    a, audio = arrays("beats_tiny"), golden_audio(case)
    m = model("beats", mode="reference", freq_pool="concat")
    with torch.inference_mode():
        x = m.normalised_features(audio)
    assert float((x.transpose(1, 2) - torch.from_numpy(a[f"{case}.features"])).abs().max()) < FEATURE_ATOL
    frames, stamps = get_timestamp_embeddings(audio, m)
    expected = reference_frames(case)
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < RTOL
    assert torch.equal(stamps[0], 87.5 + 160 * torch.arange(frames.shape[1], dtype=torch.float32))
    scene = get_scene_embeddings(audio, model("beats", mode="reference"))
    assert max_relative_error(scene, torch.from_numpy(a[f"{case}.tokens"]).mean(dim=1)) < RTOL


def test_beats_reference_mode_refuses_a_clip_shorter_than_one_column():
    m = model("beats", mode="reference")
    with pytest.raises(ValueError, match="shorter than one patch column"):
        get_scene_embeddings(torch.zeros(1, 400 + 14 * 160), m)  # 15 fbank frames
    assert get_scene_embeddings(torch.zeros(1, 400 + 15 * 160), m).shape == (1, 192)  # 16: one column


def test_beats_layers_are_the_hidden_states():
    m = model("beats", mode="reference", freq_pool="concat", layers=[0, 1, 2], layer_pool="concat")
    frames, _ = get_timestamp_embeddings(golden_audio("a_3x4s"), m)
    for layer, state in enumerate(frames.chunk(3, dim=-1)):
        assert max_relative_error(state, reference_frames("a_3x4s", layer)) < RTOL


def test_beats_default_mode_equals_the_reference_on_whole_columns_under_a_unit():
    """The default mode's units (1008 frames) and padded partial column are its only departures: a clip of
    whole columns under 10.08 s gets the reference's frames (the default frequency mean)."""
    audio = whole_columns(golden_audio("a_3x4s"))
    frames, _ = get_timestamp_embeddings(audio, model("beats", timestamp_hop_ms=160))
    expected = get_timestamp_embeddings(audio, model("beats", mode="reference"))[0]
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < 1e-5
