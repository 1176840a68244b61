"""Shared fixtures: the golden checkpoints and reference outputs in ../shared/golden."""
from __future__ import annotations

import json
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
# Every official layout of every family: (family, checkpoint under ../shared/golden)
FAMILY_CHECKPOINTS = {
    "msm_mae": ("msm_mae", "80x208p16x16_tiny/checkpoint-99.pth"),
    "msm_mae_cls": ("msm_mae", "80x512p16x16_tinycls/checkpoint-99.pth"),
    "m2d": ("m2d", "m2d_vit_tiny-80x208p16x16-golden/checkpoint-300.pth"),
    "m2d_enconly": ("m2d", "m2d_vit_tiny-80x208p16x16-golden_enconly/checkpoint-300.pth"),
    "audiomae": ("audiomae", "audiomae_tiny/pretrained.pth"),
    "audiomae_ft": ("audiomae", "audiomae_tiny_ft/finetuned.pth"),
    "ast": ("ast", "ast_tiny/audioset_tiny_golden.pth"),
    "beats": ("beats", "beats_tiny/BEATs_tiny_golden.pt"),
}


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


def max_relative_error(actual: torch.Tensor, expected) -> float:
    expected = torch.as_tensor(expected)
    return float((actual.detach().float() - expected).abs().max() / expected.abs().max())
