"""Pictures of what an MSM-MAE model reconstructs: input / masked input / reconstruction.

The reconstruction shows the decoder's predictions for the masked patches with the visible
patches pasted back, as in the MAE paper's figures.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import atomic_write
from .mae import MaskedAutoencoder


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, units: torch.Tensor, mask_ratio: float = 0.75, seed: int = 0):
    """Normalised units (N, 1, F, T) -> (loss, masked input, reconstruction), both (N, 1, F, T).

    Masked patches are NaN in the masked input. The mask is drawn from its own generator seeded
    with `seed`, so the same units get the same mask every time. A model trained with per-patch
    normalised targets predicts only each patch's shape: its patches are shown with their true mean
    and variance, as in the MAE paper's pictures.
    """
    generator = torch.Generator(device=units.device).manual_seed(seed)
    loss, pred, mask = model(units, mask_ratio=mask_ratio, generator=generator)  # pred (N, P, pf * pt)
    target = model.patchify(units)  # (N, P, pf * pt)
    pred = pred.float()
    if model.config.norm_pix_loss:  # predictions are per-patch normalised: undo with the true statistics
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    masked = mask.unsqueeze(-1).bool()  # (N, P, 1)
    frames = units.shape[-1]
    masked_input = model.unpatchify(target.masked_fill(masked, float("nan")), frames)
    reconstruction = model.unpatchify(torch.where(masked, pred, target), frames)
    return float(loss), masked_input, reconstruction


def save_reconstruction_png(path, model: MaskedAutoencoder, units: torch.Tensor, names: Sequence[str],
                            mask_ratio: float = 0.75, seed: int = 0, title: str = "") -> float:
    """Write a PNG with one row per unit (input | masked input | reconstruction); returns the loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    loss, masked_input, reconstruction = reconstruct(model, units, mask_ratio, seed)
    model.train(was_training)
    rows = units.shape[0]
    fig, axes = plt.subplots(rows, 3, figsize=(13, 1.9 * rows + 0.6), squeeze=False)
    low, high = float(units.min()), float(units.max())
    for row, name in enumerate(names):
        for col, (image, label) in enumerate(((units, "input"), (masked_input, "masked input"),
                                              (reconstruction, "reconstruction"))):
            ax = axes[row, col]
            ax.imshow(image[row, 0].cpu().numpy(), origin="lower", aspect="auto", vmin=low, vmax=high,
                      cmap="magma", interpolation="nearest")
            ax.set_title(f"{name}: {label}" if col == 0 else label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}  mask ratio {mask_ratio:g}, loss on masked patches {loss:.3f}".strip(), fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return loss


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("clips", nargs="+", type=Path, help="audio files (any format soundfile reads)")
    parser.add_argument("--checkpoint", required=True, help="MSM-MAE checkpoint with decoder weights")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--start", type=float, default=0.0, help="where the unit starts in each clip (s)")
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mask")


def run_visualize(args: argparse.Namespace) -> None:
    from ..audio import load_audio
    from ..checkpoint import load_checkpoint
    from ..frontend import build_frontend
    from .data import crop_unit

    if not 0 < args.mask_ratio < 1:
        raise SystemExit(f"error: --mask-ratio must be between 0 and 1, got {args.mask_ratio}")
    try:
        checkpoint = load_checkpoint(args.checkpoint, "msm_mae")
        model = MaskedAutoencoder.from_checkpoint(checkpoint, decoder=True).eval()
        mean, std = checkpoint.norm_stats or checkpoint.family.default_norm_stats
        frontend = build_frontend(checkpoint.frontend)
        start = round(args.start * frontend.sample_rate / frontend.hop_length)
        frames = checkpoint.config.input_size[1]
        units = []
        for clip in args.clips:
            lms = frontend(load_audio(clip, frontend.sample_rate).unsqueeze(0))[0].numpy()  # (80, T)
            if start >= lms.shape[1]:
                length_s = lms.shape[1] * frontend.hop_length / frontend.sample_rate
                raise ValueError(f"{clip}: --start {args.start} s is past its end ({length_s:.2f} s)")
            units.append(crop_unit(lms, start, frames, mean, std))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    loss = save_reconstruction_png(args.out, model, torch.stack(units), [c.name for c in args.clips],
                                   args.mask_ratio, args.seed, title=Path(args.checkpoint).name)
    print(f"wrote {args.out} (loss on masked patches {loss:.4f})")
