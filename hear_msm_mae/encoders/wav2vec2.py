"""wav2vec 2.0, HuBERT and WavLM as encoders of the engine, on torchaudio's model definitions.

The three share one architecture (torchaudio.models.wav2vec2_model; WavLM: wavlm_model), whose modules and
weights are built here, not written again; the forward pass of its transformer (`block`, `self_attention`) is
torchaudio's for inference, with the package's CPU kernels: attention by `attention` (oneDNN Graph's fused
kernel for long bfloat16 sequences), the position convolution by FFT (`long_conv1d`), the feature encoder
window by window, channels last: its first conv a product with the waveform's frames with its GroupNorm folded
into that product, the others packed products with their inputs' frames and their GELU
(`windowed_features`), the blocks' linears packed with their GELU and residual adds (`Linear`).

- Feature encoder: 7 convolutions (512 channels; kernels 10, 3, 3, 3, 3, 2, 2; strides 5, 2, 2, 2, 2, 2, 2),
  each followed by GELU. Base releases ("group_norm") normalise the first one with a GroupNorm per channel
  over the WHOLE input's time axis: a frame depends on every sample of the input it was computed with, so
  a window's frames differ from the whole clip's. Large releases ("layer_norm") normalise every conv output
  per frame: a frame depends only on its 400 samples. Frame t covers samples [320 t, 320 t + 400) (25 ms
  every 20 ms at 16 kHz); an input of W >= 400 samples gives (W - 400) // 320 + 1 frames.
- Feature projection: LayerNorm over the conv channels, Linear to the encoder width.
- Transformer: x + GELU(Conv1d(k=128, groups=16, weight-normed)(x)), the conv position embedding (the only
  positions of wav2vec 2.0 and HuBERT); post-LN blocks after a LayerNorm (Base), or pre-LN blocks and a final
  LayerNorm (Large). WavLM adds a T5-style relative position bias (one table, in block 0), gated in every
  block by its attention input (torchaudio's WavLMSelfAttention).

The engine's contract (grid.py): a unit (n, 1, 1, W) of W samples gives one token per frame, no prefix
tokens; the token grid's column is the receptive field (400 samples) every hop (320). Layers: 0 is the
transformer's input (after the position embedding, and its LayerNorm in post-LN models: Hugging Face's
hidden_states[0]), k the output of block k, and `depth` the final output (after the final LayerNorm of
pre-LN models: their last_hidden_state, the last hidden state of transformers 4.x).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchaudio.models import wav2vec2_model, wavlm_model
from torchaudio.models.wav2vec2.components import EncoderLayer, SelfAttention, Transformer

from ..attention import attention, relative_gate
from ..conv import SpectralWeights, conv_matrices, frames_product, group_norm_folded, long_conv1d, strided_frames
from ..grid import TokenGrid, resolve_layers
from ..linear import Linear, WeightCache, linear, packable, packed_linear, packed_weight

RELEASE_CONV_LAYERS = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2  # every release's feature encoder
CONV_SAMPLES = 1 << 18  # samples per feature-encoder call (16 s at 16 kHz): its activations are 512 x samples / 5
FEATURE_WINDOW = 64  # frames per window of the feature encoder at CPU inference (windowed_features) ...
WINDOWS_PER_CALL = 4  # ... and windows per call: a first-layer activation of 17 MB in bfloat16
WINDOWED_FEATURES = True  # (the benchmarks switch it off: the modules over whole inputs)
FLOAT32_STREAM = True  # the blocks' residual stream in float32 when they compute in bfloat16/float16 (block)


@dataclass(frozen=True)
class Wav2Vec2Config:
    """The architecture of a wav2vec 2.0, HuBERT or WavLM encoder (inference only); defaults: the Base releases."""
    conv_layers: Tuple[Tuple[int, int, int], ...] = RELEASE_CONV_LAYERS  # (channels, kernel, stride) per conv
    extractor_mode: str = "group_norm"  # "group_norm" (Base: first conv, over the input) or "layer_norm" (Large)
    conv_bias: bool = False
    embed_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_first: bool = False  # pre-LN blocks and a final LayerNorm (Large); False: post-LN (Base)
    num_buckets: int = 0  # WavLM's relative position bias (320 buckets up to 800 frames); 0: none
    max_distance: int = 0

    def __post_init__(self):
        if self.extractor_mode not in ("group_norm", "layer_norm"):
            raise ValueError(f"extractor_mode must be 'group_norm' or 'layer_norm', got {self.extractor_mode!r}")
        if not self.conv_layers or any(len(c) != 3 or any(type(v) is not int or v < 1 for v in c)
                                       for c in self.conv_layers):
            raise ValueError(f"conv_layers must be (channels, kernel, stride) triples of positive integers, got "
                             f"{self.conv_layers!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (type(value) is not int or value < (0 if f.name in ("num_buckets",
                                                                                      "max_distance") else 1)):
                raise ValueError(f"{f.name}={value!r} is not a positive integer")
        for name, divisor in (("num_heads", self.num_heads), ("pos_conv_groups", self.pos_conv_groups)):
            if self.embed_dim % divisor:
                raise ValueError(f"embed_dim={self.embed_dim} is not divisible by {name}={divisor}")
        if (self.num_buckets == 0) != (self.max_distance == 0):
            raise ValueError("give both num_buckets and max_distance (WavLM), or neither")

    @property
    def relative_attention(self) -> bool:
        """WavLM's gated relative position bias."""
        return self.num_buckets > 0

    @property
    def hop(self) -> int:
        """Samples between frames (320)."""
        hop = 1
        for _, _, stride in self.conv_layers:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples one frame sees (400)."""
        field, step = 1, 1
        for _, kernel, stride in self.conv_layers:
            field, step = field + (kernel - 1) * step, step * stride
        return field

    def token_grid(self, unit_samples: int) -> TokenGrid:
        """Units of `unit_samples` samples: one column per frame, one token per column."""
        if unit_samples < self.receptive_field or (unit_samples - self.receptive_field) % self.hop:
            raise ValueError(f"unit_frames (samples) must be {self.receptive_field} + a multiple of {self.hop} "
                             f"(whole frames), got {unit_samples}")
        return TokenGrid(unit_frames=unit_samples, patch_frames=self.receptive_field, column_stride=self.hop,
                         freq_patches=1, num_prefix_tokens=0, embed_dim=self.embed_dim)


class Wav2Vec2Encoder(nn.Module):
    """(n, 1, 1, W) waveform units, W >= 400 samples -> tokens (n, (W - 400) // 320 + 1, D) per layer.

    Holds the feature encoder and encoder of torchaudio's Wav2Vec2Model (its names: feature_extractor.*,
    encoder.feature_projection.*, encoder.transformer.*); dropouts are 0 and layer drop off.
    """
    num_prefix_tokens = 0
    pool = None  # no clip-level output
    conv_layouts: Optional[WeightCache] = None  # pack(): oneDNN layouts of conv_matrices

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.config = c = config
        self.depth = c.num_layers
        arguments = dict(extractor_mode=c.extractor_mode, extractor_conv_layer_config=list(c.conv_layers),
                         extractor_conv_bias=c.conv_bias, encoder_embed_dim=c.embed_dim,
                         encoder_projection_dropout=0.0, encoder_pos_conv_kernel=c.pos_conv_kernel,
                         encoder_pos_conv_groups=c.pos_conv_groups, encoder_num_layers=c.num_layers,
                         encoder_num_heads=c.num_heads, encoder_attention_dropout=0.0,
                         encoder_ff_interm_features=c.ffn_dim, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
                         encoder_layer_norm_first=c.layer_norm_first, encoder_layer_drop=0.0, aux_num_out=None)
        # torchaudio weight-normalises the position conv as it builds it: on the meta device (where the engine builds
        # encoders) that computation loads torch._dynamo and triton, which crash a process that imported TensorFlow
        # first (hear-validator, heareval). So it is built on the CPU, then moved to the device of the caller.
        device = torch.empty(0).device
        with torch.device("cpu"):
            model = (wavlm_model(**arguments, encoder_num_buckets=c.num_buckets, encoder_max_distance=c.max_distance)
                     if c.relative_attention else wav2vec2_model(**arguments))
            for layer in model.encoder.transformer.layers:  # the blocks' products, packable (linear.py)
                module = layer.attention
                if isinstance(module, SelfAttention):
                    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                        setattr(module, name, as_linear(getattr(module, name)))
                else:
                    module.attention = Projections(module.attention)
                for name in ("intermediate_dense", "output_dense"):
                    setattr(layer.feed_forward, name, as_linear(getattr(layer.feed_forward, name)))
        self.feature_extractor, self.encoder = model.feature_extractor.to(device), model.encoder.to(device)
        self.pos_conv_spectra = SpectralWeights()
        self.conv_matrices = WeightCache(conv_matrices)  # the feature encoder's convs after the first

    def encode(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """x (n, 1, 1, W) -> [(n, frames, D)] for each layer of `layers` (0: the transformer's input, k: block k's
        output, `depth` (the default, also -1): the final output)."""
        indices = resolve_layers(layers, self.depth)
        field = self.config.receptive_field
        if x.dim() != 4 or x.shape[1:3] != (1, 1) or x.shape[3] < field:
            raise ValueError(f"waveform units must be (n, 1, 1, W) with W >= {field} samples, not {tuple(x.shape)}")
        waves = x.flatten(1)  # (n, W)
        features = self.features(waves)  # (n, T, C)
        transformer = self.encoder.transformer
        h = self.position(transformer, self.encoder.feature_projection(features))  # (n, T, D)
        dtype = h.dtype
        if FLOAT32_STREAM and dtype in (torch.bfloat16, torch.float16):
            h = h.float()  # the residual stream (block)
        states = {0: h} if 0 in indices else {}
        position_bias = None  # WavLM: block 0's relative position bias (H, T, T), passed on ungated to later blocks
        n, length = h.shape[:2]  # WavLM: every block's gated bias (n, H, T, T) in one buffer (not when gradients
        gated = h.new_empty(n, self.config.num_heads, length, length, dtype=dtype) \
            if self.config.relative_attention and not torch.is_grad_enabled() else None  # are recorded)
        for k, layer in enumerate(transformer.layers[:max(indices)], start=1):
            h, position_bias = block(layer, h, position_bias, gated)
            if k in indices:
                states[k] = h
        if self.config.layer_norm_first and self.depth in states:
            states[self.depth] = layer_norm(transformer.layer_norm, states[self.depth])
        return [states[k] for k in indices]

    def features(self, waves: torch.Tensor) -> torch.Tensor:
        """torchaudio's FeatureExtractor.forward: waves (n, W) -> (n, T, C); each layer conv, its norm (if any),
        GELU. On the CPU at inference, window by window (`windowed_features`); else a bounded batch of inputs
        at a time through the modules."""
        if WINDOWED_FEATURES and waves.device.type == "cpu" and not torch.is_grad_enabled():
            return self.windowed_features(waves)
        per_call = max(1, CONV_SAMPLES // waves.shape[1])  # bounded conv activations, whatever the batch
        layers = self.feature_extractor.conv_layers
        return torch.cat([convolve(layers, x[:, None]).transpose(1, 2) for x in waves.split(per_call)])

    def pack(self) -> None:
        """For CPU inference: the feature encoder's convolutions after the first, as (C_out, K C_in) matrices,
        laid out for oneDNN (windowed_features; caches remade when the weights change, as every packed weight)."""
        if self.conv_layouts is None:  # keyed, as the matrices, on the conv weights themselves
            self.conv_layouts = WeightCache(conv_layouts)

    def windowed_features(self, waves: torch.Tensor) -> torch.Tensor:
        """The feature encoder (CPU, inference) over windows of FEATURE_WINDOW frames, WINDOWS_PER_CALL at a time,
        channels last: waves (n, W) -> (n, T, C).

        The convolutions are unpadded, so frame t depends only on its own samples [320 t, 320 t + 400), and a
        window of frames is computed from its samples alone (neighbouring windows' samples overlap by 80). Every
        activation is then a few MB, in cache, never one of the whole input's fresh 33-MB tensors, each of which
        cost its page faults (1.13x the whole feature encoder, measured at 10-s units). What the windows cannot
        see is the Base releases' GroupNorm after the first convolution, over each input's whole time axis: it
        is folded into that convolution per input, from the input's frame statistics (conv.group_norm_folded).
        The first convolution is a product with the frames (conv.frames_product), its GELU in place; the others
        are products of their weight matrices with their input frames side by side (conv.strided_frames), by
        oneDNN with the GELU inside once packed (pack()); Large releases' LayerNorm (per frame) comes between."""
        c = self.config
        layers = self.feature_extractor.conv_layers
        first, norm = layers[0].conv, layers[0].layer_norm
        weights = [layer.conv.weight for layer in layers[1:]]
        matrices = self.conv_matrices.get(*weights)  # (C_out, K C_in) each
        layouts = self.conv_layouts.get(*weights) if self.conv_layouts is not None and packable(waves, matrices[0]) \
            else [None] * len(matrices)
        n, samples = waves.shape
        frames = (samples - c.receptive_field) // c.hop + 1
        if isinstance(norm, nn.GroupNorm):  # per input (n, C, K), (n, C)
            weight, bias = group_norm_folded(first, norm, waves[:, None])
        else:
            weight = first.weight[:, 0].expand(n, -1, -1)
            bias = None if first.bias is None else first.bias.expand(n, -1)
        out = waves.new_empty(n, frames, c.conv_layers[-1][0])  # (n, T, C)
        starts = range(0, frames, FEATURE_WINDOW)  # windows of equal length in a call: the full ones, then the last
        windows = [(b, t) for t in starts[:-1] for b in range(n)], [(b, starts[-1]) for b in range(n)]
        for same_length in windows:
            for i in range(0, len(same_length), WINDOWS_PER_CALL):
                call = same_length[i:i + WINDOWS_PER_CALL]
                length = min(FEATURE_WINDOW, frames - call[0][1])  # frames per window
                span = c.hop * (length - 1) + c.receptive_field  # samples per window
                x = torch.stack([waves[b, c.hop * t:c.hop * t + span] for b, t in call])[:, None]  # (w, 1, span)
                clips = torch.tensor([b for b, _ in call])
                x = frames_product(x, weight[clips], None if bias is None else bias[clips],
                                   first.stride[0])  # (w, frames of the first conv, C)
                if norm is not None and not isinstance(norm, nn.GroupNorm):
                    x = layer_norm(norm, x)
                x = torch.ops.aten.gelu_(x)
                for layer, matrix, layout in zip(layers[1:], matrices, layouts):
                    x = strided_frames(x, layer.conv.kernel_size[0], layer.conv.stride[0]).contiguous()
                    gelu = "gelu" if layer.layer_norm is None else None  # else: LayerNorm, then GELU
                    x = linear(x, matrix, layer.conv.bias, activation=gelu) if layout is None else \
                        packed_linear(x, layout, layer.conv.bias, activation=gelu)  # (w, frames, C)
                    if layer.layer_norm is not None:
                        x = torch.ops.aten.gelu_(layer_norm(layer.layer_norm, x))
                for (b, t), window in zip(call, x):  # (length, C)
                    out[b, t:t + length] = window
        return out

    def position(self, transformer: Transformer, x: torch.Tensor) -> torch.Tensor:
        """torchaudio's Transformer._preprocess: x + GELU(conv(x)) (the conv's last output dropped for an even
        kernel), then the LayerNorm of post-LN models (its flag is inverted there: set for them)."""
        embedding = transformer.pos_conv_embed
        position = long_conv1d(embedding.conv, x.transpose(1, 2), self.pos_conv_spectra)  # (n, D, T + 1 - K % 2)
        x = x + F.gelu(position[..., :x.shape[1]]).transpose(1, 2)
        return transformer.layer_norm(x) if transformer.layer_norm_first else x


def conv_layouts(*weights: torch.Tensor) -> List[torch.Tensor]:
    """oneDNN's layouts of conv_matrices(*weights)."""
    return [packed_weight(matrix) for matrix in conv_matrices(*weights)]


def convolve(layers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """torchaudio's ConvLayerBlocks in turn: x (n, C_in, T) -> (n, C, frames); each its conv, its norm (if any),
    GELU (in place without gradients: a fresh output's pages cost more than the GELU)."""
    for layer in layers:
        x = layer.conv(x)
        if layer.layer_norm is not None:
            x = layer.layer_norm(x)
        x = F.gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x)
    return x


def block(layer: EncoderLayer, x: torch.Tensor, position_bias: Optional[torch.Tensor],
          gated: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """torchaudio's EncoderLayer.forward at inference (no masks, no dropout): x (n, T, D) -> (n, T, D), the
    feed-forward's GELU inside its product. `gated`: see self_attention.

    x is the residual stream: in the blocks' dtype, the residual adds happen inside the products; in float32
    while they compute in a lower precision (encode), the adds and norms are float32 and only the products'
    inputs are rounded to it. A post-LN stream rounded to bfloat16 at every norm is most of a bfloat16
    model's error: on benchmarks/inference.py's HuBERT Base, frames' min cosine to float32 0.99988 -> 0.99994,
    for 1.2% of the call (the three Base releases are post-LN)."""
    ff, dtype = layer.feed_forward, layer.feed_forward.intermediate_dense.weight.dtype
    inside = x.dtype == dtype

    def add(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:  # x + branch, unless added inside its product
        return branch if inside else x + branch
    if layer.layer_norm_first:  # x + attention(LN(x)), then x + FF(LN(x))
        a, position_bias = self_attention(layer.attention, layer_norm(layer.layer_norm, x).to(dtype), position_bias,
                                          x if inside else None, gated)
        x = add(x, a)
        y = ff.intermediate_dense(layer_norm(layer.final_layer_norm, x).to(dtype), activation="gelu")
        return add(x, ff.output_dense(y, residual=x if inside else None)), position_bias
    a, position_bias = self_attention(layer.attention, x.to(dtype), position_bias, x if inside else None, gated)
    x = layer_norm(layer.layer_norm, add(x, a))  # LN(x + attention(x)), then LN(x + FF(x))
    y = ff.intermediate_dense(x.to(dtype), activation="gelu")
    return layer_norm(layer.final_layer_norm, add(x, ff.output_dense(y, residual=x if inside else None))), position_bias


def layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm module's normalisation of x's last dimension, with its weights in x's dtype: the blocks' norms
    (the float32 stream's in float32) and the feature encoder's on channels-last windows (torchaudio's module
    transposes (n, C, T) inputs)."""
    return F.layer_norm(x, module.normalized_shape, module.weight.to(x.dtype), module.bias.to(x.dtype), module.eps)


def self_attention(module: nn.Module, x: torch.Tensor, position_bias: Optional[torch.Tensor],
                   residual: Optional[torch.Tensor], gated: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """torchaudio's SelfAttention, or WavLMSelfAttention with its gated relative bias, at inference:
    x (n, T, D) -> residual + attention (n, T, D) (attention alone if residual is None) and the ungated bias
    (H, T, T) for the next block (WavLM; else None).

    WavLM's bias is made by block 0 from its table and repeated over the batch there; here it is kept once,
    (H, T, T), and broadcast in each block's gate: the same values, without n copies. The gated bias
    (n, H, T, T) is written into `gated` if given, where attention needs it whole.
    """
    n, length, dim = x.shape
    heads = module.num_heads
    if isinstance(module, SelfAttention):
        q, k, v = (proj(x).view(n, length, heads, -1).transpose(1, 2) for proj in
                   (module.q_proj, module.k_proj, module.v_proj))  # (n, H, T, d) each
        out = attention(q, k, v)
        return module.out_proj(out.transpose(1, 2).reshape(n, length, dim), residual=residual), None
    if position_bias is None:
        position_bias = module.compute_bias(length, length).contiguous()  # (H, T, T)
    gate = None
    if module.gru_rel_pos:  # the gate, from this block's input per head
        logits = module.gru_rel_pos_linear(x.view(n, length, heads, -1).transpose(1, 2))  # (n, H, T, 8)
        gate = relative_gate(logits, module.gru_rel_pos_const)  # (n, H, T, 1)
    projected = module.attention(x)  # (n, T, 3D)
    q, k, v = projected.view(n, length, 3, heads, -1).permute(2, 0, 3, 1, 4)  # (n, H, T, d) each
    out = attention(q, k, v, position_bias, gate, buffer=gated)
    return module.attention.out_proj(out.transpose(1, 2).reshape(n, length, dim), residual=residual), position_bias


def as_linear(module: nn.Linear) -> Linear:
    """The package's Linear in place of torchaudio's nn.Linear: the same weights and names, packed for the CPU."""
    new = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                 device=module.weight.device, dtype=module.weight.dtype)
    new.load_state_dict(module.state_dict())
    return new


class Projections(nn.Module):
    """WavLM's nn.MultiheadAttention as its forward pass here uses it, under the same names: in_proj_weight and
    in_proj_bias (q, k and v stacked) as one packable product, and out_proj."""

    packed: Optional[WeightCache] = None  # pack(): oneDNN's layout of in_proj_weight

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.in_proj_weight, self.in_proj_bias = attention.in_proj_weight, attention.in_proj_bias
        self.out_proj = as_linear(attention.out_proj)

    def pack(self) -> None:
        if self.packed is None:
            self.packed = WeightCache(packed_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, T, D) -> q, k, v side by side (n, T, 3D)."""
        return linear(x, self.in_proj_weight, self.in_proj_bias, self.packed)
