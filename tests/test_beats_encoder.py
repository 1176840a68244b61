"""The BEATs encoder against the reference's outputs (../shared/golden/beats_tiny), in float32."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from hear_msm_mae.beats import convert_state_dict
from hear_msm_mae.beats_encoder import BEATsConfig, BEATsEncoder
from hear_msm_mae.checkpoint import build_encoder, load_checkpoint

from conftest import GOLDEN, GOLDEN_CASES, max_relative_error

BEATS_DIR = GOLDEN / "beats_tiny"
TABLE = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


@pytest.fixture(scope="module")
def golden():
    """(official checkpoint {'cfg', 'model'}, golden arrays, golden.json)."""
    path = BEATS_DIR / "BEATs_tiny_golden.pt"
    if not path.is_file():
        pytest.skip(f"golden data not found at {path}")
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    return checkpoint, dict(np.load(BEATS_DIR / "golden.npz")), json.loads((BEATS_DIR / "golden.json").read_text())


def load(checkpoint, state_dict=None, **changes) -> BEATsEncoder:
    config = dataclasses.replace(BEATsConfig.from_cfg(checkpoint["cfg"]), **changes)
    model = BEATsEncoder(config).eval()
    model.load_state_dict(convert_state_dict(state_dict or checkpoint["model"], config), strict=True)
    return model


def unit(features: np.ndarray) -> torch.Tensor:
    """Golden (n, T, 128) features -> (n, 1, 128, W): frequency x time, cut to whole patches as BEATs' conv does."""
    width = features.shape[1] // 16 * 16
    return torch.from_numpy(features[:, :width]).transpose(1, 2).unsqueeze(1)


def frequency_major(tokens: np.ndarray, gf: int = 8) -> torch.Tensor:
    """Reference tokens (n, cols * gf, D), index t * gf + f -> index f * cols + t."""
    n, count, dim = tokens.shape
    return torch.from_numpy(tokens).view(n, count // gf, gf, dim).transpose(1, 2).reshape(n, count, dim)


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_tokens(golden, case):
    checkpoint, arrays, spec = golden
    x = unit(arrays[f"{case}.features"])
    with torch.no_grad():
        (tokens,) = load(checkpoint).encode(x)
    expected = frequency_major(arrays[f"{case}.tokens"])
    assert tokens.shape == expected.shape == (x.shape[0], spec["cases"][case]["n_tokens"], 192)
    assert max_relative_error(tokens, expected) < 1e-4
    assert float((tokens - expected).abs().max()) < 1e-5  # golden.json: a re-implementation got 1.9e-6


def test_every_layer_and_the_steps_before_the_encoder(golden):
    checkpoint, arrays, _ = golden
    model = load(checkpoint)
    seen = {}
    for name, module in [("patch_embed", model.layer_norm), ("encoder_input", model.post_extract_proj)]:
        module.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))  # returns None
    with torch.no_grad():
        states = model.encode(unit(arrays["a_3x4s.features"]), layers=list(range(model.depth + 1)))
    hidden = arrays["unit.hidden_states"]
    assert len(states) == len(hidden) == model.depth + 1
    for layer, state in enumerate(states):
        assert max_relative_error(state, frequency_major(hidden[layer])) < 1e-4, layer
        assert float((state - frequency_major(hidden[layer])).abs().max()) < 1e-5, layer
    for name in ["patch_embed", "encoder_input"]:  # time-major, as the reference's
        assert max_relative_error(seen[name], arrays[f"unit.{name}"]) < 1e-4, name


def test_layer_indices(golden):
    checkpoint, arrays, _ = golden
    model = load(checkpoint)
    x = unit(arrays["c_1x1.07s.features"])
    with torch.no_grad():
        first, last, final = model.encode(x, layers=[-3, -1, 2])
        (default,) = model.encode(x)
        (zero,) = model.encode(x, layers=[0])
    assert torch.equal(last, final) and torch.equal(default, final) and torch.equal(first, zero)
    for bad in ([3], [-4], [1.0], []):
        with pytest.raises(ValueError):
            model.encode(x, layers=bad)


def test_bad_input_shapes(golden):
    checkpoint, _, _ = golden
    model = load(checkpoint)
    for shape in [(1, 1, 128, 40), (1, 1, 128, 0), (1, 1, 80, 32), (1, 2, 128, 32), (128, 32)]:
        with pytest.raises(ValueError, match="multiple of 16"):
            model.encode(torch.zeros(shape))


def test_batch_independence(golden):
    checkpoint, arrays, _ = golden
    model = load(checkpoint)
    x = unit(arrays["b_2x13s.features"])
    with torch.no_grad():
        (batch,) = model.encode(x)
        (alone,) = model.encode(x[1:])
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-5)


def test_pos_conv_fold_equals_torch_weight_norm(golden):
    checkpoint, _, _ = golden
    state = checkpoint["model"]
    g, v = state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
    conv = torch.nn.Conv1d(192, 192, 128, groups=16)
    conv = torch.nn.utils.parametrizations.weight_norm(conv, dim=2)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)
        conv.parametrizations.weight.original1.copy_(v)
    folded = convert_state_dict(state, BEATsConfig.from_cfg(checkpoint["cfg"]))["encoder.pos_conv.0.weight"]
    torch.testing.assert_close(folded, conv.weight.detach(), rtol=1e-6, atol=1e-7)


def test_the_last_copy_of_the_tied_table_wins(golden):
    checkpoint, arrays, spec = golden
    state, layers = checkpoint["model"], spec["config"]["encoder_layers"]
    assert all(torch.equal(state[TABLE.format(0)], state[TABLE.format(i)]) for i in range(layers))
    x = unit(arrays["c_1x1.07s.features"])

    def tokens_with(layer: int) -> torch.Tensor:
        changed = dict(state)
        changed[TABLE.format(layer)] = state[TABLE.format(layer)] + 0.5 * torch.randn_like(state[TABLE.format(0)])
        model = load(checkpoint, changed)
        assert torch.equal(model.encoder.relative_attention_bias.weight, changed[TABLE.format(layers - 1)])
        with torch.no_grad():
            return model.encode(x)[0]

    with torch.no_grad():
        (original,) = load(checkpoint).encode(x)
    assert torch.equal(tokens_with(0), original)
    assert (tokens_with(layers - 1) - original).abs().max() > 1e-2


def test_builds_on_meta_and_loads_by_assignment(golden):
    checkpoint, arrays, _ = golden
    config = BEATsConfig.from_cfg(checkpoint["cfg"])
    with torch.device("meta"):
        model = BEATsEncoder(config)
    model.load_state_dict(convert_state_dict(checkpoint["model"], config), strict=True, assign=True)
    assert not any(t.is_meta for t in model.state_dict().values())
    x = unit(arrays["c_1x1.07s.features"])
    with torch.no_grad():
        assert torch.equal(model.eval().encode(x)[0], load(checkpoint).encode(x)[0])


def test_a_finetuned_file_loads_without_its_classifier(golden, tmp_path):
    """Fine-tuned releases add cfg entries, the predictor and label_dict: the encoder is the same."""
    checkpoint, arrays, _ = golden
    state = {**checkpoint["model"], "predictor.weight": torch.randn(5, 192), "predictor.bias": torch.randn(5)}
    path = tmp_path / "BEATs_iter3_finetuned_on_AS2M_cpt2.pt"
    torch.save({"cfg": {**checkpoint["cfg"], "finetuned_model": True, "predictor_class": 5,
                        "predictor_dropout": 0.0}, "model": state, "label_dict": {0: "/m/09x0r"}}, path)
    loaded = load_checkpoint(path)
    assert loaded.family.name == "beats" and loaded.contents["label_dict"] == {0: "/m/09x0r"}
    x = unit(arrays["a_3x4s.features"])
    with torch.no_grad():
        assert torch.equal(build_encoder(loaded).encode(x)[0], load(checkpoint).encode(x)[0])


def test_config_errors(golden):
    checkpoint, _, _ = golden
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
    model = BEATsEncoder(config).eval()
    assert not any(k.startswith("post_extract_proj") for k in model.state_dict())
    with torch.no_grad():
        (tokens,) = model.encode(torch.randn(2, 1, 128, 48))
    assert tokens.shape == (2, 24, 64)


def test_bfloat16(golden):
    checkpoint, arrays, _ = golden
    model = load(checkpoint)
    x = unit(arrays["b_2x13s.features"])
    with torch.no_grad():
        (reference,) = model.encode(x)
        (tokens,) = model.to(torch.bfloat16).encode(x.to(torch.bfloat16))
    assert tokens.dtype == torch.bfloat16 and torch.isfinite(tokens).all()
    cosine = torch.nn.functional.cosine_similarity(tokens.float(), reference, dim=-1)
    assert float(cosine.min()) > 0.99
