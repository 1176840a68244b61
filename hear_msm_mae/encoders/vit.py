"""One Vision Transformer over spectrogram patches: the encoder of MSM-MAE, M2D, Audio-MAE, AST and ATST.

Input: a normalised spectrogram unit (n, 1, F, W), F frequency bins x W time frames. Patches of
(pf, pt) bins x frames are taken every (sf, st) (a stride below the patch size overlaps them, as in
AST), making a grid of gf x cols patches, gf = (F - pf) // sf + 1, cols = (W - pt) // st + 1. Tokens
are frequency-major (patch (f, t) is token f * cols + t) and follow `num_prefix_tokens` prefix tokens
([CLS]; AST adds a distillation token). A reference that orders its tokens time-major (Audio-MAE) is
loaded by transposing its patch projection and permuting its position table: every layer treats the
tokens as a set, so the outputs are the same tokens in another order.

The position table `pos_embed` (1, prefix + gf * cols_full, D) belongs to the full unit of
`input_size`; a narrower unit uses the first `cols` columns of every frequency row (as M2D's runtime
does for its last unit). Tables are read from the checkpoint, never recomputed.

What differs between the families is a flag here: query/value biases with a zero key bias ("qv",
MSM-MAE), one fused qkv bias ("qkv") or none ("none", ATST); the prefix tokens; the final LayerNorm
(Audio-MAE's fine-tuned files have none), applied to the final output only or to every block output
that is read (`norm_every_block`: ATST norms its intermediate layers); the clip-level output `pool`:
"prefix" = mean of the prefix tokens of the final output (AST's (cls + dist) / 2), "patches" = fc_norm
of the mean of the patch tokens (Audio-MAE fine-tuned).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..attention import attention
from ..grid import TokenGrid, resolve_layers
from ..linear import Linear


@dataclass(frozen=True)
class ViTConfig:
    input_size: Tuple[int, int] = (80, 208)  # (bins, frames) of one full unit
    patch_size: Tuple[int, int] = (16, 16)  # (bins, frames) of one patch
    patch_stride: Optional[Tuple[int, int]] = None  # (bins, frames) between patches; None: the patch size
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: str = "qkv"  # "qkv": one fused bias; "qv": query and value biases, zero key bias; "none"
    num_prefix_tokens: int = 0  # 0, 1 ([CLS]) or 2 ([CLS], distillation)
    final_norm: bool = True
    norm_every_block: bool = False  # the final norm applied to every block output read (layers 1..depth)
    pool: Optional[str] = None  # clip-level output: None, "prefix" or "patches" (see the module docstring)
    pos_embed_cut: str = "first"  # a narrower unit's columns of the table: the "first" ones or the "middle" (AST)
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("input_size", "patch_size", "patch_stride"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.patch_stride is None:
            object.__setattr__(self, "patch_stride", self.patch_size)
        for size, patch, stride, what in zip(self.input_size, self.patch_size, self.patch_stride, ("bins", "frames")):
            if not 0 < stride <= patch <= size:
                raise ValueError(f"patch {self.patch_size} with stride {self.patch_stride} does not fit the input "
                                 f"size {self.input_size} ({what})")
            if stride == patch and size % patch:
                raise ValueError(f"patch size {self.patch_size} does not divide input size {self.input_size} ({what})")
        if self.num_heads <= 0 or self.embed_dim % self.num_heads:
            raise ValueError(f"width {self.embed_dim} is not divisible by its {self.num_heads} heads")
        if self.qkv_bias not in ("qkv", "qv", "none"):
            raise ValueError(f"qkv_bias must be 'qkv', 'qv' or 'none', got {self.qkv_bias!r}")
        if self.norm_every_block and not self.final_norm:
            raise ValueError("norm_every_block needs the final norm")
        if self.num_prefix_tokens not in (0, 1, 2):
            raise ValueError(f"num_prefix_tokens must be 0, 1 or 2, got {self.num_prefix_tokens}")
        if self.pool not in (None, "prefix", "patches") or (self.pool == "prefix" and not self.num_prefix_tokens):
            raise ValueError(f"pool must be None, 'patches' or 'prefix' (with prefix tokens), got {self.pool!r}")
        if self.pos_embed_cut not in ("first", "middle"):
            raise ValueError(f"pos_embed_cut must be 'first' or 'middle', got {self.pos_embed_cut!r}")

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patches along (frequency, time) in a full unit."""
        return tuple((size - patch) // stride + 1
                     for size, patch, stride in zip(self.input_size, self.patch_size, self.patch_stride))

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def token_grid(self) -> TokenGrid:
        return TokenGrid(unit_frames=self.input_size[1], patch_frames=self.patch_size[1],
                         column_stride=self.patch_stride[1], freq_patches=self.grid_size[0],
                         num_prefix_tokens=self.num_prefix_tokens, embed_dim=self.embed_dim)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def config_from_weights(path, weights: Dict[str, torch.Tensor], *, n_bins: int,
                        input_size: Optional[Tuple[int, int]] = None, **fields) -> ViTConfig:
    """A ViTConfig read off a state dict in this package's names: patch size, width, depth, MLP ratio and
    heads (width / 64, as in nearly every released model); the input size, unless given, is `n_bins` bins by the
    frames that the position table's patch rows cover. `fields`: the family's other ViTConfig fields
    (num_prefix_tokens, qkv_bias, num_heads where a release's heads are not 64 wide, ...). Errors name `path`."""
    for key in ("patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in weights:
            raise ValueError(f"{path}: no {key!r} among the encoder's weights (they start with {sorted(weights)[:5]})")
    embed_dim, _, pf, pt = weights["patch_embed.proj.weight"].shape
    num_patches = weights["pos_embed"].shape[1] - fields.get("num_prefix_tokens", 0)
    if input_size is None:
        gf = n_bins // pf
        if num_patches % gf:
            raise ValueError(f"{path}: {num_patches} patches do not fit {gf} frequency patches of {pf} bins")
        input_size = (n_bins, num_patches // gf * pt)
    depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    try:
        config = ViTConfig(input_size=input_size, patch_size=(pf, pt), embed_dim=embed_dim, depth=depth,
                           mlp_ratio=weights["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
                           **{"num_heads": embed_dim // 64, **fields})
    except ValueError as e:
        raise ValueError(f"{path}: inconsistent model configuration: {e}") from None
    if config.num_patches != num_patches:
        raise ValueError(f"{path}: input size {config.input_size} with patches {config.patch_size} makes "
                         f"{config.num_patches} patches, but pos_embed has {num_patches}")
    return config


class Attention(nn.Module):
    """Multi-head self-attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: str):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        if qkv_bias == "qv":  # MSM-MAE: learned query and value biases, the key bias fixed at zero
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(n, tokens, dim) -> (n, tokens, dim), plus `residual` if given."""
        n, tokens, dim = x.shape
        bias = None if self.q_bias is None else torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = self.qkv(x, bias=bias)  # (n, tokens, 3 * dim)
        q, k, v = qkv.view(n, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v)  # (n, heads, tokens, head_dim)
        return self.proj(x.transpose(1, 2).reshape(n, tokens, dim), residual=residual)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fc2(self.fc1(x, activation="gelu"), residual=residual)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: str = "qkv", eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x), residual=x)
        return self.mlp(self.norm2(x), residual=x)


class PatchEmbed(nn.Module):
    """(N, 1, F, W) -> (N, gf * cols, D), frequency-major."""

    def __init__(self, patch_size: Tuple[int, int], stride: Tuple[int, int], embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """The encoder; `encode` maps normalised units to tokens, `pooled` tokens to a clip-level output."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.vit_config = c = config
        self.num_prefix_tokens, self.depth, self.pool = c.num_prefix_tokens, c.depth, c.pool
        self.patch_embed = PatchEmbed(c.patch_size, c.patch_stride, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.num_prefix_tokens >= 1 else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim)) if c.num_prefix_tokens == 2 else None
        self.register_buffer("pos_embed", torch.zeros(1, c.num_prefix_tokens + c.num_patches, c.embed_dim))
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.norm_eps)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if c.final_norm else None
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps) if c.pool == "patches" else None

    def patch_pos_embed(self, columns: int) -> torch.Tensor:
        """(1, gf * columns, D): the patch rows of the position table, cut to `columns` columns: the first ones,
        or the middle ones (AST's rule for a shorter input: columns gt // 2 - columns // 2 onwards)."""
        gf, gt = self.vit_config.grid_size
        if columns > gt:
            raise ValueError(f"a unit of {columns} patch columns is wider than the position table ({gt} columns)")
        start = gt // 2 - columns // 2 if self.vit_config.pos_embed_cut == "middle" else 0
        table = self.pos_embed[:, self.num_prefix_tokens:]
        return table.reshape(1, gf, gt, -1)[:, :, start:start + columns].reshape(1, gf * columns, -1)

    def embed(self, x: torch.Tensor, ids_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 1, F, W) -> (N, prefix + patches, D): patch embeddings plus positions, prefix tokens first.

        `ids_keep` (N, visible): only these patches, in this order (MAE's masking)."""
        _, _, _, width = x.shape
        pf, pt = self.vit_config.patch_size
        columns = (width - pt) // self.vit_config.patch_stride[1] + 1
        x = self.patch_embed(x) + self.patch_pos_embed(columns)  # (N, gf * columns, D)
        if ids_keep is not None:
            x = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1) + self.pos_embed[:, :self.num_prefix_tokens]
            x = torch.cat([tokens.expand(x.shape[0], -1, -1), x], dim=1)
        return x

    def encode(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None,
               ids_keep: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Normalised units (N, 1, F, W) -> one (N, prefix + patches, D) tensor per layer in `layers`.

        Layer 0 is the embedded input, k the output of block k; the last layer (`depth`, the default)
        is the final output, after the final norm where the model has one (with `norm_every_block`, every
        block's output is normed).
        """
        wanted = resolve_layers(layers, self.depth)
        x = self.embed(x, ids_keep)
        outputs = {0: x}
        for k, block in enumerate(self.blocks, 1):
            if k > max(wanted):
                break
            x = block(x)
            outputs[k] = x
        if self.norm is not None:
            for k in set(wanted):
                if k == self.depth or (k > 0 and self.vit_config.norm_every_block):
                    outputs[k] = self.norm(outputs[k])
        return [outputs[layer] for layer in wanted]

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final-layer tokens (N, prefix + patches, D) -> the clip-level output (N, D) of `config.pool`."""
        if self.vit_config.pool == "prefix":
            return tokens[:, :self.num_prefix_tokens].mean(dim=1)
        if self.vit_config.pool == "patches":
            return self.fc_norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))
        raise ValueError("this model has no clip-level output (pool); use the mean of its frame embeddings")
