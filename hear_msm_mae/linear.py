"""Linear layers that run at the CPU's matrix-multiply speed at inference.

On the CPU, a plain `F.linear` spends a quarter of a transformer block outside the matrix product:
it copies the bias into the output before the product (addmm), and the GELU and residual add that
follow are separate passes over memory. A packed `Linear` (`pack()`) keeps its weight laid out in
oneDNN's blocked format and computes bias, GELU and residual add inside the product (oneDNN post-ops,
the kernels torch.compile's CPU backend uses): ViT-Base at 2 threads goes from about 80% to about 90%
of the measured bf16 matrix-multiply peak (benchmarks/inference.py).

The layout is a cache (`WeightCache`), never a change of the model: it is remade whenever the weight
changes (in place, load_state_dict, .to()) and used only where it computes what the weight itself
would (`packable`: no gradient recorded, input and weight CPU tensors of one dtype, float32 or
bfloat16). Anywhere else (training, GPUs, float64) the same results come from the separate operations.
"""
from __future__ import annotations

from typing import Callable, Generic, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

T = TypeVar("T")


def can_pack(device: torch.device) -> bool:
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def weights_state(tensors: Sequence[torch.Tensor]) -> Optional[Tuple]:
    """What tells the values of live `tensors` apart: storage, version counter (bumped by every in-place change,
    optimizer steps and load_state_dict included), dtype and device; None for inference tensors, which have no
    version counter. Writes through `.data` bypass the counter."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class WeightCache(Generic[T]):
    """`make(*weights)` (a weight's oneDNN layout, a convolution as a matrix, ...), kept while the weights are
    unchanged (weights_state); made afresh at every call for inference tensors."""

    def __init__(self, make: Callable[..., T]):
        self.make = make
        self.state: Optional[Tuple] = None
        self.value: Optional[T] = None

    def __getstate__(self) -> dict:
        """Copies and pickles start empty (oneDNN's layouts cannot be copied; they are remade when used)."""
        return {"make": self.make, "state": None, "value": None}

    def get(self, *weights: torch.Tensor) -> T:
        state = weights_state(weights)
        if state is None:
            return self.make(*weights)
        if state != self.state:
            self.state = self.value = None  # the old value goes before the new one is made
            self.value, self.state = self.make(*weights), state
        return self.value


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """A weight laid out for oneDNN (a copy)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's packed product computes linear(x, weight) here: no gradient recorded (the op has no
    backward), both on the CPU, one dtype that oneDNN multiplies (float32, bfloat16)."""
    return (not torch.is_grad_enabled() and x.device.type == weight.device.type == "cpu"
            and x.dtype == weight.dtype and x.dtype in (torch.float32, torch.bfloat16))


def packed_linear(x: torch.Tensor, layout: torch.Tensor, bias: Optional[torch.Tensor],
                  activation: Optional[str] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """linear(x) by oneDNN with a weight's `layout` (packed_weight; where packable), then GELU (activation="gelu")
    or + residual, inside the product."""
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layout, bias, "add")
    if activation == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, layout, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, layout, bias, "none", [], "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           packed: Optional[WeightCache[torch.Tensor]] = None, activation: Optional[str] = None,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """linear(x), then GELU (activation="gelu") or + residual (same shape as the output); by oneDNN with the
    GELU or add inside the product when `packed` (the weight's WeightCache of packed_weight) is given and
    `packable`, else by the separate operations."""
    if packed is not None and packable(x, weight):
        return packed_linear(x, packed.get(weight), bias, activation, residual)
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else y + residual


class Linear(nn.Linear):
    """nn.Linear whose forward can apply a GELU to its output or add a residual to it."""

    packed: Optional[WeightCache[torch.Tensor]] = None  # pack(): oneDNN's layout of the weight

    def pack(self) -> None:
        """Keep the weight laid out for oneDNN (made at the first packable call, remade when the weight changes)."""
        if self.packed is None:
            self.packed = WeightCache(packed_weight)

    def forward(self, x: torch.Tensor, activation: Optional[str] = None,
                residual: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """linear(x), then GELU (activation="gelu") or + residual (same shape as the output); `bias` in place of
        the layer's own, if given."""
        return linear(x, self.weight, self.bias if bias is None else bias, self.packed, activation, residual)


def pack(module: nn.Module) -> nn.Module:
    """Prepare `module` for CPU inference: every submodule with a `pack()` (a Linear, or a layer with products
    of its own) keeps oneDNN layouts of its weights."""
    for layer in module.modules():
        if hasattr(layer, "pack"):
            layer.pack()
    return module
