"""BEATs (Chen et al. 2022, "Audio Pre-Training with Acoustic Tokenizers"): the encoder, for inference.

Exact to microsoft/unilm beats/ (BEATs.py, backbone.py, modules.py) for the released configuration, on a
normalised 128-bin Kaldi fbank:

- Patches: a 16 x 16 stride-16 Conv2d without bias over (time, mel) gives tokens in TIME-major order
  (index t * 8 + f), then LayerNorm over the patch width (`embed_dim`, 512) and a Linear to the encoder
  width (768). Everything after this sees one flat token axis that mixes time and frequency.
- Convolutional position embedding: x + GELU(Conv1d(k=128, padding 64, groups=16)) along the token axis,
  the extra last step dropped (the reference's SamePad); the reference weight-normalises the conv over
  dim 2, folded here into a plain weight by `convert_state_dict`. Then the encoder's LayerNorm, before
  the first block (the release has layer_norm_first=False).
- Post-LN DeepNorm blocks: x = LN(alpha * x + attn(x)); x = LN(alpha * x + fc2(gelu(fc1(x)))), with
  alpha = (2 * layers) ** 0.25. No norm after the last block.
- Attention: softmax(q k^T / sqrt(d) + bias) v. The bias is a T5-style relative position table: the
  signed distance between two token indices falls into one of 320 buckets (160 per direction, exact
  below 80, log-spaced up to 800), and one Embedding(320, heads) serves all blocks. Each block scales it
  per head and query by a gate computed from the unscaled query q: (g_a, g_b) = sigmoid of the two
  4-sums of grep_linear(q), gate = g_a * (g_b * grep_a - 1) + 2. (The reference divides q by 32 and
  multiplies the max-shifted logits by 32 again, which leaves the softmax unchanged; not reproduced.)

This module's contract differs from the reference in layout only: it takes (n, 1, 128, W) spectrograms
in frequency x time layout and returns frequency-major tokens (index f * (W // 16) + t), as the
project's ViT encoder does; inside it computes in BEATs' own time-major order.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import attention, relative_gate
from ..conv import SpectralWeights, long_conv1d
from ..grid import resolve_layers
from ..linear import Linear

MEL_BINS = 128

# Every release uses these values; the others select code paths of the reference not implemented here.
RELEASE_ONLY = {"layer_norm_first": False, "deep_norm": True, "relative_position_embedding": True,
                "gru_rel_pos": True, "activation_fn": "gelu", "conv_bias": False}


@dataclass(frozen=True)
class BEATsConfig:
    """The checkpoint cfg entries the encoder depends on; defaults are BEATs_iter3's.

    Dropouts, layer drop and layer-wise gradient decay act only in training, and a fine-tuned file's
    classifier (finetuned_model, predictor_class) is not part of the encoder: none of them is kept.
    """
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    embed_dim: int = 512  # patch embedding width, before post_extract_proj
    input_patch_size: int = 16
    conv_pos: int = 128
    conv_pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    layer_norm_first: bool = False
    deep_norm: bool = True
    relative_position_embedding: bool = True
    gru_rel_pos: bool = True
    activation_fn: str = "gelu"
    conv_bias: bool = False

    def __post_init__(self):
        for key, supported in RELEASE_ONLY.items():
            if getattr(self, key) != supported:
                raise ValueError(f"BEATs cfg {key}={getattr(self, key)!r} is not supported "
                                 f"(every released checkpoint has {supported!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (type(value) is not int or value <= 0):
                raise ValueError(f"BEATs cfg {f.name}={value!r} is not a positive integer")
            if f.type == "bool" and type(value) is not bool:
                raise ValueError(f"BEATs cfg {f.name}={value!r} is not a bool")
        checks = [
            ("encoder_embed_dim", self.encoder_embed_dim % self.encoder_attention_heads == 0,
             f"not divisible by encoder_attention_heads={self.encoder_attention_heads}"),
            ("encoder_embed_dim", self.encoder_embed_dim % self.conv_pos_groups == 0,
             f"not divisible by conv_pos_groups={self.conv_pos_groups}"),
            ("input_patch_size", MEL_BINS % self.input_patch_size == 0, f"does not divide {MEL_BINS} mel bins"),
            ("num_buckets", self.num_buckets >= 4, "leaves no exact bucket"),
            ("max_distance", self.max_distance > self.num_buckets // 4,
             f"is not beyond the exact buckets (num_buckets // 4 = {self.num_buckets // 4})"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ValueError(f"BEATs cfg {key}={getattr(self, key)!r} {why}")

    @classmethod
    def from_cfg(cls, cfg: Mapping) -> "BEATsConfig":
        """From a checkpoint's `cfg` dict. Every entry must be there: the reference's class defaults
        differ from the release (e.g. max_distance 1280, no relative bias), so none is assumed."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"BEATs cfg must be a dict, not {type(cfg).__name__}")
        names = [f.name for f in fields(cls)]
        for name in names:
            if name not in cfg:
                raise ValueError(f"BEATs cfg has no {name!r}")
        return cls(**{name: cfg[name] for name in names})

    @property
    def freq_patches(self) -> int:
        return MEL_BINS // self.input_patch_size

    @property
    def deep_norm_alpha(self) -> float:
        return (2 * self.encoder_layers) ** 0.25


@functools.lru_cache(maxsize=32)
def relative_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """(length, length) bucket of each (query i, key j) token pair, from j - i, as the reference.

    Computed on the CPU in float32 like the reference (a truncated log: another device's log could move
    a boundary), then moved to `device`. Read-only: the cached tensor is shared, by inference and by
    training (an ordinary tensor, even when first made under torch.inference_mode()).
    """
    half = num_buckets // 2  # per direction; keys after the query use the upper half
    exact = half // 2  # distances below this have a bucket each
    with torch.inference_mode(False):
        position = torch.arange(length)
        relative = position[None, :] - position[:, None]  # (L, L): key - query
        distance = relative.abs()
        log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
        far = (exact + (log_ratio * (half - exact)).to(torch.long)).clamp(max=half - 1)
        bucket = torch.where(distance < exact, distance, far) + (relative > 0).to(torch.long) * half
        return bucket.to(device)


class GatedRelativeAttention(nn.Module):
    """Multi-head self-attention plus this block's gate on the shared relative position bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim)  # the reference's q_proj, k_proj, v_proj as one product
        self.out_proj = Linear(dim, dim)
        self.grep_linear = nn.Linear(dim // num_heads, 8)
        self.grep_a = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor, residual: torch.Tensor,
                mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x (n, L, D), position_bias (H, L, L) -> attention output + residual, (n, L, D). `mask` (n, H, L, L), if
        given, receives this block's gated bias where attention needs it whole (one buffer for all blocks)."""
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        gate = relative_gate(self.grep_linear(q), self.grep_a)  # (n, H, L, 1)
        x = attention(q, k, v, position_bias, gate, buffer=mask)  # (n, H, L, d)
        return self.out_proj(x.transpose(1, 2).reshape(n, length, dim), residual=residual)


class EncoderLayer(nn.Module):
    """Post-LN transformer block with DeepNorm's residual scale alpha."""

    def __init__(self, config: BEATsConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.alpha = config.deep_norm_alpha
        self.self_attn = GatedRelativeAttention(dim, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.self_attn_layer_norm(self.self_attn(x, position_bias, self.alpha * x, mask))
        # GELU in float32 as the reference's (torch computes a bfloat16 GELU in float32, as does oneDNN)
        return self.final_layer_norm(self.fc2(self.fc1(x, activation="gelu"), residual=self.alpha * x))


class TransformerEncoder(nn.Module):
    """Convolutional position embedding, its LayerNorm, the shared bias table and the blocks."""

    def __init__(self, config: BEATsConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        # A Sequential so the weights keep the reference's names (its Sequential is conv, SamePad, GELU).
        self.pos_conv = nn.Sequential(nn.Conv1d(dim, dim, config.conv_pos, padding=config.conv_pos // 2,
                                                groups=config.conv_pos_groups))
        self.pos_conv_spectra = SpectralWeights()
        self.layer_norm = nn.LayerNorm(dim)
        # _weight: no normal_ initialisation, which on the meta device imports triton (a crash beside TensorFlow)
        self.relative_attention_bias = nn.Embedding(config.num_buckets, config.encoder_attention_heads,
                                                    _weight=torch.empty(config.num_buckets,
                                                                        config.encoder_attention_heads))
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, x: torch.Tensor, layers: Sequence[int]) -> List[torch.Tensor]:
        """Time-major tokens (n, L, D) -> the states `layers` (0: entering block 0, k: out of block k)."""
        length = x.shape[1]
        position = long_conv1d(self.pos_conv[0], x.transpose(1, 2), self.pos_conv_spectra)  # (n, D, L + 1)
        position = F.gelu(position[..., :length])  # (n, D, L)
        x = self.layer_norm(x + position.transpose(1, 2))
        buckets = relative_buckets(length, self.num_buckets, self.max_distance, x.device)  # (L, L)
        # (H, L, L), made contiguous once: every block's gate multiplies it, 2.5x slower from the permuted view
        position_bias = self.relative_attention_bias(buckets).permute(2, 0, 1).contiguous()
        # (n, H, L, L): each block's gated bias, in one buffer (not when gradients are recorded: out= has none)
        mask = None if torch.is_grad_enabled() else x.new_empty(x.shape[0], *position_bias.shape)
        states = {0: x}
        for k, layer in enumerate(self.layers[:max(layers)], start=1):
            x = layer(x, position_bias, mask)
            if k in layers:
                states[k] = x
        return [states[k] for k in layers]


class BEATsEncoder(nn.Module):
    """(n, 1, 128, W) normalised fbank, frequency x time, W a multiple of 16 -> tokens per layer.

    `embed_dim` is the token width (the cfg's encoder_embed_dim).
    """
    num_prefix_tokens = 0
    pool = None  # no clip-level output

    def __init__(self, config: BEATsConfig):
        super().__init__()
        self.config = c = config
        self.depth = c.encoder_layers
        self.embed_dim = c.encoder_embed_dim
        self.patch_embedding = nn.Conv2d(1, c.embed_dim, c.input_patch_size, stride=c.input_patch_size, bias=False)
        self.layer_norm = nn.LayerNorm(c.embed_dim)
        # The reference has no projection (None) when the widths agree; Identity holds no weights either.
        self.post_extract_proj = (Linear(c.embed_dim, c.encoder_embed_dim)
                                  if c.embed_dim != c.encoder_embed_dim else nn.Identity())
        self.encoder = TransformerEncoder(c)

    def encode(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """x (n, 1, 128, W) -> [(n, gf * cols, D) frequency-major] for each layer in `layers`.

        Layer 0 is the input of the first block, k the output of block k, `depth` (the default, also -1)
        the final tokens.
        """
        indices = resolve_layers(layers, self.depth)
        patch = self.config.input_patch_size
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != MEL_BINS or x.shape[3] < patch or x.shape[3] % patch:
            raise ValueError(f"BEATs input must be (n, 1, {MEL_BINS}, W), W a positive multiple of {patch}, "
                             f"not {tuple(x.shape)}")
        n, cols, gf = x.shape[0], x.shape[3] // patch, self.config.freq_patches
        patches = self.patch_embedding(x.transpose(2, 3))  # (n, C, cols, gf): time on the height, as BEATs
        tokens = self.layer_norm(patches.flatten(2).transpose(1, 2))  # (n, cols * gf, C), index t * gf + f
        states = self.encoder(self.post_extract_proj(tokens), indices)  # each (n, cols * gf, D)
        return [s.view(n, cols, gf, -1).transpose(1, 2).reshape(n, gf * cols, -1) for s in states]
