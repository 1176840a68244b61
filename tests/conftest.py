"""Shared fixtures: the golden checkpoints and reference outputs in ../shared/golden, and the helpers that
every family's parity file and the engine's tests use to load them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  loads triton now: loaded after TensorFlow (which the heareval tests
#                        import in this process), triton's extension crashes the interpreter

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
GOLDEN_MODELS = ["80x208p16x16_tiny", "80x512p16x16_tinycls"]
GOLDEN_CASES = ["a_3x4s", "b_2x13s", "c_1x1.07s"]
# Every official layout of every family: (family, checkpoint under ../shared/golden); the engine's rules are
# tested on every layout, and the rules that depend on the token grid on one layout per family (FAMILIES)
FAMILY_CHECKPOINTS = {
    "msm_mae": ("msm_mae", "80x208p16x16_tiny/checkpoint-99.pth"),
    "msm_mae_cls": ("msm_mae", "80x512p16x16_tinycls/checkpoint-99.pth"),
    "m2d": ("m2d", "m2d_vit_tiny-80x208p16x16-golden/checkpoint-300.pth"),
    "m2d_enconly": ("m2d", "m2d_vit_tiny-80x208p16x16-golden_enconly/checkpoint-300.pth"),
    "audiomae": ("audiomae", "audiomae_tiny/pretrained.pth"),
    "audiomae_ft": ("audiomae", "audiomae_tiny_ft/finetuned.pth"),
    "ast": ("ast", "ast_tiny/audioset_tiny_golden.pth"),
    "beats": ("beats", "beats_tiny/BEATs_tiny_golden.pt"),
    "dasheng": ("dasheng", "dasheng_tiny/dasheng_tiny_golden.pt"),
    "dasheng_kwargscfg": ("dasheng", "dasheng_tiny/dasheng_tiny_golden_kwargscfg.pt"),
    "ced": ("ced", "ced_tiny/ced_tiny_golden.pt"),
    "ced_statedict": ("ced", "ced_tiny/ced_tiny_golden_statedict.pt"),
    "atst_frame": ("atst_frame", "atst_frame_tiny/atst_frame_small_tiny.ckpt"),
    "atst_clip": ("atst_clip", "atst_clip_tiny/atst_clip_small_tiny.ckpt"),
    "atst_clip_base": ("atst_clip", "atst_clip_tiny_dino/atst_clip_base_tiny_dino.ckpt"),
    "wavlm": ("wavlm", "wavlm_tiny/WavLM-Base+_tiny_golden.pt"),
    "wavlm_large": ("wavlm", "wavlm_tiny_ln/WavLM-Large_tiny_golden.pt"),
    "hubert": ("hubert", "hubert_tiny_hf/model.safetensors"),  # a Hugging Face folder, by its weights file
    "hubert_large": ("hubert", "hubert_tiny_hf_ln/model.safetensors"),
    "wav2vec2": ("wav2vec2", "wav2vec2_tiny_hf/model.safetensors"),
    "wav2vec2_large": ("wav2vec2", "wav2vec2_tiny_hf_ln/model.safetensors"),
}
FAMILIES = ["msm_mae", "m2d", "audiomae", "ast", "beats", "dasheng", "ced", "atst_frame", "atst_clip",
            "wavlm_large", "hubert", "wav2vec2"]  # WavLM's Large layout: a 128-channel conv stack, 16x faster


def golden_checkpoint(name: str = "80x208p16x16_tiny") -> Path:
    path = GOLDEN / name / "checkpoint-99.pth"
    if not path.is_file():
        pytest.skip(f"golden data not found at {path}")
    return path


def golden_path(relative: str) -> Path:
    path = GOLDEN / relative
    if not path.is_file():
        pytest.skip(f"golden data not found at {path}")
    return path


def golden_audio(case: str) -> torch.Tensor:
    """The test clips every golden folder was made from (16 kHz float32)."""
    return torch.from_numpy(np.load(GOLDEN / "80x208p16x16_tiny" / "golden.npz")[f"{case}.audio"])


@pytest.fixture(params=GOLDEN_MODELS)
def golden(request):
    """(name, checkpoint path, golden arrays, golden.json) for each golden model."""
    path = golden_checkpoint(request.param)
    arrays = dict(np.load(path.parent / "golden.npz"))
    return request.param, path, arrays, json.loads((path.parent / "golden.json").read_text())


@pytest.fixture
def tiny_checkpoint() -> Path:
    return golden_checkpoint()


PARITY_LOG = "HEAR_PARITY_LOG"  # a file: every max_relative_error of the run, a JSON line each, with its test
_test = {"id": ""}


@pytest.fixture(autouse=True)
def _current_test(request):
    _test["id"] = request.node.nodeid


def max_relative_error(actual: torch.Tensor, expected) -> float:
    expected = torch.as_tensor(expected)
    error = float((actual.detach().float() - expected).abs().max() / expected.abs().max())
    if os.environ.get(PARITY_LOG):
        with open(os.environ[PARITY_LOG], "a") as log:
            log.write(json.dumps({"test": _test["id"], "error": error}) + "\n")
    return error


def arrays(folder: str) -> dict:
    """A golden folder's reference outputs (golden.npz)."""
    return dict(np.load(golden_path(f"{folder}/golden.npz")))


def spec(folder: str) -> dict:
    """A golden folder's golden.json."""
    return json.loads(golden_path(f"{folder}/golden.json").read_text())


def model(name: str, **options):
    """The HEAR model of a FAMILY_CHECKPOINTS layout, on the CPU, float32 unless options say otherwise."""
    from hear_msm_mae.api import load_model

    family, relative = FAMILY_CHECKPOINTS[name]
    return load_model(golden_path(relative), "cpu", family, **{"dtype": "float32", **options})


def encoder(name: str, **load_options):
    """The bare encoder of a FAMILY_CHECKPOINTS layout (float32)."""
    from hear_msm_mae.checkpoint import build_encoder, load_checkpoint

    family, relative = FAMILY_CHECKPOINTS[name]
    return build_encoder(load_checkpoint(golden_path(relative), family, **load_options))


def encode(enc, features: torch.Tensor, layers=None):
    with torch.no_grad():
        return enc.encode(features, layers)


def time_major(tokens: torch.Tensor, prefix: int, freq_patches: int) -> torch.Tensor:
    """Our frequency-major tokens (n, prefix + gf * gt, D) in a time-major reference's order (t * gf + f)."""
    n, _, d = tokens.shape
    patches = tokens[:, prefix:].reshape(n, freq_patches, -1, d).transpose(1, 2).reshape(n, -1, d)
    return torch.cat([tokens[:, :prefix], patches], dim=1)


def whole_columns(audio: torch.Tensor, win: int = 400, hop: int = 160, patch: int = 16) -> torch.Tensor:
    """The clip cut to the Kaldi fbank frames of its whole `patch`-frame columns (a frame depends only on its
    own `win` samples, so these frames are the whole clip's first ones)."""
    frames = (1 + (audio.shape[-1] - win) // hop) // patch * patch
    return audio[:, :(frames - 1) * hop + win]
