"""Scaled dot-product attention for every encoder here: one function, the fastest kernel per case.

    attention(q, k, v, bias=None) = softmax(q k^T / sqrt(d) + bias) v
    q, k, v: (n, heads, L, d); bias: (n, heads, L, L) or None; out: (n, heads, L, d)

Which kernel runs:

- short sequences on the CPU (L <= SHORT_ATTENTION_TOKENS, no bias): two batched products (the scale
  applied inside the first) and a softmax in the inputs' dtype (torch's bfloat16 softmax computes in
  float32 and rounds its output: 1.5x faster than converting the scores to float32 and back, within one
  bfloat16 rounding of it), as fast as the fused kernel in a whole MSM-MAE call (ViT-Base, 65 tokens)
  without a compiled graph for each of the many short layouts;
- longer sequences in bfloat16 on the CPU, no gradients: oneDNN Graph's fused attention, reached through
  torch.jit's oneDNN fusion (`FusedAttention`): 2-2.4x SDPA's CPU kernel on this project's machine (Zen 4,
  avx512_bf16, 2 threads: 230-305 against 110-142 GFLOP/s at 191-1214 tokens; with a bias, 197-234 against
  86-128), which makes Audio-MAE, AST, BEATs and the waveform models 1.05-1.33x faster
  (benchmarks/README.md);
- everything else (GPUs, float32, training): `scaled_dot_product_attention`.

The two CPU paths round the scores q k^T / sqrt(d) to bfloat16 before the softmax, as a bfloat16 product
does; SDPA keeps them in float32. Against float32 attention this costs a cosine of about 0.99993 per
attention output (0.99998 for SDPA), and what reaches an embedding is measured by benchmarks/inference.py
(bf16 vs float32 min cosine). float32 never takes the fused path: it is the exact mode.
"""
from __future__ import annotations

import threading
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

SHORT_ATTENTION_TOKENS = 128  # at most this many tokens: batched products on the CPU
FUSED_CPU_ATTENTION = True  # oneDNN Graph's fused kernel for long bfloat16 sequences (benchmarks switch it off)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for (n, heads, L, d); `bias` (n, heads, L, L) is added to the scores."""
    if q.device.type == "cpu":
        if bias is None and q.shape[-2] <= SHORT_ATTENTION_TOKENS:
            n, heads, length, d = q.shape
            q, k, v = (x.reshape(n * heads, length, d) for x in (q, k, v))
            scores = torch.baddbmm(q.new_empty(n * heads, length, length), q, k.transpose(1, 2), beta=0,
                                   alpha=d ** -0.5)  # (n heads, L, L), scaled inside the product
            weights = scores.softmax(dim=-1)  # a bfloat16 softmax computes in float32 inside
            return torch.bmm(weights, v).view(n, heads, length, d)
        if FUSED_CPU_ATTENTION and q.dtype == torch.bfloat16 and not torch.is_grad_enabled() and FUSED.available:
            return FUSED(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def gated_bias(logits: torch.Tensor, scale: torch.Tensor, position_bias: torch.Tensor,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """WavLM's (and BEATs') relative position bias, gated per query by its block: logits (n, heads, L, 8) of the
    block's per-head gate projection, scale (1, heads, 1, 1), position_bias (heads, L, L) -> (n, heads, L, L),
    written into `out` if given (one buffer for every block: a fresh one per block costs 5x, in page faults)."""
    n, heads, length, _ = logits.shape
    gate_a, gate_b = torch.sigmoid(logits.view(n, heads, length, 2, 4).sum(-1)).chunk(2, dim=-1)  # (n, H, L, 1) each
    gate = gate_a * (gate_b * scale - 1.0) + 2.0
    return gate * position_bias if out is None else torch.mul(gate, position_bias, out=out)


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
