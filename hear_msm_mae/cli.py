"""The `hear-msm-mae` command: embed audio files, pre-train, visualise reconstructions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .families import FAMILIES


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="audio files (any format soundfile reads)")
    parser.add_argument("--checkpoint", default="", help="checkpoint of any family, or an official checkpoint name "
                        "(hear_msm_mae.releases; default: the bundled MSM-MAE)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default=None,
                        help="the checkpoint's model family (default: detected from the file)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the .npy files")
    parser.add_argument("--kind", choices=["scene", "timestamp", "both"], default="both")
    parser.add_argument("--mode", choices=["default", "reference"], default="default")
    parser.add_argument("--hop-ms", type=float, default=None, help="timestamp embedding hop (ms; default: the "
                        "family's, 40 ms for most)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: GPU if there is one)")
    parser.add_argument("--options", default="{}", help="other model options as JSON, e.g. "
                        "'{\"layers\": [-4, -3, -2, -1], \"freq_pool\": \"mean\"}'")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array)


def run_embed(args: argparse.Namespace) -> None:
    """Write <stem>.scene.npy (D,), <stem>.timestamp.npy (n, D) and <stem>.timestamps_ms.npy (n,)."""
    from tqdm import tqdm

    from .api import get_scene_embeddings, get_timestamp_embeddings, load_model
    from .audio import load_audio
    from .download import DownloadError
    from .families.msm_mae import default_checkpoint

    stems = {}
    for path in args.files:
        if not path.is_file():
            raise SystemExit(f"error: audio file not found: {path}")
        if path.stem in stems:
            raise SystemExit(f"error: {stems[path.stem]} and {path} would write the same output names")
        stems[path.stem] = path
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError(f"--options must be a JSON object, got {args.options!r}")
        model = load_model(args.checkpoint or default_checkpoint(), args.device, args.family, mode=args.mode,
                           timestamp_hop_ms=args.hop_ms, dtype=args.dtype, **options)
    except (ValueError, TypeError, FileNotFoundError, DownloadError) as e:
        raise SystemExit(f"error: {e}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    for stem, path in tqdm(stems.items(), desc="embedding", unit="file"):
        try:
            audio = load_audio(path, model.sample_rate).unsqueeze(0).to(model.device)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        if args.kind in ("scene", "both"):
            scene = get_scene_embeddings(audio, model)
            save_npy(args.out / f"{stem}.scene.npy", scene[0].cpu().numpy())
        if args.kind in ("timestamp", "both"):
            frames, times = get_timestamp_embeddings(audio, model)
            save_npy(args.out / f"{stem}.timestamp.npy", frames[0].cpu().numpy())
            save_npy(args.out / f"{stem}.timestamps_ms.npy", times[0].cpu().numpy())
    info = {"checkpoint": str(args.checkpoint or "bundled default"), "family": model.family.name,
            "mode": args.mode, "hop_ms": model.hop_frames * model.frame_ms, "options": options,
            "scene_embedding_size": model.scene_embedding_size,
            "timestamp_embedding_size": model.timestamp_embedding_size, "files": {s: str(p) for s, p in stems.items()}}
    (args.out / "embeddings.json").write_text(json.dumps(info, indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hear-msm-mae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_embed_arguments(commands.add_parser("embed", help="scene / timestamp embeddings of audio files"))
    from .pretrain.trainer import add_pretrain_arguments
    from .pretrain.visualize import add_visualize_arguments
    add_pretrain_arguments(commands.add_parser("pretrain", help="pre-train MSM-MAE on folders of audio"))
    add_visualize_arguments(commands.add_parser("visualize", help="picture of a checkpoint's reconstruction"))
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "embed":
        run_embed(args)
    elif args.command == "pretrain":
        from .pretrain.trainer import run_pretraining
        run_pretraining(args)
    elif args.command == "visualize":
        from .pretrain.visualize import run_visualize
        run_visualize(args)


if __name__ == "__main__":
    sys.exit(main())
