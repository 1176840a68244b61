"""Linear layers that run at the CPU's matrix-multiply speed at inference.

On the CPU, a plain `F.linear` spends a quarter of a transformer block outside the matrix product:
it copies the bias into the output before the product (addmm), and the GELU and residual add that
follow are separate passes over memory. `Linear.pack()` lays the weight out once in oneDNN's blocked
format and computes bias, GELU and residual add inside the product (oneDNN post-ops, the kernels
torch.compile's CPU backend uses): ViT-Base at 2 threads goes from about 80% to about 90% of the
measured bf16 matrix-multiply peak (benchmarks/inference.py). Unpacked (training, GPUs, builds without
oneDNN) the same results come from the separate operations.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def can_pack(device: torch.device) -> bool:
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], packed: Optional[torch.Tensor],
           activation: Optional[str] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """linear(x), then GELU (activation="gelu") or + residual (same shape as the output); by oneDNN with the
    GELU or add inside the product when the weight is `packed` (else None)."""
    if packed is not None:
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, bias, "add")
        if activation == "gelu":
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else y + residual


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A weight laid out for oneDNN (CPU, inference: the packed copy does not follow later changes)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


class Linear(nn.Linear):
    """nn.Linear whose forward can apply a GELU to its output or add a residual to it."""

    packed: Optional[torch.Tensor] = None  # the weight in oneDNN's layout, once packed

    def pack(self) -> None:
        """Lay the weight out for oneDNN."""
        if self.packed is None:
            self.packed = packed_weight(self.weight)

    def forward(self, x: torch.Tensor, activation: Optional[str] = None,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """linear(x), then GELU (activation="gelu") or + residual (same shape as the output)."""
        return linear(x, self.weight, self.bias, self.packed, activation, residual)


def pack(module: nn.Module) -> nn.Module:
    """Prepare `module` for CPU inference: every submodule with a `pack()` (a Linear, or a layer that
    first fuses its weights, e.g. the ViT's attention) is packed, parents before children."""
    for layer in module.modules():
        if hasattr(layer, "pack"):
            layer.pack()
    return module
