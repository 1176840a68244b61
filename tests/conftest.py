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


def golden_checkpoint(name: str = "80x208p16x16_tiny") -> Path:
    path = GOLDEN / name / "checkpoint-99.pth"
    if not path.is_file():
        pytest.skip(f"golden data not found at {path}")
    return path


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
    return float((actual.float() - expected).abs().max() / expected.abs().max())
