"""Fast CPU forms of two convolutions the encoders use: long grouped 1-D convolutions (the 128-tap position
convolutions of BEATs and the waveform models) as products of spectra, and a waveform's first convolution
(one input channel) as one matrix product.

    conv1d_by_fft(x, weight, bias, padding, groups) = F.conv1d(x, weight, bias, padding=padding, groups=groups)
    x (n, C, T), weight (C_out, C / groups, K) -> (n, C_out, T + 2 padding - K + 1)
    long_conv1d(conv, x, spectra): conv(x) of an nn.Conv1d, by FFT for CPU inference, else conv itself
    frames_product(x, weight, bias, stride): a convolution of one input channel (a waveform's first layer) with
        a weight and bias per input, as one product of each weight with its input's frames, channels last
    group_norm_folded(conv, norm, x): the weight and bias per input that make frames_product give norm(conv(x)),
        a per-channel GroupNorm folded into the convolution from the input's frame statistics
    strided_frames(x, kernel, stride), conv_matrix(weight): a convolution of channels-last inputs as a matrix
        product, x (n, T, C) -> frames (n, frames, K C), times the weight as a (C_out, K C) matrix

A 128-tap kernel over 48 channels per group runs at ~175 GFLOP/s on this project's CPU as a direct
convolution (bf16; float32 ~160), 40% of the linear layers' peak. Correlating by FFT costs a thirtieth of its
multiply-adds: the padded input's spectrum (float32), one complex product per frequency that mixes each
group's channels, the inverse transform. 4x faster at 504 tokens x 768 channels, and more exact than either
direct form (max error 1.9e-7 of the largest output against float64; float32 direct 3.9e-7, bf16 3.6e-3).
The weight's spectra ((F, groups, C_out / groups, C / groups) complex64: 95 MB for BEATs-Base at 504 tokens)
are made once per transform size and kept by `SpectralWeights` (the two sizes used last; an input reuses a
kept size up to twice what it needs, so a clip's last unit takes its full units' spectra: 170 MB per size at
1000-token units), until the weight changes: a weight-normed convolution's (torch's parametrization, as
torchaudio's wav2vec 2.0 builds it) is recomputed at every access, so its stored parts tell when it changed.

oneDNN's direct kernel for a convolution of one input channel (wav2vec 2.0's first layer: 512 filters of 10
taps every 5 samples) is bound by its memory traffic at ~25 ms per 10-s clip; the same sums as a product of
the (512, 10) weight with the (10, frames) view of the input's windows (x.unfold) take ~2.5 ms. The
GroupNorm that follows it in the Base releases is a per-channel scale and shift of that output computed from
its statistics over time, which are those of the frames seen through the weight: folded into the weight and
bias, it costs no pass over the output, and a window of the output can be computed without the rest.

The convolutions after it (512 -> 512 channels, 3 or 2 taps every 2 frames) are matrix products too, of the
weight laid out as (C_out, K C_in) with each output frame's K input frames side by side: with the input
channels last, those are rows of a strided view of it (copied once, in cache), and oneDNN's pre-packed
linear computes the product with the GELU that follows applied to its float32 sums: the products alone
1.02-1.16x the direct convolutions' speed at these shapes, the GELU's pass over memory gone, and one
bfloat16 rounding instead of two per layer.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from .linear import weights_state

FFT_CONVOLUTION = True  # the encoders' CPU inference convolves by FFT (benchmarks switch it off)


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: sizes the FFT does fast."""
    best = 1 << max(n - 1, 0).bit_length()
    five = 1
    while five < best:
        three = five
        while three < best:
            two = three
            while two < n:
                two *= 2
            best = min(best, two)
            three *= 3
        five *= 5
    return best


def transform_size(length: int) -> int:
    """The transform size for inputs of `length` samples: a multiple of 64 whose cofactor is 2^a 3^b 5^c (few
    distinct sizes, each fast)."""
    return 64 * fft_size(-(-length // 64))


class SpectralWeights:
    """A grouped Conv1d's weight as spectra, for the `max_sizes` transform sizes used last; remade when the
    weight changes."""

    def __init__(self, max_sizes: int = 2):
        self.max_sizes = max_sizes
        self.cache: "OrderedDict[Tuple, torch.Tensor]" = OrderedDict()

    def get(self, weight: torch.Tensor, groups: int, size: int,
            sources: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """(C_out, C / groups, K) -> (size // 2 + 1, groups, C_out / groups, C / groups), complex64. `sources`: the
        tensors the weight is computed from, if it is computed (weight norm's direction and magnitude)."""
        state = weights_state(sources or (weight,))
        if state is None:  # inference tensors: nothing to key on, made afresh
            return self.spectra(weight, groups, size)
        key = (size, groups, state)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        for old in [k for k in self.cache if k[1:] != key[1:]]:  # a changed weight's spectra go
            del self.cache[old]
        while len(self.cache) >= self.max_sizes:
            self.cache.popitem(last=False)
        self.cache[key] = self.spectra(weight, groups, size)
        return self.cache[key]

    @staticmethod
    def spectra(weight: torch.Tensor, groups: int, size: int) -> torch.Tensor:
        c_out, c_in, _ = weight.shape
        spectra = torch.fft.rfft(weight.detach().float().flip(-1), size)  # correlation: the kernel reversed
        return spectra.view(groups, c_out // groups, c_in, -1).permute(3, 0, 1, 2).contiguous()

    def size_for(self, length: int) -> int:
        """The transform size for inputs of `length` samples: a kept size at most twice what they need (a clip's
        last unit takes its full units' spectra: one size kept, not two), else transform_size(length)."""
        need = transform_size(length)
        kept = [key[0] for key in self.cache if need <= key[0] <= 2 * need]
        return min(kept) if kept else need


def conv1d_by_fft(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int, groups: int,
                  spectra: SpectralWeights, sources: Tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """F.conv1d(x, weight, bias, padding=padding, groups=groups), computed in float32, returned in x's dtype."""
    n, channels, length = x.shape
    kernel = weight.shape[-1]
    out_length = length + 2 * padding - kernel + 1
    size = spectra.size_for(length + 2 * padding)  # no circular wrap reaches the outputs kept
    w = spectra.get(weight, groups, size, sources)  # (F, G, C_out / G, C / G)
    xf = torch.fft.rfft(F.pad(x.float(), (padding, padding)), size)  # (n, C, F)
    xf = xf.view(n, groups, channels // groups, -1).permute(3, 1, 2, 0)  # (F, G, C / G, n)
    yf = torch.matmul(w, xf).permute(3, 1, 2, 0).reshape(n, -1, xf.shape[0])  # (n, C_out, F)
    y = torch.fft.irfft(yf, size)[..., kernel - 1:kernel - 1 + out_length]  # (n, C_out, out_length)
    return (y + bias.float()[:, None]).to(x.dtype)


def long_conv1d(conv: nn.Conv1d, x: torch.Tensor, spectra: SpectralWeights) -> torch.Tensor:
    """conv(x): by FFT on the CPU without gradients (4x faster; FFT_CONVOLUTION), else the module itself (GPU
    kernels, training)."""
    if FFT_CONVOLUTION and x.device.type == "cpu" and not torch.is_grad_enabled():
        sources = tuple(conv.parametrizations.weight.parameters()) if parametrize.is_parametrized(conv, "weight") \
            else ()
        return conv1d_by_fft(x, conv.weight, conv.bias, conv.padding[0], conv.groups, spectra, sources)
    return conv(x)


def frames_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int) -> torch.Tensor:
    """A convolution of one input channel, unpadded, with a weight (n, C_out, K) and bias (n, C_out) per input:
    x (n, 1, T) -> (n, frames, C_out) (channels last), each input's frames of K samples every `stride` times its
    weight."""
    frames = strided_frames(x.transpose(1, 2), weight.shape[-1], stride).contiguous()  # (n, frames, K)
    if bias is None:  # bmm, not matmul: matmul would compute the transposed product and copy it (10x slower)
        return torch.bmm(frames, weight.transpose(1, 2))  # (n, frames, K) x (n, K, C_out)
    return torch.baddbmm(bias[:, None], frames, weight.transpose(1, 2))


def strided_frames(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """x (n, T, C), channels last and contiguous in (T, C) -> (n, (T - kernel) // stride + 1, kernel C), a view:
    row t is x[:, stride t : stride t + kernel] flattened, the input frames of an unpadded convolution's output
    frame t (rows overlap when kernel > stride: a product copies them)."""
    n, length, channels = x.shape
    if x.stride(1) != channels or (channels > 1 and x.stride(2) != 1):
        raise ValueError(f"strided_frames needs its input's (T, C) contiguous, got strides {x.stride()}")
    if length < kernel:
        raise ValueError(f"an input of {length} frames is shorter than the kernel ({kernel})")
    count = (length - kernel) // stride + 1
    return x.as_strided((n, count, kernel * channels), (x.stride(0), stride * channels, 1), x.storage_offset())


def conv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """An unpadded, ungrouped, undilated Conv1d's weight (C_out, C_in, K) as the (C_out, K C_in) matrix that
    multiplies strided_frames(x, K, stride): conv(x^T)^T = linear(strided_frames(x), conv_matrix(weight), bias)."""
    weight = weight.detach()
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)


def conv_matrices(*weights: torch.Tensor) -> List[torch.Tensor]:
    """conv_matrix of each weight."""
    return [conv_matrix(w) for w in weights]


def group_norm_folded(conv: nn.Conv1d, norm: nn.GroupNorm, x: torch.Tensor,
                      block: int = 1 << 16) -> Tuple[torch.Tensor, torch.Tensor]:
    """norm(conv(x)) = frames_product(x, weight, bias, stride) for a Conv1d of one input channel (no padding or
    dilation) followed by a GroupNorm of one group per channel: x (n, 1, T) -> weight (n, C_out, K), bias
    (n, C_out) in x's dtype.

    The norm's statistics over time are those of a linear function of the frames f: mean w.m + b and variance
    w^T S w, from the frames' mean m and (biased) covariance S, computed in float64 `block` frames at a time;
    so the norm's scale and shift fold into the weight and bias of each input. The same values as the
    convolution then the norm, without their two passes over the (n, C_out, frames) output; and the statistics
    come from the exact frames, not from a bfloat16 output."""
    if norm.num_groups != norm.num_channels or conv.in_channels != 1 or conv.padding != (0,) \
            or conv.dilation != (1,):
        raise ValueError("group_norm_folded needs a convolution of one input channel, unpadded, and a GroupNorm "
                         "of one group per channel")
    frames = x[:, 0].unfold(1, conv.kernel_size[0], conv.stride[0])  # (n, frames, K), a view
    count = frames.shape[1]
    mean = sum(part.double().sum(1) for part in frames.split(block, 1)) / count  # (n, K)
    covariance = sum(torch.bmm((c := part.double() - mean[:, None]).transpose(1, 2), c)
                     for part in frames.split(block, 1)) / count  # (n, K, K)
    w = conv.weight[:, 0].detach().double()  # (C_out, K); the conv's bias cancels in the norm
    variance = torch.einsum("ck,nkl,cl->nc", w, covariance, w)  # (n, C_out)
    scale = (variance + norm.eps).rsqrt()  # (n, C_out)
    if norm.affine:
        scale = norm.weight.detach().double() * scale
    shift = -scale * (mean @ w.T) + (norm.bias.detach().double() if norm.affine else 0.0)
    return (scale[..., None] * w).to(x.dtype), shift.to(x.dtype)
