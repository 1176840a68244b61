"""A drop-in for hear-eval-kit's `python -m heareval.predictions.runner`, on eval.hear_protocol.

    python -m eval.predict EMB/<module>/<task> [EMB/<module>/<task> ...] [--grid-points 8]
                           [--grid default|fast|faster] [--gpus '[0]' | --device DEVICE] [--seeds 1]
                           [--dtype float32|bfloat16 | --fast]

Each task folder holds one task's embeddings, made by hear-eval-kit's embeddings runner or by eval.embed.
A folder with a prediction-done.json is skipped, as hear-eval-kit's runner skips it; otherwise the HEAR
protocol runs on it (no Lightning, no TensorFlow) and writes, beside the embeddings:

    test.predicted-scores.json   hear-eval-kit's file, for seed 42 (the first seed): per test fold its
                                 test_<score> values (event scores also test_<score>_<sub-score>: f_measure,
                                 precision, recall or error_rate), test_loss, test_score (the primary),
                                 validation_score, epoch, time_in_min; for k-fold tasks aggregated_scores
                                 (<key>_mean and <key>_std over folds, NaN skipped as pandas does); hparams
                                 (the best grid point, classes by name), postprocessing, score_mode,
                                 embedding_path
    hear_protocol.json           our result, every seed (eval.hear_protocol.run_protocol)
    prediction-done.json         hear-eval-kit's marker: time, embedding_size, grid_points, gpus, ...

hear-eval-kit's --in-memory and --deterministic select nothing here (embeddings are always in memory and
runs are always seeded) and are not offered, nor --shuffle (the task order). hear-eval-kit also pickles
each fold's test predictions (<fold>.predictions.pkl); this command does not.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .embed import save_json
from .embedded import TaskData, load_task_data
from .hear_protocol import GRIDS, ProtocolConfig, run_protocol, seeds
from .statistics import mean_std

DONE_FILE = "prediction-done.json"
SCORES_FILE = "test.predicted-scores.json"
RESULT_FILE = "hear_protocol.json"


def fold_scores(fold: dict, primary: str) -> dict:
    """One test fold's entry of test.predicted-scores.json, as Lightning's trainer.test logs it."""
    record = {"test_loss": fold["loss"], "test_score": fold["scores"][primary]}
    for name, value in fold["scores"].items():
        record[f"test_{name}"] = value
        record.update({f"test_{name}_{sub}": v for sub, v in fold["subscores"].get(name, {}).items()})
    record.update(validation_score=fold["validation_score"], epoch=fold["epoch"],
                  time_in_min=fold["train_seconds"] / 60)
    return record


def heareval_scores(run: dict, embedding_path: Path) -> dict:
    """One seed's result (eval.hear_protocol.run_seed) as hear-eval-kit's test.predicted-scores.json."""
    scores = {fold["test"]: fold_scores(fold, run["primary_score"]) for fold in run["folds"]}
    if len(scores) > 1:
        aggregated = {}
        for key in next(iter(scores.values())):
            mean, std = mean_std([fold[key] for fold in scores.values()], skip_nan=True)
            aggregated.update({f"{key}_mean": mean, f"{key}_std": std})
        scores["aggregated_scores"] = aggregated
    scores.update(hparams=run["hparams"], postprocessing=[list(p) for p in run["folds"][0]["postprocessing"].items()],
                  score_mode=run["score_mode"], embedding_path=str(embedding_path))
    return scores


def predict_task(task_dir: Path, config: ProtocolConfig, gpus) -> dict:
    """The protocol on one task folder, its three files written; returns our result."""
    start = time.time()
    data: TaskData = load_task_data(task_dir)
    result = run_protocol(data, config)
    runs = result.get("runs", [result])
    save_json(task_dir / RESULT_FILE, result, indent=1)
    save_json(task_dir / SCORES_FILE, heareval_scores(runs[0], task_dir), indent=4)
    save_json(task_dir / DONE_FILE, {
        "time": time.time() - start, "embedding_path": str(task_dir),
        "embedding_size": int(next(iter(data.splits.values())).embeddings.shape[1]),
        "grid_points": config.grid_points, "gpus": gpus,
        "gpu_max_mem": torch.cuda.max_memory_allocated() if config.device.startswith("cuda") else None,
        "gpu_device_name": torch.cuda.get_device_name(config.device) if config.device.startswith("cuda") else None,
        "in_memory": True, "deterministic": True, "seeds": list(config.seeds), "dtype": config.dtype}, indent=4)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("task_dirs", nargs="+", type=Path, help="embedded task folders (EMB/<module>/<task>)")
    parser.add_argument("--grid-points", type=int, default=8, help="grid points to train (default 8)")
    parser.add_argument("--grid", choices=list(GRIDS), default="default", help="hear-eval-kit's grid")
    parser.add_argument("--gpus", default=None, help='GPUs as JSON, as hear-eval-kit: "[0]" (first one used)')
    parser.add_argument("--device", default=None, help="torch device (default: cuda if there is one, else cpu)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 42, 43, ... (default 1: 42)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="precision of the MLP matmuls (default float32, hear-eval-kit's)")
    parser.add_argument("--fast", action="store_true", help="the same as --dtype bfloat16")
    args = parser.parse_args(argv)

    gpus = json.loads(args.gpus) if args.gpus else None
    if gpus is not None and not (isinstance(gpus, list) and gpus and all(isinstance(g, int) for g in gpus)):
        raise SystemExit(f"error: --gpus must be a JSON list of GPU indices, got {args.gpus!r}")
    device = args.device or (f"cuda:{gpus[0]}" if gpus else "cuda" if torch.cuda.is_available() else "cpu")
    if args.grid_points < 1 or args.seeds < 1:
        raise SystemExit("error: --grid-points and --seeds must be at least 1")
    config = ProtocolConfig(grid_points=args.grid_points, grid=args.grid, seeds=seeds(args.seeds), device=device,
                            dtype="bfloat16" if args.fast else args.dtype)
    missing = [str(p) for p in args.task_dirs if not p.is_dir()]
    if missing:
        raise SystemExit(f"error: not task folders: {missing}")
    for task_dir in args.task_dirs:
        if (task_dir / DONE_FILE).exists():
            print(f"{task_dir}: {DONE_FILE} exists, skipped", file=sys.stderr)
            continue
        try:
            result = predict_task(task_dir, config, gpus)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {task_dir}: {e}") from None
        primary = result["scores"][result["primary_score"]]
        print(f"{task_dir}: {result['primary_score']} {primary['mean']:.4f} ± {primary['std']:.4f} "
              f"({result['spread']}); {task_dir / SCORES_FILE}")


if __name__ == "__main__":
    main()
