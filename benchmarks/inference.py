"""Inference speed and memory of every family's HEAR module at ViT-Base size, against this CPU's
matrix-multiply roofline.

    flock /tmp/heavy.lock python benchmarks/inference.py             # every family (about 20 min for the first five)
    python benchmarks/inference.py --families msm_mae --skip-memory   # MSM-MAE only, no fresh processes
    python benchmarks/inference.py --quick                            # one round, 4-minute memory clips
    python benchmarks/inference.py --families msm_mae --ablation --compile   # what the CPU paths are worth
    python benchmarks/inference.py --families beats wavlm --bounds --skip-memory   # what is left to gain where
    PYTHONPATH=../old-tree python benchmarks/inference.py --families msm_mae   # an older version (before/after)

Weights are random, at ViT-Base size (768 wide, 12 blocks, 12 heads, MLP 3072), written by this script in
each family's official file layout and read by the family's HEAR module's `load_model` (the real loader):
  msm_mae   this package's checkpoint of MaskedAutoencoder(), 80x208 (MaskedAutoencoder.save)
  m2d       an `_enconly` file (the bare encoder state dict with norm_stats) in a folder named as the
            release's: m2d_vit_base-80x608p16x16-221006-mr7_enconly/checkpoint-300.pth
  audiomae  the pre-trained file {'model', 'epoch', 'args'}: time-major patch projection, its fixed 8 x 64
            sin-cos table, the 16-block Swin decoder (which the loader drops), args with PosixPaths
  ast       audioset_10_10_0.4593.pth: DataParallel's `module.v.*` with dist_token and a learned 1214-row
            table (1024 frames, stride 10), DeiT's two heads and AST's mlp_head
  beats     BEATs_iter3.pt's {'cfg', 'model'}: the release's cfg, the weight-normed pos_conv (weight_g,
            weight_v), per-layer q/k/v projections, the relative bias table stored by every layer (tied)
  dasheng   dasheng_base.pt's {'config', 'model'}: the training config (model_args without sizes, outputdir a
            PosixPath), the AudioTransformer's state dict with its front-end buffers and init_bn, 64x4 patches,
            time (252 columns) and frequency (1 row) position tables
  ced       audiotransformer_base_mAP_4999.pt's {'config', 'model'}: the same state dict over 16x16 patches (63
            columns, 4 frequency rows) and the AudioSet classifier outputlayer (dropped)
  atst_frame  atstframe_base.ckpt, a Lightning checkpoint: student and teacher (encoder, BYOL projector; the
            student's predictor), AdamW's state over the student, hyper_parameters; the teacher's encoder is read
  atst_clip base.ckpt, ATST-Clip base's DINO-style file {'student', 'teacher', 'optimizer', 'epoch', 'args',
            'byol_loss'}, the encoder under teacher['module.backbone.*'], with [CLS]; units of its 6-s training length
  wavlm     WavLM-Base+.pt's {'cfg', 'model'} (fairseq's names, the relative table in block 0, gates in every block)
  hubert    hubert_base_ls960.pt's fairseq trainer state {'cfg', 'model', 'task_state', ...}, with the label
            embeddings and final projection of pre-training (dropped)
  wav2vec2  wav2vec_small.pt's {'args' (a Namespace), 'model'} with the quantizer and projections (dropped)
            (the three: 7-conv feature encoder, 20-s windows of 1000 frames, a frame every 20 ms)

What is printed (speeds: the best of --repeats rounds; a round measures every strategy and the GEMM peaks
once, so a change in the machine's load hits them alike):
  machine         torch, threads, the dtype "auto" gives, the CPU flags that decide it, the load average.
  others' CPU     the share of all CPUs' time other processes used during the timing rounds: this machine
                  is shared, and a busy neighbour slows OpenMP code far more than its share.
  GEMM peaks      GFLOP/s of one matrix product at the encoder's shapes: the tokens of its largest call
                  (clips x full units x tokens per unit) x 768 -> 2304 (qkv), 768 -> 768 (projection),
                  768 -> 3072 (fc1), 3072 -> 768 (fc2), for each kernel torch offers: torch.mm, F.linear
                  and oneDNN's pre-packed linear (torch.ops.mkldnn._linear_pointwise), no bias. A shape's
                  peak is its best kernel; the encoder's peak is the mix of its four shapes (total FLOPs /
                  sum of FLOPs_i / peak_i): bf16 for every family, fp32 too at MSM-MAE's shape.
  GFLOP / audio s counted from the configuration: 2 x multiply-adds of the patch projection (BEATs: also
                  its projection to 768, its convolutional positions and gates; the waveform families: their
                  conv feature encoder, projection to 768, convolutional positions, WavLM's gates), of every
                  block's qkv, projection and MLP products and of attention's two products (q k^T, a v), for one full
                  unit, over the seconds of new audio a unit adds (its hop). Norms, softmax, GELU and adds
                  are not counted.
  achieved GFLOP/s  the FLOPs of the units the engine actually encoded in the timed call (each encoder
                  call counted from the configuration, seen by a hook on the patch projection) / wall time.
  roofline        achieved / the encoder's peak (bf16; fp32 for the float32 strategies): the share of this
                  CPU's matrix-multiply speed the whole call (front end and embedding assembly included)
                  reaches. ceiling: the audio s / wall s at 100%.
  vs reference    MSM-MAE: throughput over the reference strategy, the original wrapper's loop (float32,
                  eager attention, one encoder call per unit, per-batch normalisation), 8 clips of 10 s.
  timestamp / scene  wall time of timestamp embeddings (40 ms hop: 4 shifted copies) / scene embeddings.
  1-s / 10-s      wall time per second of audio of 1-s clips / of 10-s clips (10 x more 1-s clips: the same
                  audio).
  cosine          minimum cosine similarity of the default (bf16 here) embeddings to float32 ones, scene
                  and timestamp frames, 2 clips of 10 s.
  peak RSS        VmHWM of a fresh process that loads the model and embeds one clip of 20 minutes (MSM-MAE:
                  also 5 minutes, to show it is flat), scene and timestamp embeddings.
  profile         one default scene call under torch.profiler: each op's self time, grouped into matmul
                  (addmm, mm, oneDNN linear), attention (the C kernel, SDPA, bmm, softmax, oneDNN Graph's
                  fused partitions), conv (patch projections,
                  BEATs' positions), norms, copies (copy_, clone, cat, padding) and other.
  ablation        (--ablation, current trees only) every family's scene embeddings with the C attention
                  kernel switched off (the torch paths instead, hear_msm_mae.attention.NATIVE_CPU_ATTENTION); BEATs'
                  and the waveform families' also with their position convolution direct instead of by FFT,
                  the waveform families' with their feature encoder by torchaudio's modules over whole
                  inputs instead of window by window, and their residual stream in bfloat16 instead of
                  float32 (the flags: SWITCHES), each in the same rounds; and
                  MSM-MAE's with the encoder's oneDNN-packed linears switched off and each attention
                  strategy (C kernel, oneDNN Graph, batched products, SDPA).
  compile         (--compile) torch.compile (inductor) of the loaded encoder's `encode`, one static graph
                  per input shape, with and without torch._inductor.config.freezing, on the packed encoder
                  and on the same encoder unpacked: the first call, graph breaks, and the steady throughput
                  against the default path. A data point; the package does not compile.
  attention       (--attention, alone) each CPU attention path at the families' shapes, bf16: GFLOP/s and
                  max error against float64 (ATTENTION_SHAPES).
  bounds          (--bounds) the scene call with one kind of work left out (LEFT_OUT: the linears' GELU,
                  BEATs' and WavLM's gated relative bias, attention), in the same rounds: wrong embeddings,
                  timed only, for what a faster kernel for that work could give at most.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from unittest import mock

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torchaudio.models.wav2vec2.components import FeatureProjection

from hear_msm_mae import attention as kernels, conv, linear as linear_layers
from hear_msm_mae.encoders import beats as beats_encoder, vit as vit_encoder, wav2vec2 as wav2vec2_encoder
from hear_msm_mae.frontend import LogMelSpectrogram
from hear_msm_mae.precision import resolve_dtype
from hear_msm_mae.pretrain.mae import MaskedAutoencoder

SR = 16000
FRAMES_PER_SECOND = 100  # every spectrogram front end here: 10 ms hop (the waveform's: one frame per sample)
DIM, DEPTH, HEADS, HIDDEN = 768, 12, 12, 3072  # ViT-Base


# -- FLOPs from the configuration -------------------------------------------------------------------

def transformer_flops(tokens: int) -> int:
    """2 x multiply-adds of DEPTH blocks over `tokens` tokens: qkv, projection, MLP, q k^T and a v."""
    linear = 2 * tokens * (3 * DIM * DIM + DIM * DIM + 2 * DIM * HIDDEN)
    attention = 2 * 2 * tokens * tokens * DIM
    return DEPTH * (linear + attention)


@dataclass(frozen=True)
class Bench:
    """A family at ViT-Base size, as this benchmark writes and counts it."""
    name: str  # the family's name (load_model's `family`)
    module: str  # its HEAR module
    title: str
    layout: str  # the file written
    freq_patches: int  # patches in one column
    unit_columns: int  # columns in a full unit
    column_stride: int  # frames between columns
    prefix_tokens: int  # [CLS], distillation
    patch_flops: int  # 2 x multiply-adds per patch outside the blocks
    frames_per_second: int = FRAMES_PER_SECOND

    @property
    def unit_patches(self) -> int:
        return self.freq_patches * self.unit_columns

    @property
    def unit_seconds(self) -> float:
        """New audio per unit: the hop between consecutive units."""
        return self.unit_columns * self.column_stride / self.frames_per_second

    def unit_flops(self, patches: int) -> int:
        return patches * self.patch_flops + transformer_flops(patches + self.prefix_tokens)

    def flops_per_audio_second(self) -> float:
        return self.unit_flops(self.unit_patches) / self.unit_seconds


PATCH = 2 * 16 * 16 * DIM  # one patch of 256 values (16 x 16; Dasheng's and ATST's 64 x 4) projected to 768
# BEATs per patch: projection to 512, post_extract_proj to 768, the 128-tap positional conv in 16 groups, and
# in every block each head's gate (grep_linear, 64 -> 8)
BEATS_PATCH = 2 * (16 * 16 * 512 + 512 * DIM + DIM * (DIM // 16) * 128 + DEPTH * HEADS * 64 * 8)
# wav2vec 2.0 / HuBERT per 20-ms frame (a token): the conv feature encoder (64 outputs of conv 0 (512 x 10 taps),
# 32 + 16 + 8 + 4 of the 3-tap convs, 2 + 1 of the 2-tap ones), the projection to 768, the 128-tap positional conv
CONV_LAYERS = [(64, 1, 10)] + [(n, 512, 3) for n in (32, 16, 8, 4)] + [(n, 512, 2) for n in (2, 1)]
WAV2VEC2_FRAME = 2 * (sum(n * 512 * c * k for n, c, k in CONV_LAYERS) + 512 * DIM + DIM * (DIM // 16) * 128)
WAVLM_FRAME = WAV2VEC2_FRAME + 2 * DEPTH * HEADS * 64 * 8  # and every block's gates
BENCHES = {b.name: b for b in [
    Bench("msm_mae", "hear_msm_mae", "MSM-MAE", "MaskedAutoencoder().save(), 80x208",
          5, 13, 16, 0, PATCH),
    Bench("m2d", "hear_msm_mae.m2d", "M2D", "_enconly, 80x608", 5, 38, 16, 1, PATCH),
    Bench("audiomae", "hear_msm_mae.audiomae", "Audio-MAE", "pre-trained {model, args}, 1024x128",
          8, 64, 16, 1, PATCH),
    Bench("ast", "hear_msm_mae.ast", "AST", "module.v.*, 1024 frames, stride 10", 12, 101, 10, 2, PATCH),
    Bench("beats", "hear_msm_mae.beats", "BEATs", "{cfg, model} iter3, units of 1008 frames", 8, 63, 16, 0,
          BEATS_PATCH),
    Bench("dasheng", "hear_msm_mae.dasheng", "Dasheng", "dasheng_base.pt {config, model}, 64x4, 1008 frames",
          1, 252, 4, 0, PATCH),
    Bench("ced", "hear_msm_mae.ced", "CED", "audiotransformer_base {config, model}, 1008 frames", 4, 63, 16, 0, PATCH),
    Bench("atst_frame", "hear_msm_mae.atst_frame", "ATST-Frame", "atstframe_base Lightning, 64x4, 1000 frames",
          1, 250, 4, 0, PATCH),
    Bench("atst_clip", "hear_msm_mae.atst_clip", "ATST-Clip", "base.ckpt {student, teacher, ...}, units of 600 frames",
          1, 150, 4, 1, PATCH),
    *[Bench(name, f"hear_msm_mae.{name}", title, layout, 1, 1000, 320, 0, flops, SR) for name, title, layout, flops in (
        ("wavlm", "WavLM", "WavLM-Base+.pt {cfg, model}, 20-s windows", WAVLM_FRAME),
        ("hubert", "HuBERT", "hubert_base_ls960.pt fairseq {cfg, model, ...}, 20-s windows", WAV2VEC2_FRAME),
        ("wav2vec2", "wav2vec 2.0", "wav2vec_small.pt fairseq {args, model}, 20-s windows", WAV2VEC2_FRAME))],
]}


class EncoderWork:
    """Records every encoder call of a run: a forward hook on the patch projection (the encoder's first
    Conv2d) sees its output (units, channels, h, w); on a waveform encoder's feature projection (units, frames, D)."""

    def __init__(self, encoder: nn.Module, bench: Bench):
        self.conv = next(m for m in encoder.modules() if isinstance(m, (nn.Conv2d, FeatureProjection)))
        self.bench = bench
        self.calls: List[Tuple[int, int]] = []  # (units, patches per unit)

    def __enter__(self) -> "EncoderWork":
        self.handle = self.conv.register_forward_hook(lambda module, inputs, out: self.calls.append(
            (out.shape[0], out.shape[1] if out.dim() == 3 else out.shape[2] * out.shape[3])))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    @property
    def flops(self) -> int:
        return sum(n * self.bench.unit_flops(patches) for n, patches in self.calls)

    @property
    def largest_call_tokens(self) -> int:
        return max(n * (patches + self.bench.prefix_tokens) for n, patches in self.calls)


# -- random ViT-Base weights in each family's official layout -----------------------------------------

def normal(*shape: int) -> torch.Tensor:
    return 0.02 * torch.randn(*shape)


def sincos(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) -> (M, dim): sines then cosines of the positions at MAE's frequencies, in float64 then float32."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def timm_vit_weights(patch: Tuple[int, int] = (16, 16), qkv_bias: bool = True) -> Dict[str, torch.Tensor]:
    """timm VisionTransformer names: patch_embed.proj over `patch` (bins, frames), blocks.i.{norm1, attn.qkv,
    attn.proj, norm2, mlp.fc1, mlp.fc2}, norm (a fused qkv bias, unless `qkv_bias` is False)."""
    w = {"patch_embed.proj.weight": normal(DIM, 1, *patch), "patch_embed.proj.bias": normal(DIM)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        w.update({b + "norm1.weight": torch.ones(DIM), b + "norm1.bias": normal(DIM),
                  b + "attn.qkv.weight": normal(3 * DIM, DIM)})
        if qkv_bias:
            w[b + "attn.qkv.bias"] = normal(3 * DIM)
        w.update({b + "attn.proj.weight": normal(DIM, DIM), b + "attn.proj.bias": normal(DIM),
                  b + "norm2.weight": torch.ones(DIM), b + "norm2.bias": normal(DIM),
                  b + "mlp.fc1.weight": normal(HIDDEN, DIM), b + "mlp.fc1.bias": normal(HIDDEN),
                  b + "mlp.fc2.weight": normal(DIM, HIDDEN), b + "mlp.fc2.bias": normal(DIM)})
    w.update({"norm.weight": torch.ones(DIM), "norm.bias": normal(DIM)})
    return w


def write_msm_mae(folder: Path) -> Path:
    path = folder / "80x208p16x16_random" / "checkpoint-0.pth"
    MaskedAutoencoder().save(path, epoch=0)
    return path


def write_m2d(folder: Path) -> Path:
    """util/to_encoder_only_weight.py's output: cls_token, pos_embed (fixed 2-D sin-cos, frequency-major,
    first half time), norm_stats, then the timm ViT."""
    gf, gt = BENCHES["m2d"].freq_patches, BENCHES["m2d"].unit_columns
    freq, col = torch.arange(gf).repeat_interleave(gt), torch.arange(gt).repeat(gf)
    table = torch.cat([sincos(DIM // 2, col), sincos(DIM // 2, freq)], dim=1)
    weights = {"cls_token": normal(1, 1, DIM), "pos_embed": torch.cat([torch.zeros(1, DIM), table])[None],
               "norm_stats": torch.tensor([-7.1, 4.2]), **timm_vit_weights()}
    path = folder / "m2d_vit_base-80x608p16x16-221006-mr7_enconly" / "checkpoint-300.pth"
    path.parent.mkdir(parents=True)
    torch.save(weights, path)
    return path


def swin_decoder_weights(width: int = 512, blocks: int = 16, heads: int = 16) -> Dict[str, torch.Tensor]:
    """Audio-MAE's decoder_mode=1 decoder: Swin v2 "cr" blocks with a continuous position bias MLP."""
    w = {"mask_token": normal(1, 1, width), "decoder_embed.weight": normal(width, DIM),
         "decoder_embed.bias": normal(width), "decoder_pos_embed": normal(1, 513, width)}
    for i in range(blocks):
        b = f"decoder_blocks.{i}."
        w.update({b + "attn.tau": torch.ones(heads), b + "attn.qkv.weight": normal(3 * width, width),
                  b + "attn.qkv.bias": normal(3 * width), b + "attn.proj.weight": normal(width, width),
                  b + "attn.proj.bias": normal(width), b + "attn.meta_mlp.fc1.weight": normal(384, 2),
                  b + "attn.meta_mlp.fc1.bias": normal(384), b + "attn.meta_mlp.fc2.weight": normal(heads, 384),
                  b + "attn.meta_mlp.fc2.bias": normal(heads), b + "norm1.weight": torch.ones(width),
                  b + "norm1.bias": normal(width), b + "mlp.fc1.weight": normal(4 * width, width),
                  b + "mlp.fc1.bias": normal(4 * width), b + "mlp.fc2.weight": normal(width, 4 * width),
                  b + "mlp.fc2.bias": normal(width), b + "norm2.weight": torch.ones(width),
                  b + "norm2.bias": normal(width)})
    w.update({"decoder_norm.weight": torch.ones(width), "decoder_norm.bias": normal(width),
              "decoder_pred.weight": normal(256, width), "decoder_pred.bias": normal(256)})
    return w


def write_audiomae(folder: Path) -> Path:
    """util/misc.save_model's file of mae_vit_base_patch16(in_chans=1, audio_exp=True, img_size=(1024, 128),
    decoder_mode=1): time-major tokens; the table is get_2d_sincos_pos_embed_flexible(768, (8, 64)), so
    row 1 + k (k = 8 t + f) = [S(k % 64), S(k // 64)]."""
    k = torch.arange(64 * 8)
    table = torch.cat([sincos(DIM // 2, k % 64), sincos(DIM // 2, k // 64)], dim=1)
    model = {"cls_token": normal(1, 1, DIM), "pos_embed": torch.cat([torch.zeros(1, DIM), table])[None],
             **timm_vit_weights(), **swin_decoder_weights()}
    job = pathlib.PosixPath("/checkpoint/experiments/benchmark")
    args = argparse.Namespace(
        model="mae_vit_base_patch16", audio_exp=True, use_custom_patch=False, decoder_mode=1, norm_pix_loss=True,
        mask_ratio=0.8, batch_size=8, epochs=33, output_dir=job, log_dir=job)
    path = folder / "pretrained.pth"
    folder.mkdir(parents=True)
    torch.save({"model": model, "epoch": 32, "args": args}, path)
    return path


def write_ast(folder: Path) -> Path:
    """ASTModel(fstride=10, tstride=10, input_tdim=1024, model_size='base384') under DataParallel."""
    weights = {"cls_token": normal(1, 1, DIM), "dist_token": normal(1, 1, DIM), "pos_embed": normal(1, 1214, DIM),
               **timm_vit_weights(), "head.weight": normal(1000, DIM), "head.bias": normal(1000),
               "head_dist.weight": normal(1000, DIM), "head_dist.bias": normal(1000)}
    weights = {"module.v." + k: v for k, v in weights.items()}
    weights.update({"module.mlp_head.0.weight": torch.ones(DIM), "module.mlp_head.0.bias": normal(DIM),
                    "module.mlp_head.1.weight": normal(527, DIM), "module.mlp_head.1.bias": normal(527)})
    path = folder / "audioset_10_10_0.4593.pth"
    folder.mkdir(parents=True)
    torch.save(weights, path)
    return path


BEATS_ITER3_CFG = {  # checkpoint['cfg'] of BEATs_iter3.pt
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05, "dropout_input": 0.0, "layer_norm_first": False, "conv_bias": False,
    "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True, "num_buckets": 320,
    "max_distance": 800, "gru_rel_pos": True, "deep_norm": True, "input_patch_size": 16,
    "layer_wise_gradient_decay_ratio": 0.6, "embed_dim": 512, "finetuned_model": False,
}


def write_beats(folder: Path) -> Path:
    """BEATs.state_dict(): per-layer q/k/v projections, one relative bias table stored by every layer (tied),
    the positional convolution weight-normed over dim 2."""
    table = normal(320, HEADS)
    model = {"post_extract_proj.weight": normal(DIM, 512), "post_extract_proj.bias": normal(DIM),
             "patch_embedding.weight": normal(512, 1, 16, 16), "encoder.pos_conv.0.bias": normal(DIM),
             "encoder.pos_conv.0.weight_g": torch.ones(1, 1, 128),
             "encoder.pos_conv.0.weight_v": normal(DIM, DIM // 16, 128)}
    for i in range(DEPTH):
        b = f"encoder.layers.{i}."
        model.update({b + "self_attn.grep_a": torch.ones(1, HEADS, 1, 1),
                      b + "self_attn.relative_attention_bias.weight": table.clone()})
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            model.update({b + f"self_attn.{proj}.weight": normal(DIM, DIM), b + f"self_attn.{proj}.bias": normal(DIM)})
        model.update({b + "self_attn.grep_linear.weight": normal(8, 64), b + "self_attn.grep_linear.bias": normal(8),
                      b + "self_attn_layer_norm.weight": torch.ones(DIM), b + "self_attn_layer_norm.bias": normal(DIM),
                      b + "fc1.weight": normal(HIDDEN, DIM), b + "fc1.bias": normal(HIDDEN),
                      b + "fc2.weight": normal(DIM, HIDDEN), b + "fc2.bias": normal(DIM),
                      b + "final_layer_norm.weight": torch.ones(DIM), b + "final_layer_norm.bias": normal(DIM)})
    model.update({"encoder.layer_norm.weight": torch.ones(DIM), "encoder.layer_norm.bias": normal(DIM),
                  "layer_norm.weight": torch.ones(512), "layer_norm.bias": normal(512)})
    path = folder / "BEATs_iter3.pt"
    folder.mkdir(parents=True)
    torch.save({"cfg": dict(BEATS_ITER3_CFG), "model": model}, path)
    return path


def audio_transformer_weights(patch: Tuple[int, int], freq_patches: int, columns: int) -> Dict[str, torch.Tensor]:
    """The authors' AudioTransformer.state_dict() (Dasheng's and CED's encoder): time (1, D, 1, columns) and
    frequency (1, D, freq_patches, 1) positions, torchaudio's front-end buffers (periodic Hann window, 257 x 64 HTK
    mel filterbank), init_bn's BatchNorm2d over the 64 mel bins (statistics near the dB mels of this script's
    noise: mean 5, std 5), then the timm ViT over `patch` with a fused qkv bias."""
    return {"time_pos_embed": normal(1, DIM, 1, columns), "freq_pos_embed": normal(1, DIM, freq_patches, 1),
            "front_end.0.spectrogram.window": torch.hann_window(512),
            "front_end.0.mel_scale.fb": torchaudio.functional.melscale_fbanks(257, 0.0, SR / 2, 64, SR, None, "htk"),
            "init_bn.1.weight": torch.ones(64), "init_bn.1.bias": normal(64),
            "init_bn.1.running_mean": 5 + normal(64), "init_bn.1.running_var": torch.full((64,), 25.0),
            "init_bn.1.num_batches_tracked": torch.tensor(0), **timm_vit_weights(patch)}


def write_dasheng(folder: Path) -> Path:
    """dasheng_base.pt as utils.average_models writes it: {'config': the training script's config, its model_args
    without sizes (dasheng_base() forces 768 / 12 / 12; the heads are the release's 64-wide ones) and outputdir a
    PosixPath, 'model': the encoder's state dict over 64x4 patches, a 252-column time table, one frequency row}."""
    config = {"config_file": "dasheng/train/config/dasheng_base.yaml", "model": "dasheng_base",
              "model_args": {"target_length": 1008, "group_masking": True}, "mask_ratio": 0.75, "sample_rate": SR,
              "chunk_length": 10.0, "outputdir": pathlib.PosixPath("experiments/dasheng_base/benchmark")}
    path = folder / "dasheng_base.pt"
    folder.mkdir(parents=True)
    torch.save({"config": config, "model": audio_transformer_weights((64, 4), 1, 252)}, path)
    return path


def write_ced(folder: Path) -> Path:
    """audiotransformer_base_mAP_4999.pt as utils.average_models writes it: {'config': the training config (its
    model_args: target_length 1012, of which the table's 63 columns see 1008 frames), 'model': the state dict over
    16x16 patches (4 frequency rows) with the AudioSet classifier outputlayer (LayerNorm + Linear(768, 527))}."""
    model = {**audio_transformer_weights((16, 16), 4, 63), "outputlayer.0.weight": torch.ones(DIM),
             "outputlayer.0.bias": normal(DIM), "outputlayer.1.weight": normal(527, DIM),
             "outputlayer.1.bias": normal(527)}
    config = {"model": "audiotransformer_base", "model_args": {"target_length": 1012, "pooling": "logit"},
              "pretrained": None, "num_classes": 527, "outputpath": "experiments", "average": True}
    path = folder / "audiotransformer_base_mAP_4999.pt"
    folder.mkdir(parents=True)
    torch.save({"config": config, "model": model}, path)
    return path


def atst_encoder_weights(clip: bool) -> Dict[str, torch.Tensor]:
    """audiossl's FrameAST_base / AST_base: mask_embed, [CLS] (ATST-Clip), a learned 251-row table (slot 0 [CLS]'s,
    250 columns of 64x4 patches), the patch projection Linear(256, 768) over patches flattened mel-major, blocks
    without qkv bias, the final norm (ATST-Frame: norm_frame)."""
    vit = timm_vit_weights((64, 4), qkv_bias=False)
    w = {"mask_embed": normal(1, 1, DIM), **({"cls_token": normal(1, 1, DIM)} if clip else {}),
         "pos_embed": normal(1, 251, DIM),
         "patch_embed.patch_embed.weight": vit.pop("patch_embed.proj.weight").flatten(1),  # (768, 256)
         "patch_embed.patch_embed.bias": vit.pop("patch_embed.proj.bias"), **vit}
    if not clip:
        w["norm_frame.weight"], w["norm_frame.bias"] = w.pop("norm.weight"), w.pop("norm.bias")
    return w


def byol_mlp(n_in: int) -> Dict[str, torch.Tensor]:
    """audiossl's build_mlp(2, n_in, 4096, 256, last_bn=False): Linear, BatchNorm1d, ReLU, Linear (no biases)."""
    return {"0.weight": normal(4096, n_in), "1.weight": torch.ones(4096), "1.bias": normal(4096),
            "1.running_mean": normal(4096), "1.running_var": torch.ones(4096), "1.num_batches_tracked": torch.tensor(0),
            "3.weight": normal(256, 4096)}


def atst_networks(clip: bool) -> Dict[str, Dict[str, Dict[str, torch.Tensor]]]:
    """ATST's pre-training networks: the student's encoder, BYOL projector and predictor, the teacher's encoder
    (the one the HEAR module reads) and projector."""
    return {"student": {"encoder": atst_encoder_weights(clip), "projector": byol_mlp(DIM), "predictor": byol_mlp(256)},
            "teacher": {"encoder": atst_encoder_weights(clip), "projector": byol_mlp(DIM)}}


def adamw_state(networks: Dict[str, Dict[str, torch.Tensor]], step, skip: Tuple[str, ...] = (), **group) -> dict:
    """An AdamW state_dict() over the student's parameters (BatchNorm buffers and `skip` not among them) in the
    two groups of audiossl's get_params_groups (weights decayed, biases and norms not), moments zero: only their
    size matters here. lr and weight decay are floats: the releases hold numpy.float64, which torch.save under
    NumPy 2 would name numpy._core.multiarray.scalar (a global the releases never hold, and the loader refuses)."""
    parameters = [w for net in networks.values() for k, w in net.items()
                  if k not in skip and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    parameters = [w for w in parameters if w.dim() > 1] + [w for w in parameters if w.dim() <= 1]
    decayed = sum(w.dim() > 1 for w in parameters)
    return {"state": {i: {"step": step, "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w)}
                      for i, w in enumerate(parameters)},
            "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "weight_decay": 0.4, **group,
                              "params": list(range(decayed))},
                             {"lr": 1e-6, "betas": (0.9, 0.999), "weight_decay": 0.0, **group,
                              "params": list(range(decayed, len(parameters)))}]}


ATST_FRAME_BASE_ARGS = {  # hyper_parameters: audiossl's frame-level train.py arguments, the README's base command
    "arch": "base", "learning_rate": 0.0016, "warmup_steps": 1950, "max_steps": 58500, "ema": 0.997, "symmetric": True,
    "pos_type": "cut", "avg_blocks": 0, "patch_embed": "Linear", "save_path": "SAVE_PATH", "nproc": 4, "patch_h": 64,
    "patch_w": 4, "nprompt": 0, "data_path": "DATA_PATH", "batch_size_per_gpu": 256, "subset": 200000,
    "win_length": 1024, "aug_tea": False, "aug_stu": True, "freq_wrap": True, "anchor_len": 10.0, "mask_ratio": 0.65,
    "mask_len": 5, "min_mask_len": 2, "n_mels": 64, "mask_type": "block", "spec_h": 64}


def write_atst_frame(folder: Path) -> Path:
    """atstframe_base.ckpt: Lightning 1.6's Trainer checkpoint of FrameATSTLightningModule: state_dict
    model.{student,teacher}.{encoder,projector,predictor}.* (the encoder read: model.teacher.encoder.*),
    optimizer_states one (transformers) AdamW state over the student, hyper_parameters train.py's arguments."""
    networks = atst_networks(clip=False)
    state = {f"model.{who}.{net}.{k}": w for who, nets in networks.items() for net, ws in nets.items()
             for k, w in ws.items()}
    contents = {"epoch": 299, "global_step": 58500, "pytorch-lightning_version": "1.6.0", "state_dict": state,
                "loops": {}, "callbacks": {},
                "optimizer_states": [adamw_state(networks["student"], 58500, eps=1e-6, correct_bias=True)],
                "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": dict(ATST_FRAME_BASE_ARGS)}
    path = folder / "atstframe_base.ckpt"
    folder.mkdir(parents=True)
    torch.save(contents, path)
    return path


def write_atst_clip(folder: Path) -> Path:
    """base.ckpt, ATST-Clip base's release (its DINO-style trainer, not Lightning): {'student', 'teacher':
    module.{backbone,head,predictor}.* (the encoder read: teacher['module.backbone.*']), 'optimizer': (torch)
    AdamW over the student but its mask_embed, 'epoch', 'args': a Namespace (anchor_len [6.0]: units of 600
    frames), 'byol_loss': empty}."""
    networks, names = atst_networks(clip=True), {"encoder": "backbone", "projector": "head", "predictor": "predictor"}
    contents = {who: {f"module.{names[net]}.{k}": w for net, ws in nets.items() for k, w in ws.items()}
                for who, nets in networks.items()}
    contents.update(optimizer=adamw_state(networks["student"], torch.tensor(400000.0), skip=("mask_embed",),
                                          eps=1e-8, amsgrad=False, maximize=False, foreach=None, capturable=False),
                    epoch=100, args=argparse.Namespace(arch="ast_base", pos_type="cut", patch_height=64, patch_width=4,
                                                       use_cls=True, anchor_len=[6.0]), byol_loss={})
    path = folder / "base.ckpt"
    folder.mkdir(parents=True)
    torch.save(contents, path)
    return path


def fairseq_wav2vec2_weights(wavlm: bool = False) -> Dict[str, torch.Tensor]:
    """A Base model's state dict in fairseq's names (WavLM's: the relative table in block 0, gates in every block)."""
    w = {"mask_emb": normal(DIM), "feature_extractor.conv_layers.0.2.weight": torch.ones(512),
         "feature_extractor.conv_layers.0.2.bias": normal(512), "layer_norm.weight": torch.ones(512),
         "layer_norm.bias": normal(512), "post_extract_proj.weight": normal(DIM, 512),
         "post_extract_proj.bias": normal(DIM), "encoder.pos_conv.0.bias": normal(DIM),
         "encoder.pos_conv.0.weight_g": torch.ones(1, 1, 128),
         "encoder.pos_conv.0.weight_v": normal(DIM, DIM // 16, 128),
         "encoder.layer_norm.weight": torch.ones(DIM), "encoder.layer_norm.bias": normal(DIM)}
    for i, (_, channels, taps) in enumerate(CONV_LAYERS):
        w[f"feature_extractor.conv_layers.{i}.0.weight"] = normal(512, channels, taps)
    for i in range(DEPTH):
        b = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            w.update({b + f"self_attn.{proj}.weight": normal(DIM, DIM), b + f"self_attn.{proj}.bias": normal(DIM)})
        w.update({b + "self_attn_layer_norm.weight": torch.ones(DIM), b + "self_attn_layer_norm.bias": normal(DIM),
                  b + "fc1.weight": normal(HIDDEN, DIM), b + "fc1.bias": normal(HIDDEN),
                  b + "fc2.weight": normal(DIM, HIDDEN), b + "fc2.bias": normal(DIM),
                  b + "final_layer_norm.weight": torch.ones(DIM), b + "final_layer_norm.bias": normal(DIM)})
        if wavlm:
            w.update({b + "self_attn.grep_linear.weight": normal(8, 64), b + "self_attn.grep_linear.bias": normal(8),
                      b + "self_attn.grep_a": torch.ones(1, HEADS, 1, 1)})
    if wavlm:
        w["encoder.layers.0.self_attn.relative_attention_bias.weight"] = normal(320, HEADS)
    return w


BASE_MODEL_CFG = {  # the Base releases' architecture, in fairseq's (and WavLM's) names
    "extractor_mode": "default", "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False, "encoder_layers": DEPTH, "encoder_embed_dim": DIM, "encoder_ffn_embed_dim": HIDDEN,
    "encoder_attention_heads": HEADS, "activation_fn": "gelu", "layer_norm_first": False, "conv_pos": 128,
    "conv_pos_groups": 16}


def write_wavlm(folder: Path) -> Path:
    path = folder / "WavLM-Base+.pt"
    folder.mkdir(parents=True)
    torch.save({"cfg": {**BASE_MODEL_CFG, "normalize": False, "relative_position_embedding": True,
                        "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True},
                "model": fairseq_wav2vec2_weights(wavlm=True)}, path)
    return path


def write_hubert(folder: Path) -> Path:
    """fairseq's trainer state (task_state holds no label Dictionary here: pickling one needs fairseq)."""
    path = folder / "hubert_base_ls960.pt"
    folder.mkdir(parents=True)
    model = {**fairseq_wav2vec2_weights(), "label_embs_concat": normal(504, 256), "final_proj.weight": normal(256, DIM),
             "final_proj.bias": normal(256)}
    torch.save({"args": None, "cfg": {"model": {"_name": "hubert", **BASE_MODEL_CFG},
                                      "task": {"_name": "hubert_pretraining", "normalize": False, "sample_rate": SR}},
                "model": model, "optimizer_history": [{"num_updates": 400000}], "task_state": {},
                "extra_state": {"previous_training_time": 0.0}}, path)
    return path


def write_wav2vec2(folder: Path) -> Path:
    path = folder / "wav2vec_small.pt"
    folder.mkdir(parents=True)
    model = {**fairseq_wav2vec2_weights(), "quantizer.vars": normal(1, 640, 128),
             "quantizer.weight_proj.weight": normal(640, 512), "quantizer.weight_proj.bias": normal(640),
             "project_q.weight": normal(256, 256), "project_q.bias": normal(256), "final_proj.weight": normal(256, DIM),
             "final_proj.bias": normal(256)}
    torch.save({"args": argparse.Namespace(arch="wav2vec2", normalize=False, sample_rate=SR, **BASE_MODEL_CFG),
                "model": model, "optimizer_history": [{"num_updates": 400000}], "extra_state": {}}, path)
    return path


WRITERS: Dict[str, Callable[[Path], Path]] = {
    "msm_mae": write_msm_mae, "m2d": write_m2d, "audiomae": write_audiomae, "ast": write_ast, "beats": write_beats,
    "dasheng": write_dasheng, "ced": write_ced, "atst_frame": write_atst_frame, "atst_clip": write_atst_clip,
    "wavlm": write_wavlm, "hubert": write_hubert, "wav2vec2": write_wav2vec2}


# -- measurements -------------------------------------------------------------------------------------

class OtherLoad:
    """The share of all CPUs' time that other processes (and the hypervisor) used since `start()`: this
    machine is shared, and a busy neighbour slows OpenMP code far more than its share."""

    @staticmethod
    def _snapshot() -> Tuple[float, float, float]:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        busy = (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq steal
        own = os.times()
        return busy, own.user + own.system + own.children_user + own.children_system, time.monotonic()

    def start(self) -> "OtherLoad":
        self.begin = self._snapshot()
        return self

    def share(self) -> float:
        (busy0, own0, t0), (busy1, own1, t1) = self.begin, self._snapshot()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / ((t1 - t0) * os.cpu_count())


def machine_facts(threads: int) -> None:
    flags = set()
    model = platform.processor()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    print(f"machine: {model}, {os.cpu_count()} CPUs; torch {torch.__version__}, oneDNN "
          f"{'available' if torch.backends.mkldnn.is_available() else 'absent'}; {threads} threads; dtype 'auto' -> "
          f"{str(resolve_dtype('auto', torch.device('cpu'))).replace('torch.', '')}; CPU flags: "
          + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512f", "avx512_bf16", "amx_bf16"))
          + f"; load average {os.getloadavg()[0]:.2f}")


GEMM_SHAPES = {"qkv": (DIM, 3 * DIM), "proj": (DIM, DIM), "fc1": (DIM, HIDDEN), "fc2": (HIDDEN, DIM)}
KERNELS = ("torch.mm", "F.linear", "oneDNN packed")


class Gemm:
    """GFLOP/s of (tokens x in) @ (in x out) at the encoder's four product shapes, per kernel; each
    `measure()` is one more sample (lasting >= 0.1 s) of each, the best one kept."""

    def __init__(self, tokens: int, dtype: torch.dtype):
        self.tokens, self.dtype = tokens, dtype
        self.gflops = {shape: dict.fromkeys(KERNELS, 0.0) for shape in GEMM_SHAPES}

    def measure(self) -> None:
        for shape, (n_in, n_out) in GEMM_SHAPES.items():
            x, w = torch.randn(self.tokens, n_in, dtype=self.dtype), torch.randn(n_out, n_in, dtype=self.dtype)
            w_t, packed = w.t().contiguous(), torch.ops.mkldnn._reorder_linear_weight(w)
            runs = {"torch.mm": lambda: torch.mm(x, w_t), "F.linear": lambda: F.linear(x, w),
                    "oneDNN packed": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")}
            for kernel, run in runs.items():
                run()
                calls, start = 0, time.perf_counter()
                while time.perf_counter() - start < 0.1:
                    run()
                    calls += 1
                rate = 2 * self.tokens * n_in * n_out * calls / (time.perf_counter() - start) / 1e9
                self.gflops[shape][kernel] = max(self.gflops[shape][kernel], rate)

    @property
    def peak(self) -> float:
        """The encoder's peak: its four products (equal token counts) each at its best kernel."""
        flops = {shape: n_in * n_out for shape, (n_in, n_out) in GEMM_SHAPES.items()}
        return sum(flops.values()) / sum(flops[s] / max(self.gflops[s].values()) for s in flops)

    def print_rows(self, label: str) -> None:
        dtype = {torch.bfloat16: "bf16", torch.float32: "fp32"}[self.dtype]
        for shape, (n_in, n_out) in GEMM_SHAPES.items():
            cells = self.gflops[shape]
            best = max(cells, key=cells.get)
            print(f"| {label}, {dtype} | {self.tokens} x {n_in} -> {n_out} ({shape}) | "
                  + " | ".join(f"{cells[k]:.0f}" for k in KERNELS) + f" | {cells[best]:.0f} ({best}) |")
        print(f"| {label}, {dtype} | mix of the four | | | | **{self.peak:.0f}** |")


GEMM_HEADER = "| encoder, dtype | tokens x in -> out | " + " | ".join(KERNELS) + " | best |\n|---|---|---|---|---|---|"


@dataclass
class Job:
    """One way of embedding one batch, timed over rounds (best wall time kept)."""
    run: Callable[[], object]
    audio_seconds: float
    encoder: nn.Module  # whose work `flops` counts
    flops: int = 0  # of one run, counted by EncoderWork
    seconds: float = float("inf")

    def measure(self) -> None:
        start = time.perf_counter()
        self.run()
        self.seconds = min(self.seconds, time.perf_counter() - start)

    @property
    def rate(self) -> float:
        """Audio seconds per wall second."""
        return self.audio_seconds / self.seconds

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9


def count_work(job: Job, bench: Bench) -> int:
    """Run the job once (also its warm-up), recording its encoder FLOPs; return its largest encoder call
    in tokens."""
    with EncoderWork(job.encoder, bench) as work:
        job.run()
    job.flops = work.flops
    return work.largest_call_tokens


def measure_rounds(items: List, repeats: int) -> float:
    """`repeats` rounds, each measuring every item once, so a change in the machine's load hits all of them
    alike; returns the share of the CPUs other processes used meanwhile."""
    load = OtherLoad().start()
    for _ in range(repeats):
        for item in items:
            item.measure()
    return load.share()


def eager_attention(q, k, v):
    """What the reference computed: softmax(q k^T / sqrt(d)) v, materialised in full."""
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def reference_scene_embeddings(encoder: MaskedAutoencoder, frontend: nn.Module, audio: torch.Tensor) -> torch.Tensor:
    """The original MSM-MAE wrapper's loop: the batch normalised by its own statistics, zero-padded to
    whole units, one float32 encoder call per unit (eager attention), padded columns dropped."""
    c = encoder.vit_config
    (_, pt), (gf, unit_columns), unit = c.patch_size, c.grid_size, c.input_size[1]
    with torch.no_grad(), mock.patch("torch.nn.functional.scaled_dot_product_attention", eager_attention):
        x = frontend(audio)
        x = (x - x.mean()) / x.std()
        n, columns = x.shape[0], math.ceil(x.shape[-1] / pt)
        x = F.pad(x, (0, -x.shape[-1] % unit)).unsqueeze(1)
        frames = []
        for start in range(0, x.shape[-1], unit):
            tokens = encoder.forward_encoder(x[..., start:start + unit])[:, c.num_prefix_tokens:]  # (n, gf * K, D)
            frames.append(tokens.reshape(n, gf, unit_columns, -1).permute(0, 2, 1, 3).reshape(n, unit_columns, -1))
        return torch.cat(frames, dim=1)[:, :columns].mean(dim=1)


PROFILE_GROUPS = [  # (group, substrings of op names); the first group that matches takes the op
    ("matmul", ("addmm", "aten::mm", "linear", "aten::matmul")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax", "aten::bmm", "aten::baddbmm", "LlgaPartition",
                   "hear_msm_mae::attention")),
    ("conv", ("conv",)),
    ("norms", ("layer_norm",)),
    ("copies", ("copy", "clone", "contiguous", "aten::cat", "pad", "aten::stack")),
]


def profile_shares(run: Callable[[], object]) -> Tuple[Dict[str, float], List[Tuple[str, float]]]:
    """Shares of the self CPU time of one `run()` by PROFILE_GROUPS (+ "other"), and the 3 largest "other" ops."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    groups, other = defaultdict(float), defaultdict(float)
    for event in prof.key_averages():
        group = next((g for g, keys in PROFILE_GROUPS if any(k in event.key for k in keys)), "other")
        groups[group] += event.self_cpu_time_total
        if group == "other":
            other[event.key] += event.self_cpu_time_total
    total = sum(groups.values())
    top = sorted(other.items(), key=lambda kv: -kv[1])[:3]
    return ({g: groups[g] / total for g in [g for g, _ in PROFILE_GROUPS] + ["other"]},
            [(name, t / total) for name, t in top])


def min_cosines(hear, fast, exact, audio: torch.Tensor) -> Tuple[float, float]:
    """Minimum cosine of `fast`'s scene and timestamp embeddings to `exact`'s."""
    scene = F.cosine_similarity(hear.get_scene_embeddings(audio, fast), hear.get_scene_embeddings(audio, exact))
    frames = F.cosine_similarity(hear.get_timestamp_embeddings(audio, fast)[0],
                                 hear.get_timestamp_embeddings(audio, exact)[0], dim=-1)
    return float(scene.min()), float(frames.min())


def peak_rss(module: str, checkpoint: Path, seconds: float, kind: str, threads: int) -> dict:
    """Load the model and embed one clip in a fresh process: its peak RSS, the RSS after loading (MB), wall time."""
    code = f"""
import importlib, json, time, torch
def high_water_mb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
torch.set_num_threads({threads})
hear = importlib.import_module({module!r})
model = hear.load_model({str(checkpoint)!r}, device="cpu")
loaded = high_water_mb()
audio = 0.1 * torch.randn(1, int({seconds} * {SR}))
start = time.perf_counter()
hear.get_{kind}_embeddings(audio, model)
print(json.dumps(dict(loaded_mb=loaded, peak_mb=high_water_mb(), wall_s=time.perf_counter() - start)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"fresh process failed ({module}, {seconds} s, {kind}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- one family ---------------------------------------------------------------------------------------

@dataclass
class FamilyResult:
    bench: Bench
    gemm: Gemm  # bf16, at the tokens of the largest encoder call of the scene job
    scene: Job  # default mode, the 10-s clips
    one_second: Job  # default mode, 1-s clips
    one_second_clips: int
    cosines: Tuple[float, float]  # scene, timestamp frames
    shares: Dict[str, float]  # profile
    others: float  # other processes' share of the CPUs during the timing rounds
    memory: Dict[Tuple[str, int], dict]  # (kind, minutes) -> peak_rss
    switched: Dict[str, Job]  # --ablation: the scene job with one CPU path switched off (SWITCHES), by title
    bounds: Dict[str, Job]  # --bounds: the scene job with one kind of work left out (LEFT_OUT), by what


def benchmark_family(bench: Bench, folder: Path, args) -> FamilyResult:
    """Write, load and measure one family. MSM-MAE also times the reference strategy, float32 and timestamp
    embeddings, against bf16 and fp32 GEMM peaks, and prints its own table."""
    hear = importlib.import_module(bench.module)
    torch.manual_seed(0)
    checkpoint = WRITERS[bench.name](folder)
    fast = hear.load_model(checkpoint, device="cpu")  # dtype "auto"
    exact = hear.load_model(checkpoint, device="cpu", dtype="float32")
    audio10 = 0.1 * torch.randn(args.clips, 10 * SR)
    one_second_clips = args.clips * 10
    audio1 = 0.1 * torch.randn(one_second_clips, SR)
    seconds10 = audio10.numel() / SR
    jobs = {"scene": Job(lambda: hear.get_scene_embeddings(audio10, fast), seconds10, fast.encoder),
            "1-s clips": Job(lambda: hear.get_scene_embeddings(audio1, fast), audio1.numel() / SR, fast.encoder)}
    switches = [s for s in SWITCHES if s[2] is None or bench.name in s[2]] if args.ablation else []
    for module, flag, _, title in switches:
        jobs[title] = Job(lambda module=module, flag=flag: switched_off(module, flag, hear, audio10, fast), seconds10,
                          fast.encoder)
    bounds = [what for what, families in LEFT_OUT.items() if families is None or bench.name in families] \
        if args.bounds else []
    for what in bounds:
        jobs["without " + what] = Job(lambda what=what: without(what, hear, audio10, fast), seconds10, fast.encoder)
    if bench.name == "msm_mae":
        reference_model = MaskedAutoencoder().eval()
        reference_model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        frontend = LogMelSpectrogram()
        timestamp_model = hear.load_model(checkpoint, device="cpu", timestamp_hop_ms=40)
        jobs.update({
            "reference": Job(lambda: reference_scene_embeddings(reference_model, frontend, audio10), seconds10,
                             reference_model),
            "float32": Job(lambda: hear.get_scene_embeddings(audio10, exact), seconds10, exact.encoder),
            "timestamp": Job(lambda: hear.get_timestamp_embeddings(audio10, timestamp_model), seconds10,
                             timestamp_model.encoder)})
    with torch.inference_mode():
        tokens = {name: count_work(job, bench) for name, job in jobs.items()}["scene"]
        gemms = {"bf16": Gemm(tokens, torch.bfloat16)}
        if bench.name == "msm_mae":
            gemms["fp32"] = Gemm(tokens, torch.float32)
        others = measure_rounds([*gemms.values(), *jobs.values()], args.repeats)
        shares, top_other = profile_shares(jobs["scene"].run)
        cosines = min_cosines(hear, fast, exact, 0.1 * torch.randn(2, 10 * SR))
    print(f"\n{bench.title}, {bench.layout}: {bench.flops_per_audio_second() / 1e9:.2f} GFLOP per audio s (units of "
          f"{bench.unit_patches + bench.prefix_tokens} tokens every {bench.unit_seconds:g} s); other processes used "
          f"{others:.0%} of the CPUs during the timing rounds\n\n{GEMM_HEADER}")
    for gemm in gemms.values():
        gemm.print_rows(bench.title)
    print("\nlargest ops outside the profile's groups: " + ", ".join(f"{n} {s:.1%}" for n, s in top_other))
    if bench.name == "msm_mae":
        print_msm_mae_table(jobs, gemms, one_second_clips)
        with torch.inference_mode():
            package_reference = hear.load_model(checkpoint, device="cpu", dtype="float32", mode="reference")
            probe = 0.1 * torch.randn(3, 10 * SR)
            difference = (reference_scene_embeddings(reference_model, frontend, probe)
                          - hear.get_scene_embeddings(probe, package_reference)).abs().max()
        print(f"reference strategy vs the package's mode='reference' (float32): max |difference| {difference:.1e}")
    memory = {}
    if not args.skip_memory:
        minutes = [args.memory_minutes // 4, args.memory_minutes] if bench.name == "msm_mae" else [args.memory_minutes]
        for kind in ("scene", "timestamp"):
            for m in minutes:
                memory[kind, m] = peak_rss(bench.module, checkpoint, m * 60, kind, args.threads)
    return FamilyResult(bench, gemms["bf16"], jobs["scene"], jobs["1-s clips"], one_second_clips, cosines, shares,
                        others, memory, {title: jobs[title] for *_, title in switches},
                        {what: jobs["without " + what] for what in bounds})


WAVEFORM = ("wavlm", "hubert", "wav2vec2")
SWITCHES = [  # (module, flag, families (None: all), title): the ablation's CPU paths
    (kernels, "NATIVE_CPU_ATTENTION", None, "C attention kernel off (the products, oneDNN Graph)"),
    (conv, "FFT_CONVOLUTION", ("beats",) + WAVEFORM, "position convolution direct instead of by FFT"),
    (wav2vec2_encoder, "WINDOWED_FEATURES", WAVEFORM, "feature encoder by the modules over whole inputs, not windowed"),
    (wav2vec2_encoder, "FLOAT32_STREAM", WAVEFORM, "residual stream in bfloat16, adds inside the products"),
]


def switched_off(module, flag: str, hear, audio: torch.Tensor, model) -> torch.Tensor:
    """Scene embeddings with one of the package's CPU paths switched off: `flag` of `module` False."""
    setattr(module, flag, False)
    try:
        return hear.get_scene_embeddings(audio, model)
    finally:
        setattr(module, flag, True)


LEFT_OUT = {  # --bounds: work left out of the scene call -> families (None: all)
    "the linears' GELU": None,  # every packed product's activation, blocks and feature encoder
    "the gated relative bias": ("beats", "wavlm"),  # neither made nor added to the scores
    "attention": None,  # each attention returns its queries
}


def without(what: str, hear, audio: torch.Tensor, model) -> torch.Tensor:
    """Scene embeddings with one kind of work (LEFT_OUT) skipped: wrong embeddings, timed only, as the bound of
    what a faster kernel for that work could give."""
    with contextlib.ExitStack() as stack:
        def patch(modules, name, new):
            for module in modules:
                stack.enter_context(mock.patch.object(module, name, new))
        if what == "the linears' GELU":  # the packed products (CPU inference): the blocks' and feature encoder's
            plain = linear_layers.packed_linear
            patch((linear_layers, wav2vec2_encoder), "packed_linear",
                  lambda x, layout, b, activation=None, residual=None: plain(x, layout, b, None, residual))
        elif what == "the gated relative bias":
            patch((beats_encoder, wav2vec2_encoder), "attention",
                  lambda q, k, v, bias=None, gate=None, buffer=None: kernels.attention(q, k, v))
        else:
            patch((vit_encoder, beats_encoder, wav2vec2_encoder), "attention", lambda q, k, v, *bias, **gate: q)
        return hear.get_scene_embeddings(audio, model)


def print_msm_mae_table(jobs: Dict[str, Job], gemms: Dict[str, Gemm], one_second_clips: int) -> None:
    reference = jobs["reference"].rate
    rows = {"reference": ("reference strategy (fp32, eager attention, one unit per call)", "fp32"),
            "float32": ("package, float32", "fp32"), "scene": ("package, default (scene embeddings)", "bf16"),
            "timestamp": ("package, default, timestamp embeddings (40 ms)", "bf16"),
            "1-s clips": (f"package, default, {one_second_clips} x 1-s clips", "bf16")}
    print(f"\n| MSM-MAE 80x208, {jobs['scene'].audio_seconds / 10:.0f} x 10-s clips | audio s / wall s | vs reference "
          "| achieved GFLOP/s | roofline |\n|---|---|---|---|---|")
    for key, (name, dtype) in rows.items():
        job = jobs[key]
        print(f"| {name} | {job.rate:.1f} | {job.rate / reference:.2f}x | {job.gflops:.0f} | "
              f"{job.gflops / gemms[dtype].peak:.0%} of {dtype} |")
    print(f"\ntimestamp / scene cost: {jobs['scene'].rate / jobs['timestamp'].rate:.2f} (target <= 4.2); "
          f"1-s / 10-s cost per audio second: {jobs['scene'].rate / jobs['1-s clips'].rate:.2f} (target <= 1.2)")


def print_variants(results: List[FamilyResult], field: str, what: str, ratio: str) -> None:
    """The scene jobs of `field` ("switched": a CPU path off; "bounds": work left out) beside the default, with
    the faster one's rate over the other's (the default's, for a path switched off)."""
    rows = [(r, title, job) for r in results for title, job in getattr(r, field).items()]
    if not rows:
        return
    print(f"\n| scene, 10-s clips | {what} | default: audio s / wall s, roofline | {what.split(' (')[0]} | {ratio} |"
          "\n|---|---|---|---|---|")
    for r, title, job in rows:
        faster = r.scene.rate / job.rate if field == "switched" else job.rate / r.scene.rate
        print(f"| {r.bench.title} | {title} | {r.scene.rate:.1f}, {r.scene.gflops / r.gemm.peak:.0%} | "
              f"{job.rate:.1f}, {job.gflops / r.gemm.peak:.0%} | {faster:.3f}x |")


def print_summary(results: List[FamilyResult]) -> None:
    print("\n| family | GFLOP / audio s | audio s / wall s | achieved GFLOP/s | bf16 peak (tokens) | roofline | "
          "ceiling (audio s / s) | 1-s / 10-s | cosine scene / frames | others' CPU |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        b, s = r.bench, r.scene
        ceiling = r.gemm.peak * 1e9 / (s.flops / s.audio_seconds)
        print(f"| {b.title} | {b.flops_per_audio_second() / 1e9:.2f} | {s.rate:.1f} | {s.gflops:.0f} | "
              f"{r.gemm.peak:.0f} ({r.gemm.tokens}) | {s.gflops / r.gemm.peak:.0%} | {ceiling:.1f} | "
              f"{s.rate / r.one_second.rate:.2f} ({r.one_second_clips} clips) | "
              f"{r.cosines[0]:.6f} / {r.cosines[1]:.6f} | {r.others:.0%} |")
    print("\n| one default scene call, self time | " + " | ".join(g for g, _ in PROFILE_GROUPS) + " | other |\n|---|"
          + "---|" * (len(PROFILE_GROUPS) + 1))
    for r in results:
        print(f"| {r.bench.title} | " + " | ".join(f"{v:.1%}" for v in r.shares.values()) + " |")
    print_variants(results, "switched", "switched off", "default / switched off")
    print_variants(results, "bounds", "left out (wrong embeddings: a bound)", "what it costs: without / default")
    if any(r.memory for r in results):
        print("\n| one clip, fresh process | model loaded (MB) | peak RSS (MB) | wall (s) | audio s / wall s |\n"
              "|---|---|---|---|---|")
        for r in results:
            for (kind, minutes), m in r.memory.items():
                print(f"| {r.bench.title}, {minutes} min, {kind} | {m['loaded_mb']:.0f} | {m['peak_mb']:.0f} | "
                      f"{m['wall_s']:.1f} | {minutes * 60 / m['wall_s']:.1f} |")


# -- what the encoder's CPU paths are worth (--ablation) and torch.compile (--compile) -------------------

def unpack(model: nn.Module) -> nn.Module:
    """Undo load_model's oneDNN packing: every Linear computes F.linear, then GELU or the residual add apart."""
    for module in model.modules():
        if getattr(module, "packed", None) is not None:
            module.packed = None
    return model


def ablation(folder: Path, args) -> None:
    """MSM-MAE default scene embeddings with the current encoder's CPU paths switched, interleaved rounds:
    packed linears (fused bias, GELU, residual add) or F.linear and separate operations; attention by oneDNN
    Graph's fused kernel at every length, by two batched products up to SHORT_ATTENTION_TOKENS and SDPA
    beyond, or by SDPA at every length, or by the C kernel (hear_msm_mae.attention's NATIVE_CPU_ATTENTION,
    FUSED_CPU_ATTENTION, SHORT_ATTENTION_TOKENS)."""
    import hear_msm_mae

    checkpoint = write_msm_mae(folder)
    audio = 0.1 * torch.randn(args.clips, 10 * SR)
    packed = hear_msm_mae.load_model(checkpoint, device="cpu")
    unpacked = unpack(hear_msm_mae.load_model(checkpoint, device="cpu"))
    flags = ("NATIVE_CPU_ATTENTION", "FUSED_CPU_ATTENTION", "SHORT_ATTENTION_TOKENS")
    default = tuple(getattr(kernels, f) for f in flags)
    strategies = {"C attention kernel": (True, True, 128), "oneDNN Graph fused attention": (False, True, 0),
                  "batched products, then SDPA": (False, False, 128), "SDPA at every length": (False, False, 0)}

    def job(model, strategy):
        def run():
            for flag, value in zip(flags, strategies[strategy]):
                setattr(kernels, flag, value)
            try:
                return hear_msm_mae.get_scene_embeddings(audio, model)
            finally:
                for flag, value in zip(flags, default):
                    setattr(kernels, flag, value)
        return Job(run, audio.numel() / SR, model.encoder)

    jobs = {(linears, strategy): job(model, strategy) for linears, model in
            (("packed linears", packed), ("F.linear + GELU + add", unpacked)) for strategy in strategies}
    with torch.inference_mode():
        others = measure_rounds(list(jobs.values()), args.repeats)
    base = jobs["F.linear + GELU + add", "SDPA at every length"].rate
    print(f"\n| MSM-MAE 80x208, {args.clips} x 10-s clips, scene | audio s / wall s | vs neither |\n|---|---|---|")
    for (linears, strategy), j in jobs.items():
        print(f"| {linears}, {strategy} | {j.rate:.1f} | {j.rate / base:.2f}x |")
    print(f"(the package's default: C kernel={default[0]}, fused={default[1]}, short sequences up to {default[2]} "
          f"tokens as products; other processes used {others:.0%} of the CPUs during the timing rounds)")


ATTENTION_SHAPES = [  # (family, units, tokens, gated relative bias): one call of a block's attention, 8 x 10-s clips
    ("MSM-MAE", 32, 65, False), ("M2D", 8, 191, False), ("Audio-MAE", 8, 512, False), ("BEATs", 8, 504, True),
    ("WavLM", 4, 1000, True), ("AST", 3, 1214, False)]


def attention_paths(args) -> None:
    """Each CPU attention path alone at the families' shapes (12 heads of 64, q, k, v views of one qkv product
    as the encoders make them, bf16): GFLOP/s of the two products and the max error against float64 attention.
    The torch paths get the gated bias written whole first (in the timing), as attention() gives it them."""
    heads, d = 12, 64
    print("\n| family: units x tokens | C kernel | batched products | oneDNN Graph | SDPA | C kernel / best other |"
          "\n|---|---|---|---|---|---|")
    for family, n, length, gated in ATTENTION_SHAPES:
        g = torch.Generator().manual_seed(length)
        qkv = (2 * torch.randn(n, length, 3 * heads * d, generator=g)).bfloat16()
        q, k, v = qkv.view(n, length, 3, heads, d).permute(2, 0, 3, 1, 4)
        table = (3 * torch.randn(heads, length, length, generator=g)).bfloat16() if gated else None
        gate = (2 * torch.rand(n, heads, length, 1, generator=g)).bfloat16() if gated else None
        buffer = torch.empty(n, heads, length, length, dtype=torch.bfloat16) if gated else None

        def whole_bias():
            return None if table is None else torch.mul(gate, table, out=buffer)

        def products():
            x = [t.reshape(n * heads, length, d) for t in (q, k, v)]
            scores = torch.baddbmm(x[0].new_empty(n * heads, length, length), x[0], x[1].transpose(1, 2), beta=0,
                                   alpha=d ** -0.5)
            return torch.bmm(scores.softmax(-1), x[2]).view(n, heads, length, d)

        paths = {"C kernel": lambda: kernels.native_attention(q, k, v, table, gate),
                 "batched products": None if gated else products,
                 "oneDNN Graph": lambda: kernels.FUSED(q, k, v, whole_bias()),
                 "SDPA": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=whole_bias())}
        scores = q.double() @ k.double().transpose(-1, -2) * d ** -0.5
        exact = (scores if table is None else scores + gate.double() * table.double()).softmax(-1) @ v.double()
        times = {name: [] for name, run in paths.items() if run is not None}
        with torch.inference_mode():
            errors = {name: float((paths[name]().double() - exact).abs().max()) for name in times}
            for _ in range(args.repeats * 5):
                for name in times:
                    started = time.perf_counter()
                    paths[name]()
                    times[name].append(time.perf_counter() - started)
        flops = 4 * n * heads * length * length * d
        rate = {name: flops / min(t) / 1e9 for name, t in times.items()}
        cells = [f"{rate[name]:.0f} ({errors[name]:.1e})" if name in rate else "-" for name in paths]
        best_other = max(r for name, r in rate.items() if name != "C kernel")
        print(f"| {family}: {n} x {length}{' + gated bias' if gated else ''} | " + " | ".join(cells) +
              f" | {rate['C kernel'] / best_other:.2f}x |")
    print("(GFLOP/s, best of the interleaved rounds; in brackets the max |error| against float64 attention, for q, "
          "k, v of standard deviation 2)")


def compile_data_point(folder: Path, args) -> None:
    """MSM-MAE default scene embeddings with the loaded encoder's `encode` compiled by inductor (one static
    graph per input shape), packed as load_model leaves it and unpacked (plain F.linear: Linear.packed
    cleared), each with and without freezing. Each variant is compiled afresh (dynamo reset, inductor's
    caches off for the first call), then timed in rounds with the default path."""
    import hear_msm_mae
    import torch._dynamo
    import torch._inductor.config

    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # by force_disable_caches, as meant
    checkpoint = write_msm_mae(folder)
    audio = 0.1 * torch.randn(args.clips, 10 * SR)
    seconds = audio.numel() / SR
    default = hear_msm_mae.load_model(checkpoint, device="cpu")
    expected = hear_msm_mae.get_scene_embeddings(audio, default)
    print(f"\n| MSM-MAE 80x208, {args.clips} x 10-s clips, scene | first call (s) | graph breaks | audio s / wall s | "
          "default, same rounds | vs default | min cosine to default | others' CPU |\n"
          "|---|---|---|---|---|---|---|---|")
    for packed in (True, False):
        for freezing in (False, True):
            name = f"torch.compile(encode), {'packed' if packed else 'unpacked'}, freezing={freezing}"
            model = hear_msm_mae.load_model(checkpoint, device="cpu")
            if not packed:
                unpack(model)
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            model.encoder.encode = torch.compile(model.encoder.encode, dynamic=False)

            def run(model=model, freezing=freezing, cold=False):  # recompilations see the same setting
                with torch._inductor.config.patch(freezing=freezing, force_disable_caches=cold):
                    return hear_msm_mae.get_scene_embeddings(audio, model)

            start = time.perf_counter()
            try:
                out = run(cold=True)
            except Exception as e:  # the data point is what the compiler says
                print(f"| {name} | fails: {type(e).__name__}: {str(e).splitlines()[0][:200]} | | | | | | |")
                continue
            first = time.perf_counter() - start
            breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
            jobs = [Job(run, seconds, model.encoder),
                    Job(lambda: hear_msm_mae.get_scene_embeddings(audio, default), seconds, default.encoder)]
            with torch.inference_mode():
                others = measure_rounds(jobs, args.repeats)
            print(f"| {name} | {first:.1f} | {breaks} | {jobs[0].rate:.1f} | {jobs[1].rate:.1f} | "
                  f"{jobs[0].rate / jobs[1].rate:.2f}x | {float(F.cosine_similarity(out, expected).min()):.6f} | "
                  f"{others:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=8, help="10-s clips per batch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best of)")
    parser.add_argument("--memory-minutes", type=int, default=20, help="clip length of the RSS measurements")
    parser.add_argument("--skip-memory", action="store_true", help="no fresh-process RSS measurements")
    parser.add_argument("--quick", action="store_true", help="one timing round, 4-minute memory clips")
    parser.add_argument("--ablation", action="store_true", help="add MSM-MAE with packing / short attention off")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile data point (MSM-MAE)")
    parser.add_argument("--bounds", action="store_true", help="time the scene call without its GELU, gated "
                        "bias or attention: what faster kernels for them could give at most")
    parser.add_argument("--attention", action="store_true", help="only each CPU attention path alone at the "
                        "families' shapes: GFLOP/s and error against float64")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.memory_minutes = 1, 4
    torch.set_num_threads(args.threads)
    started, load = time.perf_counter(), OtherLoad().start()
    machine_facts(args.threads)
    if args.attention:
        attention_paths(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for name in args.families:
            print(f"\n## {BENCHES[name].title}")
            results.append(benchmark_family(BENCHES[name], Path(tmp) / name, args))
        print("\n## Summary")
        print_summary(results)
        if args.ablation:
            print("\n## Packed linears and short-sequence attention, each switched off")
            ablation(Path(tmp) / "ablation", args)
        if args.compile:
            print("\n## torch.compile")
            compile_data_point(Path(tmp) / "compile", args)
    print(f"\n{time.perf_counter() - started:.0f} s; other processes used {load.share():.0%} of the CPUs meanwhile")


if __name__ == "__main__":
    main()
