"""ATST-Frame and ATST-Clip against the ATST authors' code (../shared/golden: atst_frame_tiny and atst_clip_tiny,
Lightning files; atst_clip_tiny_dino, ATST-Clip base's layout, the same teacher), in float32: the front end, the
patch embedding, hidden states and normed layers from the reference's features; through the HEAR API, on every
golden clip (3 x 4 s, 2 x 13 s, 1 x 1.07 s, never cut), mode="reference" (ATST-Frame's HEAR wrapper, ATST-Clip's
linear evaluation and frame-level module) and what the default mode keeps of them; the loader's allowlist and
refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hear_msm_mae import atst_clip
from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings, load_model
from hear_msm_mae.families.atst_reference import LinearEvaluation, central_crop
from hear_msm_mae.checkpoint import read_file

from conftest import (FAMILY_CHECKPOINTS, GOLDEN_CASES, arrays, encode, encoder, golden_audio, golden_path,
                      max_relative_error, model, spec)
from test_checkpoint import CreatesFile

RTOL = 1e-4  # float32, relative to the largest value (golden.json: a re-implementation got 1.6e-6 absolute)
FRAME, CLIP, CLIP_BASE = "atst_frame_tiny", "atst_clip_tiny", "atst_clip_tiny_dino"
CLIP_LAYOUTS = [("atst_clip", CLIP), ("atst_clip_base", CLIP_BASE)]


def path(name: str):
    return golden_path(FAMILY_CHECKPOINTS[name][1])


def frame_file() -> dict:
    """ATST-Frame's golden file as read, its numpy scalars made floats: torch.save under NumPy 2 would pickle
    them as numpy._core.multiarray.scalar, which the official files never hold and the loader refuses."""
    contents = read_file(path("atst_frame"))
    for group in contents["optimizer_states"][0]["param_groups"]:
        group.update({k: float(v) for k, v in group.items() if isinstance(v, np.floating)})
    return contents


def noise(samples: int, n: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(n, samples, generator=torch.Generator().manual_seed(0))


def hidden_states(enc, x: torch.Tensor) -> list:
    """The embedded input and every block's output before the norm (n, prefix + columns, D), by hooks."""
    seen = []
    hooks = [block.register_forward_hook(lambda module, inputs, out: seen.append(out)) for block in enc.blocks]
    try:
        embedded, _ = encode(enc, x, layers=[0, enc.depth])
    finally:
        for hook in hooks:
            hook.remove()
    return [embedded, *seen]


def chunks(x: torch.Tensor, frames: int) -> list:
    """The reference's chunks of `frames` frames of features (..., T), each cut to whole 4-frame columns."""
    return [x[..., s:s + min(frames, x.shape[-1] - s) // 4 * 4] for s in range(0, x.shape[-1], frames)]


# -- from the reference's features -----------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_features(case):
    """The dB front end (its floor per clip) and the fixed MinMax as normalisation statistics: of the whole clip
    (ATST-Frame's wrapper), its central 12 s (ATST-Clip's linear evaluation) and 10 s (its frame-level module)."""
    audio, m = golden_audio(case), model("atst_frame", mode="reference")
    with torch.inference_mode():
        computed = [m.normalised_features(audio), central_crop(m, audio, 12.0)[0], central_crop(m, audio, 10.0)[0]]
    for x, (folder, key) in zip(computed, [(FRAME, "features"), (CLIP, "features"), (CLIP_BASE, "frame_features")]):
        expected = arrays(folder)[f"{case}.{key}"][:, 0]
        assert x.shape == expected.shape and float((x - torch.from_numpy(expected)).abs().max()) < 1e-5, folder


def test_the_linear_patch_embedding_is_the_conv_weight():
    """The reference's Linear(256, D) on 64x4 patches flattened mel-major (its unit.patches) = our Conv2d."""
    a, enc = arrays(FRAME), encoder("atst_frame")
    state = read_file(path("atst_frame"))["state_dict"]
    weight, bias = (state[f"model.teacher.encoder.patch_embed.patch_embed.{k}"] for k in ("weight", "bias"))
    expected = F.linear(torch.from_numpy(a["unit.patches"]), weight, bias)
    with torch.no_grad():
        patches = enc.patch_embed(torch.from_numpy(a["a_3x4s.features"])[..., :400])
    assert max_relative_error(patches, expected) < RTOL


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_frame_hidden_states_chunk_by_chunk(case):
    a, enc = arrays(FRAME), encoder("atst_frame")
    per_chunk = [hidden_states(enc, x) for x in chunks(torch.from_numpy(a[f"{case}.features"]), 1001)]
    expected = a[f"{case}.hidden_states"]
    for layer, state in enumerate(torch.cat(states, dim=1) for states in zip(*per_chunk)):
        assert state.shape == expected[layer].shape and max_relative_error(state, expected[layer]) < RTOL, layer


@pytest.mark.parametrize("name", ["atst_clip", "atst_clip_base"])
def test_clip_hidden_states_and_normed_layers(name):
    """[CLS] first at position slot 0; every block's output through the final norm (chunk layers)."""
    a, enc = arrays(CLIP), encoder(name)
    for layer, state in enumerate(hidden_states(enc, torch.from_numpy(a["a_3x4s.features"])[..., :400])):
        assert max_relative_error(state, a["unit.hidden_states"][layer]) < RTOL, layer
    for case in GOLDEN_CASES:
        for index, x in enumerate(chunks(torch.from_numpy(a[f"{case}.features"]), 601)):
            for layer, state in enumerate(encode(enc, x, layers=[1, 2, 3])):
                expected = a[f"{case}.chunk{index}_layers"][layer]
                assert state.shape == expected.shape and max_relative_error(state, expected) < RTOL, (case, layer)


# -- through the HEAR API: the authors' recipes (mode="reference") ----------------------------------------

@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_frame_reference_mode_is_the_authors_hear_wrapper(case):
    """1001-frame chunks, the last 12 normed blocks concatenated, timestamps 40 i ms, the scene an equal-weight
    mean of the chunks' means; sizes as computed (embedding.py declares 1536 and 768 here)."""
    a, audio, m = arrays(FRAME), golden_audio(case), model("atst_frame", mode="reference")
    frames, stamps = get_timestamp_embeddings(audio, m)
    expected = a[f"{case}.timestamp_embeddings"]
    assert frames.shape == expected.shape and m.timestamp_embedding_size == expected.shape[-1] == 3 * 64
    assert max_relative_error(frames, expected) < RTOL
    assert torch.equal(stamps, torch.from_numpy(a[f"{case}.timestamps"]))
    scene = get_scene_embeddings(audio, m)
    assert scene.shape == (audio.shape[0], m.scene_embedding_size)
    assert max_relative_error(scene, a[f"{case}.scene_embeddings"]) < RTOL


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_frame_linear_evaluation(case):
    """ATST-Frame's own linear-evaluation recipe: ATST-Clip's over 1001-frame chunks, without [CLS], each chunk's
    token sum divided by its own tokens."""
    m = model("atst_frame", mode="reference")
    with torch.inference_mode():
        features = LinearEvaluation(1001, divisor="chunk")(m, golden_audio(case))
    assert max_relative_error(features, arrays(FRAME)[f"{case}.lineareval_embedding"]) < RTOL


@pytest.mark.parametrize("name, folder", CLIP_LAYOUTS)
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_clip_reference_scene_is_the_authors_linear_evaluation(name, folder, case):
    """The central 12 s, 601-frame chunks ([CLS] and mean of the last 12 normed blocks), chunk 0 divided by the
    clip's remaining frames (b: 150 tokens / 300), a later chunk weighted only past half a chunk."""
    m = model(name, mode="reference")
    scene = get_scene_embeddings(golden_audio(case), m)
    expected = arrays(folder)[f"{case}.lineareval_embedding"]
    assert m.scene_embedding_size == expected.shape[-1] == 2 * 3 * 64
    assert scene.shape == expected.shape and max_relative_error(scene, expected) < RTOL


@pytest.mark.parametrize("name", ["atst_clip", "atst_clip_base"])
@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_clip_reference_frames_are_the_authors_frame_level_module(name, case):
    """The central 10 s in one pass, the last block normed, [CLS] dropped (the authors' module reads only the base
    file's layout; the small file's teacher is the same); timestamps: the tokens' centres in the clip."""
    frames, stamps = get_timestamp_embeddings(golden_audio(case), model(name, mode="reference"))
    expected = arrays(CLIP_BASE)[f"{case}.frame_tokens"]
    assert frames.shape == expected.shape and max_relative_error(frames, expected) < RTOL
    first_ms = spec(CLIP_BASE)["cases"][case]["frame_crop_start_sample"] / 16 + 15
    torch.testing.assert_close(stamps[0], first_ms + 40.0 * torch.arange(frames.shape[1]), rtol=0, atol=1e-3)


def test_frame_reference_keeps_the_empty_tail_chunk():
    """1002 frames: chunk 1 has 1 frame and no token, and still enters the equal-weight mean as a zero vector."""
    m = model("atst_frame", mode="reference")
    audio = noise(160160)
    frames, stamps = get_timestamp_embeddings(audio, m)
    assert frames.shape[1] == 250 and float(stamps[0, -1]) == 9960.0
    torch.testing.assert_close(get_scene_embeddings(audio, m), frames.sum(dim=1) / (250 + 1e-6) / 2)


def test_clip_reference_batches_are_bounded():
    audio = golden_audio("b_2x13s")
    whole = model("atst_clip", mode="reference")
    bounded = model("atst_clip", mode="reference", batch_tokens=151)  # one clip's 150-column chunk per call
    shapes, encode_units = [], bounded.encoder.encode
    bounded.encoder.encode = lambda x, *args: shapes.append(tuple(x.shape)) or encode_units(x, *args)
    torch.testing.assert_close(get_scene_embeddings(audio, bounded), get_scene_embeddings(audio, whole))
    assert shapes == [(1, 1, 64, 600)] * 4  # 2 clips x 2 chunks of the 12-s crop
    torch.testing.assert_close(get_timestamp_embeddings(audio, bounded)[0], get_timestamp_embeddings(audio, whole)[0])


# -- the default mode ---------------------------------------------------------------------------------------

def test_the_default_mode_departs_from_the_frame_wrapper_only_in_its_conventions():
    """layers="all" at the 40-ms column step: on a clip of whole columns under 10 s the wrapper's frames, at the
    columns' centres (+15 ms) instead of their starts."""
    audio = noise(399 * 160, n=2)  # 400 frames: 100 whole columns
    reference = get_timestamp_embeddings(audio, model("atst_frame", mode="reference"))
    frames, stamps = get_timestamp_embeddings(audio, model("atst_frame", layers="all", timestamp_hop_ms=40))
    torch.testing.assert_close(frames, reference[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(stamps, reference[1] + 15)


def test_the_clip_default_mode_gives_its_cls_and_frames():
    """scene="pooled" is ATST-Clip's [CLS] of the last normed block, the frames its last block's tokens: on a clip
    of whole columns within one unit (c: 27 columns) the linear evaluation's last [CLS] and the frame-level
    module's tokens."""
    audio = golden_audio("c_1x1.07s")
    cls = get_scene_embeddings(audio, model("atst_clip", scene="pooled"))
    assert max_relative_error(cls, arrays(CLIP)["c_1x1.07s.lineareval_embedding"][:, 128:192]) < RTOL
    frames, _ = get_timestamp_embeddings(audio, model("atst_clip", timestamp_hop_ms=40))
    assert max_relative_error(frames, arrays(CLIP_BASE)["c_1x1.07s.frame_tokens"]) < RTOL


# -- reading the files ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["atst_frame", "atst_clip", "atst_clip_base"])
def test_the_files_need_exactly_the_allowlist(name):
    """Plain weights-only loading refuses them (numpy scalars in the optimizer state); ours reads them, and
    refuses a numpy array, which they do not hold."""
    with pytest.raises(Exception, match="numpy.core.multiarray.scalar"):
        torch.load(path(name), weights_only=True)
    assert read_file(path(name))["epoch"] >= 0


def test_a_numpy_array_or_a_hostile_pickle_in_the_lightning_layout_is_refused(tmp_path):
    contents = frame_file()
    torch.save(contents, tmp_path / "plain.ckpt")
    assert load_model(tmp_path / "plain.ckpt", "cpu").family.name == "atst_frame"
    target = tmp_path / "pwned"
    for payload in (np.zeros(3), CreatesFile(target)):
        contents["optimizer_states"][0]["param_groups"][0]["lr"] = payload
        torch.save(contents, tmp_path / "evil.ckpt")
        with pytest.raises(ValueError, match="refused"):
            load_model(tmp_path / "evil.ckpt", "cpu")
        assert not target.exists()


def test_other_networks_are_dropped_by_name_and_the_encoder_loads_strictly(tmp_path):
    contents = frame_file()
    state = contents["state_dict"]
    for change, message in [({"model.teacher.predictor.0.weight": torch.zeros(1)}, "unexpected.*teacher.predictor"),
                            ({"model.teacher.encoder.blocks.0.norm1.weight": None}, "missing.*blocks.0.norm1.weight")]:
        contents["state_dict"] = {k: v for k, v in {**state, **change}.items() if v is not None}
        torch.save(contents, tmp_path / "changed.ckpt")
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path / "changed.ckpt", "cpu")


def test_files_this_package_cannot_read_are_refused_with_the_reason(tmp_path):
    contents = frame_file()
    key = "model.teacher.encoder.patch_embed.patch_embed.weight"
    for change, message in [(dict(hyper_parameters={**contents["hyper_parameters"], "patch_w": 16}), "'patch_w': 16"),
                            (dict(state_dict={**contents["state_dict"], key: torch.zeros(128, 256)}), "128 wide")]:
        torch.save({**contents, **change}, tmp_path / "other.ckpt")
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path / "other.ckpt", "cpu")


def test_a_file_of_the_other_variant_is_refused_naming_its_module():
    with pytest.raises(ValueError, match="ATST-Frame checkpoint, not ATST-Clip.*hear_msm_mae.atst_frame"):
        atst_clip.load_model(path("atst_frame"), "cpu")
