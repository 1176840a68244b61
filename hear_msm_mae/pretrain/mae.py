"""MSM-MAE's pre-training model: a ViT masked autoencoder over patches of a log-mel spectrogram.

The encoder is the shared VisionTransformer (encoders/vit.py) with MSM-MAE's query/value biases
(families/msm_mae.py: `vit_config`); the light decoder reconstructs the masked patches. Parameter
names and shapes follow the official MSM-MAE checkpoints, so their state dicts load as they are. A
spectrogram unit (N, 1, F, T) is cut into (F/pf) x (T/pt) patches, ordered frequency-major: patch
index = f * (T/pt) + t.

Files: `MaskedAutoencoder.load` reads any MSM-MAE checkpoint (families/msm_mae.py reads its encoder;
the decoder's widths come from this package's stored config, else from the decoder's weights), and
`save` writes this package's layout {'model', 'config' (MAEConfig.to_dict), 'norm_stats', ...}.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..checkpoint import load_checkpoint, load_strict
from ..families import msm_mae
from ..family import Checkpoint
from ..encoders.vit import Block, ViTConfig, VisionTransformer


@dataclass(frozen=True)
class MAEConfig:
    encoder: ViTConfig = field(default_factory=msm_mae.vit_config)  # ViT-Base over 80 x 208 units
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    norm_pix_loss: bool = False  # per-patch normalised reconstruction targets

    def __post_init__(self):
        if self.encoder.qkv_bias != "qv" or self.encoder.num_prefix_tokens not in (0, 1) or \
                self.encoder.patch_stride != self.encoder.patch_size:
            raise ValueError(f"not an MSM-MAE encoder (query/value biases, 0 or 1 [CLS], side-by-side patches): "
                             f"{self.encoder}")
        if self.decoder_num_heads <= 0 or self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(f"decoder width {self.decoder_embed_dim} is not divisible by its "
                             f"{self.decoder_num_heads} heads")

    @property
    def use_cls_token(self) -> bool:
        return self.encoder.num_prefix_tokens == 1

    def to_dict(self) -> Dict[str, Any]:
        """The flat dict stored as a checkpoint's 'config' (msm_mae.STORED_ENCODER_FIELDS + the decoder's)."""
        e = self.encoder
        return {"input_size": list(e.input_size), "patch_size": list(e.patch_size), "embed_dim": e.embed_dim,
                "depth": e.depth, "num_heads": e.num_heads, "mlp_ratio": e.mlp_ratio,
                "use_cls_token": self.use_cls_token,
                **{k: v for k, v in asdict(self).items() if k != "encoder"}}

    @classmethod
    def from_dict(cls, stored: Dict[str, Any]) -> "MAEConfig":
        decoder = {f.name: stored[f.name] for f in fields(cls) if f.name != "encoder" and f.name in stored}
        return cls(encoder=msm_mae.stored_vit_config(stored), **decoder)


# Widths and depths by name: (encoder, decoder); heads = width / 64 as in ViT.
MODEL_SIZES = {
    "base": (dict(embed_dim=768, depth=12, num_heads=12), dict(decoder_embed_dim=384, decoder_depth=4,
                                                              decoder_num_heads=6)),
    "small": (dict(embed_dim=384, depth=12, num_heads=6), dict(decoder_embed_dim=256, decoder_depth=4,
                                                              decoder_num_heads=4)),
    "tiny": (dict(embed_dim=192, depth=12, num_heads=3), dict(decoder_embed_dim=128, decoder_depth=2,
                                                             decoder_num_heads=2)),
}


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim): sines of all frequencies, then cosines (MAE's layout)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: Tuple[int, int]) -> np.ndarray:
    """(gf * gt, dim) for a frequency-major patch grid: first half encodes time, second frequency."""
    gf, gt = grid_size
    time, freq = np.meshgrid(np.arange(gt, dtype=np.float32), np.arange(gf, dtype=np.float32))
    return np.concatenate([sincos_1d(dim // 2, time), sincos_1d(dim // 2, freq)], axis=1)


def sinusoid_table(n: int, dim: int) -> np.ndarray:
    """(n, dim) transformer sinusoid table: sin on even channels, cos on odd ones."""
    angles = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(dim)[None] // 2) / dim)
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return angles


def _with_cls_row(table: np.ndarray, use_cls_token: bool) -> torch.Tensor:
    if use_cls_token:
        table = np.concatenate([np.zeros((1, table.shape[1])), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def shuffle_order(mask: Optional[torch.Tensor], n: int, num_patches: int, device=None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, num_patches) patch indices, visible patches first: random, or from a given mask.

    With a mask (True/1 = masked) the order is `argsort(mask)` exactly as the reference computes
    it; the order within the visible set matters to the decoder of models without [CLS].
    """
    if mask is not None:
        return torch.argsort(mask.float(), dim=1)
    return torch.rand(n, num_patches, device=device, generator=generator).argsort(dim=1)


class MaskedAutoencoder(VisionTransformer):
    """MSM-MAE: the ViT encoder (query/value biases, optional [CLS]) and, unless `decoder=False`, the
    light decoder that reconstructs masked patches. The state dict keeps the official flat names."""

    def __init__(self, config: MAEConfig = MAEConfig(), decoder: bool = True):
        super().__init__(config.encoder)
        self.config = c = config
        self.has_decoder = decoder
        if decoder:
            self.decoder_embed = nn.Linear(c.encoder.embed_dim, c.decoder_embed_dim)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
            self.register_buffer("decoder_pos_embed", torch.zeros(1, int(c.use_cls_token) + c.encoder.num_patches,
                                                                  c.decoder_embed_dim))
            self.decoder_blocks = nn.ModuleList(Block(c.decoder_embed_dim, c.decoder_num_heads, c.encoder.mlp_ratio, "qv")
                                                for _ in range(c.decoder_depth))
            self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=1e-6)
            self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.encoder.patch_size[0] * c.encoder.patch_size[1])
        if not self.pos_embed.is_meta:  # a new model; one built on meta only receives loaded weights
            self._init_weights()

    def _init_weights(self):
        """MAE's initialisation: fixed sin-cos position tables, xavier-uniform linears and patch
        projection, N(0, 0.02) tokens."""
        c, e = self.config, self.config.encoder
        self.pos_embed.copy_(_with_cls_row(sincos_2d(e.embed_dim, e.grid_size), c.use_cls_token))
        if self.has_decoder:
            self.decoder_pos_embed.copy_(
                _with_cls_row(sinusoid_table(e.num_patches, c.decoder_embed_dim), c.use_cls_token))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for token in (self.cls_token, getattr(self, "mask_token", None)):
            if token is not None:
                nn.init.normal_(token, std=0.02)

    def patchify(self, lms: torch.Tensor) -> torch.Tensor:
        """(N, 1, F, T) -> (N, patches, pf * pt), pixels frequency-major within a patch."""
        n, _, f, t = lms.shape
        pf, pt = self.vit_config.patch_size
        x = lms.reshape(n, f // pf, pf, t // pt, pt).permute(0, 1, 3, 2, 4)
        return x.reshape(n, (f // pf) * (t // pt), pf * pt)

    def unpatchify(self, patches: torch.Tensor, frames: int) -> torch.Tensor:
        """(N, patches, pf * pt) -> (N, 1, F, frames)."""
        n = patches.shape[0]
        pf, pt = self.vit_config.patch_size
        gf, gt = self.vit_config.grid_size[0], frames // pt
        x = patches.reshape(n, gf, gt, pf, pt).permute(0, 1, 3, 2, 4)
        return x.reshape(n, 1, gf * pf, gt * pt)

    def forward_encoder(self, lms: torch.Tensor, ids_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 1, F, W) with W <= input width, a multiple of the patch width -> (N, [1 +] tokens, D).

        `ids_keep` (N, visible): the patches the encoder sees, in this order; all of them in
        patch order without it. The [CLS] token, where the model has one, is the first row.
        """
        return self.encode(lms, ids_keep=ids_keep)[0]

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoder output (N, [1 +] visible, D) -> (N, patches, pf * pt) predictions.

        `ids_restore` (N, patches): each patch's place in the shuffled order. As in the reference,
        the first encoder row is set aside as [CLS] even in models without one: there it drops a
        visible patch and shifts the rest one place along the shuffled order. The official
        checkpoints without [CLS] were trained that way, so their decoders expect it.
        """
        x = self.decoder_embed(latent)  # (N, [1 +] visible, Dd)
        n, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(n, num_patches + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], mask_tokens], dim=1)  # shuffled order
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # patch order
        if self.config.use_cls_token:
            tokens = torch.cat([x[:, :1], tokens], dim=1)
        x = tokens + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:] if self.config.use_cls_token else x

    def reconstruction_loss(self, lms: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches (per-patch normalised targets if configured)."""
        target = self.patchify(lms)
        if self.config.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # (N, patches)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, lms: torch.Tensor, mask_ratio: float = 0.75, mask: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None):
        """Full units (N, 1, F, T) -> (loss, predictions (N, patches, pf * pt), mask (N, patches)).

        The mask (1 = masked) is random with `mask_ratio`, or the given one.
        """
        n, num_patches = lms.shape[0], self.vit_config.num_patches
        ids_shuffle = shuffle_order(mask, n, num_patches, lms.device, generator)
        ids_restore = ids_shuffle.argsort(dim=1)
        num_keep = int((mask[0] == 0).sum()) if mask is not None else int(num_patches * (1 - mask_ratio))
        mask = (ids_restore >= num_keep).float()  # (N, patches), 1 = masked
        latent = self.forward_encoder(lms, ids_shuffle[:, :num_keep])
        pred = self.forward_decoder(latent, ids_restore)
        return self.reconstruction_loss(lms, pred, mask), pred, mask

    @classmethod
    def load(cls, path, decoder: bool = False, device="cpu", dtype: torch.dtype = torch.float32
             ) -> "MaskedAutoencoder":
        """Any MSM-MAE checkpoint file, with its decoder if asked for (an error if the file has none)."""
        return cls.from_checkpoint(load_checkpoint(path, msm_mae.FAMILY), decoder, device, dtype)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, decoder: bool = False, device="cpu",
                        dtype: torch.dtype = torch.float32) -> "MaskedAutoencoder":
        """An MSM-MAE checkpoint as read (checkpoint.load_checkpoint), with its decoder if asked for."""
        if checkpoint.family is not msm_mae.FAMILY:
            raise ValueError(f"{checkpoint.path}: a {checkpoint.family.title} checkpoint, not an MSM-MAE one")
        path, contents, weights = checkpoint.path, checkpoint.contents, msm_mae.weights(checkpoint.contents)
        if decoder and "decoder_embed.weight" not in weights:
            raise ValueError(f"{path}: has no decoder weights (an encoder-only checkpoint)")
        if isinstance(contents.get("config"), dict):
            config = MAEConfig.from_dict(contents["config"])
        elif "decoder_embed.weight" in weights:
            width = weights["decoder_embed.weight"].shape[0]
            depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("decoder_blocks."))
            config = MAEConfig(checkpoint.config, decoder_embed_dim=width, decoder_depth=depth,
                               decoder_num_heads=max(width // 64, 1),
                               norm_pix_loss=bool(getattr(contents.get("args"), "norm_pix_loss", False)))
        else:
            config = MAEConfig(checkpoint.config)
        with torch.device("meta"):
            model = cls(config, decoder=decoder)
        state = {**checkpoint.state_dict,
                 **({k: v for k, v in weights.items() if msm_mae.is_decoder_key(k)} if decoder else {})}
        return load_strict(model, state, f"{path} (configuration {config})", device, dtype)

    def save(self, path, *, norm_stats: Optional[Tuple[float, float]] = None, **extra: Any) -> None:
        """Write {'model', 'config', 'norm_stats', **extra} atomically (temporary file, then rename)."""
        state_dict = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        contents = {"model": state_dict, "config": self.config.to_dict(), **extra}
        if norm_stats is not None:
            contents["norm_stats"] = {"mean": float(norm_stats[0]), "std": float(norm_stats[1])}
        with atomic_write(Path(path)) as f:
            torch.save(contents, f)
