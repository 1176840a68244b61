"""M2D against its reference implementation's outputs (../shared/golden/m2d_vit_tiny-80x208p16x16-golden, full
training checkpoint and encoder-only file): tokens and hidden states from the reference's features, and its
portable runtime's features, frames, scene and timestamps through the HEAR API ("reference" mode)."""
import shutil

import numpy as np
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings, load_model
from hear_msm_mae.checkpoint import load_checkpoint
from hear_msm_mae.families.m2d import FRONTEND_32K

from conftest import (FAMILY_CHECKPOINTS, GOLDEN_CASES, arrays, encode, encoder, golden_audio, golden_path,
                      max_relative_error, model, spec)

RTOL = 1e-4  # encoder outputs in float32, relative to the largest value
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


def test_m2d_32k_releases_get_the_32k_front_end(tmp_path):
    """M2D names its 32 kHz releases in the folder (p32k): same encoder, log-mel at 32 kHz (100 frames/s)."""
    source = golden_path(FAMILY_CHECKPOINTS["m2d_enconly"][1])
    folder = tmp_path / "m2d_vit_tiny-80x208p16x16p32k-golden_enconly"
    folder.mkdir()
    shutil.copy(source, folder / source.name)
    m32, m16 = load_model(folder / source.name, "cpu", dtype="float32"), model("m2d_enconly")
    assert m32.sample_rate == 32000 and m32.frontend.config == FRONTEND_32K
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
