"""Scaled dot-product attention for every encoder here: one function, the fastest kernel per case.

    attention(q, k, v, bias=None, gate=None) = softmax(q k^T / sqrt(d) + gate * bias) v
    q, k, v: (n, heads, L, d); bias: (n or 1, heads, L, L), (heads, L, L) or None; gate: (n, heads, L, 1) or
    None (1); out: (n, heads, L, d)

The gate is WavLM's and BEATs' per-query gate on their relative position bias (`relative_gate`): the kernel
that takes it reads the shared (heads, L, L) table, and the others get gate * bias written whole.

Which kernel runs:

- bfloat16 on a CPU with AVX512-BF16, no gradients: this package's C kernel (kernels/attention.c, built by
  native.py) at every length, bias and gate included: products of bfloat16 pairs into float32 sums, float32
  scores and softmax, the softmax's numerators rounded to bfloat16 for the second product; its output laid out
  as (n, L, heads, d), so the output projection reads it without a copy. On this project's machine (Zen 4,
  2 threads) 1.15x the products below at 65 tokens, 1.1-1.16x oneDNN Graph's kernel at 191-1214 tokens,
  1.45-1.5x with the gated bias, and 4-7x closer to float64 attention than either (benchmarks/inference.py
  --attention);
- short sequences on other CPUs (L <= SHORT_ATTENTION_TOKENS, no bias): two batched products (the scale
  applied inside the first) and a softmax in the inputs' dtype (torch's bfloat16 softmax computes in float32
  and rounds its output), without a compiled graph for each of the many short layouts;
- longer sequences in bfloat16 there: oneDNN Graph's fused attention through torch.jit's oneDNN fusion
  (`FusedAttention`), 2-2.4x SDPA's CPU kernel;
- everything else (GPUs, float32, training): `scaled_dot_product_attention`.

The products' and oneDNN Graph's paths round the scores q k^T / sqrt(d) to bfloat16 before the softmax, as a
bfloat16 product does; the C kernel and SDPA keep them in float32. What reaches an embedding is measured by
benchmarks/inference.py (bf16 vs float32 min cosine). float32 never takes these paths: it is the exact mode.
"""
from __future__ import annotations

import ctypes
import threading
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import native

SHORT_ATTENTION_TOKENS = 128  # at most this many tokens: batched products on the CPU
FUSED_CPU_ATTENTION = True  # oneDNN Graph's fused kernel for long bfloat16 sequences (benchmarks switch it off)
NATIVE_CPU_ATTENTION = True  # this package's C kernel for bfloat16 (benchmarks switch it off)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
              gate: Optional[torch.Tensor] = None, buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + gate * bias) v for (n, heads, L, d) (shapes above). `buffer` (n, heads, L, L),
    if given, receives gate * bias where a kernel needs it whole (one buffer for every block of an encoder: a
    fresh one per block costs 5x, in page faults)."""
    if gate is not None and bias is None:
        raise ValueError("attention: a gate needs a bias to gate")
    if q.device.type == "cpu" and NATIVE_CPU_ATTENTION and q.dtype == torch.bfloat16 and not torch.is_grad_enabled():
        out = native_attention(q, k, v, bias, gate)
        if out is not None:
            return out
    n, heads, length, d = q.shape
    if gate is not None:
        bias = gate * bias if buffer is None else torch.mul(gate, bias, out=buffer)
    if bias is not None:
        bias = bias.expand(n, heads, length, length)
    if q.device.type == "cpu":
        if bias is None and length <= SHORT_ATTENTION_TOKENS:
            q, k, v = (x.reshape(n * heads, length, d) for x in (q, k, v))
            scores = torch.baddbmm(q.new_empty(n * heads, length, length), q, k.transpose(1, 2), beta=0,
                                   alpha=d ** -0.5)  # (n heads, L, L), scaled inside the product
            weights = scores.softmax(dim=-1)  # a bfloat16 softmax computes in float32 inside
            return torch.bmm(weights, v).view(n, heads, length, d)
        if FUSED_CPU_ATTENTION and q.dtype == torch.bfloat16 and not torch.is_grad_enabled() and FUSED.available:
            return FUSED(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def native_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     gate: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """attention() by the C kernel (kernels/attention.c), or None where it does not take these inputs: no
    kernels on this machine, not all bfloat16, a head size not a multiple of 64, rows of q, k, v or bias not
    contiguous, odd strides or q, k not 4-byte aligned (the kernel reads them as pairs)."""
    lib = native.kernels()
    n, heads, length, d = q.shape
    inputs = (q, k, v) if bias is None else (q, k, v, bias)
    if lib is None or d % 64 or any(x.dtype != torch.bfloat16 or x.stride(-1) != 1 for x in inputs) \
            or any(x.data_ptr() % 4 or any(s % 2 for s in x.stride()[:-1]) for x in (q, k)):
        return None
    if bias is not None:
        bias = bias.expand(n, heads, length, length)
    if gate is not None:
        gate = gate.float().expand(n, heads, length, 1)
    out = q.new_empty(n, length, heads, d).transpose(1, 2)  # (n, heads, L, d), laid out as (n, L, heads, d)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
               *(bias.stride() if bias is not None else (0,) * 4),
               *(gate.stride()[:3] if gate is not None else (0,) * 3))
    pointer = lambda x: None if x is None else x.data_ptr()
    with torch.profiler.record_function("hear_msm_mae::attention"):
        status = lib.hear_attention(pointer(q), pointer(k), pointer(v), pointer(bias), pointer(gate), pointer(out),
                                    n, heads, length, d, (ctypes.c_int64 * 19)(*strides), d ** -0.5,
                                    torch.get_num_threads())
    if status == 2:
        raise MemoryError(f"attention kernel: no memory for the packed keys and values of {length} tokens")
    return out if status == 0 else None


def relative_gate(logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """WavLM's (and BEATs') per-query gate on the relative position bias: logits (n, heads, L, 8) of the block's
    per-head gate projection, scale (1, heads, 1, 1) -> (n, heads, L, 1)."""
    n, heads, length, _ = logits.shape
    gate_a, gate_b = torch.sigmoid(logits.view(n, heads, length, 2, 4).sum(-1)).chunk(2, dim=-1)  # (n, H, L, 1) each
    return gate_a * (gate_b * scale - 1.0) + 2.0


def _products(scale: float, with_bias: bool) -> Callable:
    """The attention the JIT sees: oneDNN Graph fuses these operations, scale and bias included, into one
    partition (scaling q first would leave the scaling outside it)."""
    if with_bias:
        def products(q, k, v, bias):
            return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias, -1), v)
    else:
        def products(q, k, v):
            return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, -1), v)
    return products


class FusedAttention:
    """oneDNN Graph's fused CPU attention through torch.jit, one traced graph per input layout.

    torch.jit's profiling executor specialises a traced graph to the shapes and strides it runs on and
    hands the specialised graph to oneDNN Graph, which fuses the products and the softmax into one
    kernel. A graph stops specialising after a few layouts (then it runs unfused, slower than SDPA), so
    each layout (shapes and strides of the inputs) gets a graph of its own, profiled on zeros of the
    layout when it is made, so that every call with real inputs is fused and the same.

    Memory: torch.jit keeps every traced function for the life of the process (its global compilation
    unit), with the kernels compiled for it: about 30 MB at the first layout, then 5 MB (250 tokens) to
    30 MB (1214 tokens x 3 units) per layout, measured. So at most `max_layouts` layouts are compiled,
    first come; later layouts run SDPA (the same attention, its scores rounded as float32). The engine's
    bounded batches make few layouts: a full-unit call and a remainder per clip length.

    oneDNN fusion is a process-wide switch of torch.jit: it is turned on for these calls only and
    restored. If the fusion is missing from this torch build or fails, SDPA runs instead, from then on.
    """

    def __init__(self, max_layouts: int = 32):
        self.max_layouts = max_layouts
        self.graphs: Dict[Tuple, Callable] = {}
        self.lock = threading.Lock()
        self.available = hasattr(torch.jit, "enable_onednn_fusion") and hasattr(torch._C, "_jit_llga_enabled")

    def graph(self, key: Tuple, scale: float, inputs: Tuple[torch.Tensor, ...]) -> Optional[Callable]:
        """The layout's graph, made now if the budget allows; None when it does not."""
        with self.lock:
            if key in self.graphs or len(self.graphs) >= self.max_layouts:
                return self.graphs.get(key)
            tiny = tuple(x.new_zeros((1,) * x.dim()) for x in inputs)  # the graph is traced on these
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice
                graph = torch.jit.trace(_products(scale, len(inputs) == 4), tiny, check_trace=False)
            graph(*(x.new_empty_strided(x.shape, x.stride()).zero_() for x in inputs))  # the profiling run
            self.graphs[key] = graph
            return graph

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
        inputs = (q, k, v) if bias is None else (q, k, v, bias)
        key = tuple((x.shape, x.stride(), x.dtype) for x in inputs)
        before = torch._C._jit_llga_enabled()
        torch.jit.enable_onednn_fusion(True)
        try:
            graph = self.graph(key, q.shape[-1] ** -0.5, inputs)
            if graph is not None:
                return graph(*inputs)
        except RuntimeError as e:
            self.available = False
            warnings.warn(f"oneDNN Graph attention failed ({e}); using scaled_dot_product_attention from now on")
        finally:
            torch.jit.enable_onednn_fusion(before)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


FUSED = FusedAttention()
