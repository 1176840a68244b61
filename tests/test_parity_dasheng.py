"""Dasheng against the `dasheng` 0.0.9 package's outputs (../shared/golden/dasheng_tiny), in float32, through the
HEAR API: mode="reference" is the package's forward (the batch's top_db floor, 252-token chunks, trailing frames
dropped), each clip alone and in its batch; the default mode floors each clip alone. Not reproduced: the
package's `x_length` attention mask (output_xlength), which the HEAR API has no input for."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings, load_model
from hear_msm_mae.checkpoint import load_checkpoint
from hear_msm_mae.families import dasheng

from conftest import GOLDEN_CASES, arrays, encoder, golden_audio, golden_path, max_relative_error, model, spec

CASES = [*GOLDEN_CASES, "d_topdb_2x1.07s"]  # d: a loud clip beside a quiet one ending in digital silence
LAYOUTS = ["dasheng", "dasheng_kwargscfg"]  # the training script's {'config', 'model'}, and plain kwargs
RTOL = 1e-4  # relative to the largest value
FEATURE_ATOL, MEL_ATOL = 1e-4, 1e-3


def audio(case: str) -> torch.Tensor:
    a = arrays("dasheng_tiny")
    return torch.from_numpy(a[f"{case}.audio"]) if f"{case}.audio" in a else golden_audio(case)


def frames_alone(clips: torch.Tensor, m) -> torch.Tensor:
    """Each clip's timestamp embeddings, embedded alone (a batch of one), stacked."""
    return torch.cat([get_timestamp_embeddings(clip[None], m)[0] for clip in clips])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES)
def test_reference_mode_is_the_package_forward(layout, case):
    """Frames = model(audio), in the batch and each clip alone; at the column centres 40 i + 15 ms; the scene
    their mean; the front end's dB mel and init_bn's features on the way."""
    a, x, m = arrays("dasheng_tiny"), audio(case), model(layout, mode="reference")
    with torch.inference_mode():
        mel, features = m.frontend(x, batch_floor=True), m.normalised_features(x)
    assert float((mel - torch.from_numpy(a[f"{case}.mel_db"])).abs().max()) < MEL_ATOL
    assert float((features - torch.from_numpy(a[f"{case}.features"][:, 0])).abs().max()) < FEATURE_ATOL
    frames, stamps = get_timestamp_embeddings(x, m)
    expected = torch.from_numpy(a[f"{case}.output"])
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < RTOL
    assert torch.equal(stamps, (15 + 40 * torch.arange(frames.shape[1], dtype=torch.float32)).repeat(len(x), 1))
    assert max_relative_error(get_scene_embeddings(x, m), expected.mean(dim=1)) < RTOL
    per_clip = torch.from_numpy(a[f"{case}.per_clip.output"])
    assert max_relative_error(frames_alone(x, m), per_clip) < RTOL


def test_the_batch_floor_in_the_reference_mode_and_not_in_the_default_one():
    """d_topdb: in the batch the loud clip raises the quiet clip's silence by ~20 dB (the reference's floor); the
    default mode floors each clip at its own maximum, so it gives the clip's per_clip output in any batch."""
    a, x = arrays("dasheng_tiny"), audio("d_topdb_2x1.07s")
    batch, per_clip = (torch.from_numpy(a[f"d_topdb_2x1.07s.{k}output"]) for k in ("", "per_clip."))
    assert float((batch - per_clip).abs().max()) > 0.1  # golden.json: 0.133
    default = model("dasheng")  # its default hop is the 40-ms column step; 108 frames are 27 whole columns
    with torch.inference_mode():
        features = default.normalised_features(x)
    assert float((features - torch.from_numpy(a["d_topdb_2x1.07s.per_clip.features"][:, 0])).abs().max()) \
        < FEATURE_ATOL
    frames, _ = get_timestamp_embeddings(x, default)
    assert max_relative_error(frames, per_clip) < RTOL
    reference = get_timestamp_embeddings(x, model("dasheng", mode="reference"))[0]
    assert max_relative_error(reference, batch) < RTOL
    assert float((reference[1] - frames[1]).abs().max()) > 0.1


def test_the_default_mode_units_are_the_reference_chunks():
    """13 s: the first unit is the first 252-token chunk exactly; in the last one the default mode also encodes
    the partial last column (padded; its centre, 13015 ms, is past the end, so it gets no timestamp), which the
    other columns of that unit attend to."""
    a, x = arrays("dasheng_tiny"), audio("b_2x13s")
    frames, stamps = get_timestamp_embeddings(x, model("dasheng"))
    expected = torch.from_numpy(a["b_2x13s.output"])
    assert frames.shape == expected.shape and float(stamps[0, -1]) == 12975
    assert max_relative_error(frames[:, :252], expected[:, :252]) < RTOL
    assert max_relative_error(frames[:, 252:], expected[:, 252:]) > 1e-3


def test_layers_are_the_hidden_states():
    """Layer 0 = patch tokens + time and frequency positions, k = block k, -1 = the final norm's output, over
    both 252-token chunks of the 13-s clips (each chunk's positions from 0)."""
    a, x = arrays("dasheng_tiny"), audio("b_2x13s")
    frames, _ = get_timestamp_embeddings(x, model("dasheng", mode="reference", layers=[0, 1, -1]))
    hidden = torch.from_numpy(a["b_2x13s.hidden_states"])
    for state, expected in zip(frames.chunk(3, dim=-1), (hidden[0], hidden[1], a["b_2x13s.output"])):
        assert max_relative_error(state, expected) < RTOL


def test_patch_embedding():
    a = arrays("dasheng_tiny")
    with torch.no_grad():
        tokens = encoder("dasheng").patch_embed(torch.from_numpy(a["a_3x4s.features"])[..., :400])
    assert max_relative_error(tokens, a["a_3x4s.patch_embed"]) < RTOL


def test_a_clip_shorter_than_one_column_is_refused_in_the_reference_mode():
    m = model("dasheng", mode="reference")
    with pytest.raises(ValueError, match="shorter than one patch column"):
        get_scene_embeddings(torch.zeros(1, 479), m)  # 3 frames
    assert get_scene_embeddings(torch.zeros(1, 480), m).shape == (1, 192)  # 4 frames: one column (golden.json)
    assert get_timestamp_embeddings(torch.zeros(1, 479), model("dasheng"))[0].shape == (1, 1, 192)


# -- files ------------------------------------------------------------------------------------------------

def dasheng_model(path):
    return load_model(path, "cpu", "dasheng", dtype="float32")


def scene(path):
    return get_scene_embeddings(audio("c_1x1.07s"), dasheng_model(path))


@pytest.fixture(scope="module")
def state():
    return torch.load(golden_path("dasheng_tiny/dasheng_tiny_golden_kwargscfg.pt"), weights_only=True)["model"]


def hf_folder(folder, state, num_heads: int = 3):
    """A Hugging Face folder as the authors' conversion script writes it (DashengModel.save_pretrained: the weights
    under encoder.* without the front-end buffers, in model.safetensors; config.json with encoder_kwargs)."""
    folder.mkdir()
    save_file({f"encoder.{k}": v.contiguous() for k, v in state.items() if not k.startswith("front_end.")},
              folder / "model.safetensors")
    kwargs = {"depth": 2, "embed_dim": 192, "num_heads": num_heads, "patch_size": [64, 4], "patch_stride": [64, 4],
              "target_length": 1008}
    (folder / "config.json").write_text(json.dumps({"architectures": ["DashengModel"], "encoder_kwargs": kwargs,
                                                    "loss": "BCELoss", "model_type": "dasheng", "name": "tiny"}))
    return folder


def test_other_layouts_of_the_same_weights(state, tmp_path):
    """The AudioSet fine-tuned file's layout (a bare state dict with the classifier outputlayer.*, dropped), and a
    Hugging Face folder (the folder or its weights file), its heads from config.json."""
    expected = scene(golden_path("dasheng_tiny/dasheng_tiny_golden.pt"))
    head = {"outputlayer.0.weight": torch.ones(192), "outputlayer.0.bias": torch.zeros(192),
            "outputlayer.1.weight": torch.zeros(527, 192), "outputlayer.1.bias": torch.zeros(527)}
    torch.save({**state, **head}, tmp_path / "dasheng_audioset.pt")
    hf = hf_folder(tmp_path / "dasheng-tiny", state)
    for path in (tmp_path / "dasheng_audioset.pt", hf, hf / "model.safetensors"):
        assert load_checkpoint(path).family.name == "dasheng"  # detected
        assert torch.equal(scene(path), expected), path
    assert load_checkpoint(hf_folder(tmp_path / "two_heads", state, num_heads=2)).config.num_heads == 2


def test_heads_from_the_config_else_the_release(state, tmp_path, monkeypatch):
    """Nothing in the weights tells the heads: the config's num_heads, else the release's by width (the 0.6B
    model's are 80 wide), else width / 64."""
    torch.save(state, tmp_path / "bare.pt")
    torch.save({"model": state, "config": {"num_heads": 2}}, tmp_path / "two_heads.pt")
    assert load_checkpoint(tmp_path / "bare.pt").config.num_heads == 3
    assert load_checkpoint(tmp_path / "two_heads.pt").config.num_heads == 2
    assert load_checkpoint(golden_path("dasheng_tiny/dasheng_tiny_golden.pt")).config.num_heads == 3  # model_args
    monkeypatch.setattr(dasheng, "RELEASE_HEADS", {192: 4})
    assert load_checkpoint(tmp_path / "bare.pt").config.num_heads == 4
    assert not torch.equal(scene(tmp_path / "bare.pt"), scene(tmp_path / "two_heads.pt"))


@pytest.mark.parametrize("change, message", [
    (lambda c: c["config"].update(n_mels=128), "n_mels"),
    (lambda c: c["config"].update(hop_size=320), "hop_size"),
    (lambda c: c["model"].update({"front_end.0.mel_scale.fb": torch.zeros(257, 128)}), "mel_scale.fb"),
    (lambda c: c["model"].update({"front_end.0.spectrogram.window": torch.ones(512)}), "spectrogram.window"),
    (lambda c: c["model"].pop("init_bn.1.running_var"), "running_var"),
    (lambda c: c["model"].update({"blocks.0.ls1.gamma": torch.ones(192)}), "ls1.gamma"),  # LayerScale: none released
    (lambda c: c["config"].update(patch_stride=[64, 2]), "patch_stride"),
])
def test_what_this_package_does_not_compute_is_refused_by_name(state, tmp_path, change, message):
    contents = {"model": dict(state), "config": dict(spec("dasheng_tiny")["checkpoint"]["files"]
                                                     ["dasheng_tiny_golden_kwargscfg.pt"]["config"])}
    change(contents)
    torch.save(contents, tmp_path / "changed.pt")
    with pytest.raises(ValueError, match=message):
        dasheng_model(tmp_path / "changed.pt")


def test_batchnorm_becomes_per_bin_statistics(state):
    """init_bn in eval mode (running statistics, eps 1e-5) is (x - mean_f) / std_f per mel bin."""
    mean, std = load_checkpoint(golden_path("dasheng_tiny/dasheng_tiny_golden.pt")).norm_stats
    bn = torch.nn.BatchNorm2d(64).eval()
    bn.load_state_dict({k[len("init_bn.1."):]: v for k, v in state.items() if k.startswith("init_bn.1.")})
    x = torch.from_numpy(np.random.default_rng(0).normal(-30, 20, (2, 64, 50)).astype(np.float32))
    with torch.no_grad():
        expected = bn(x.unsqueeze(2)).squeeze(2)  # (B, F, 1, T): the bins as channels, as init_bn's Rearrange
    assert mean.shape == std.shape == (64, 1)
    assert float(((x - mean) / std - expected).abs().max()) < 1e-5
