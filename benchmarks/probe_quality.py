"""Is the bundled default checkpoint better than chance features? A linear probe on every synthetic task.

    python benchmarks/probe_quality.py [--checkpoint C] [--tasks-dir data/probe_tasks] [--out FILE.json] [--tiny]

Builds the small labelled HEAR-format tasks of eval.synthetic (pitch, spoken word, speaker count,
drum events; rebuilt under --tasks-dir on every run, about 15 s, the same tasks on every machine
with the Makefile's packages: the table gives their digests) and fits the same linear probe on
three feature sets:

  pretrained   scene embeddings of the checkpoint (event task: its timestamp embeddings), in float32 as
               every machine computes them (bfloat16 only where the hardware is fast at it)
  random       the same architecture with random weights (MAE initialisation, seed 0)
  log-mel      mean and standard deviation over time of each of the 80 log-mel bins (event task:
               over the same 160 ms window a timestamp embedding covers)

Probe: eval.linear_probe, the project's logistic-regression probe under the HEAR protocol (features
standardised on the training rows, C chosen on the validation split, scored on the test split with
the task's primary metric; k-fold tasks averaged over the folds as hear-eval-kit rotates them; the
event task on frames at a 40 ms hop, decoded into events and scored by onset F-measure). All three
feature sets go through the same code in one run; the table is printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval import synthetic  # noqa: E402
from eval.embed import labels_at_timestamps, multi_hot  # noqa: E402
from eval.hear_protocol import SplitData, TaskData  # noqa: E402
from eval.linear_probe import run_linear_probe  # noqa: E402
from eval.report import short_digest  # noqa: E402
from eval.tasks import Task, read_task  # noqa: E402
from hear_msm_mae.msm_mae import default_checkpoint, load_model  # noqa: E402
from hear_msm_mae.checkpoint import load_checkpoint  # noqa: E402
from hear_msm_mae.embedder import Embedder, EmbedderOptions  # noqa: E402
from hear_msm_mae.frontend import LogMelSpectrogram  # noqa: E402
from hear_msm_mae.model import MaskedAutoencoder  # noqa: E402

HOP_FRAMES = 4  # event task: one row every 40 ms (10 ms frames), the HEAR module's default hop
# (n, S) audio -> scene (n, D), or for the event task (frames (n, t, D), frame centres (t,) in ms)
Features = Callable[[torch.Tensor], Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]]


# -- feature sets ----------------------------------------------------------------------------------------

def embedder_features(model: Embedder, event: bool) -> Features:
    def features(audio: torch.Tensor):
        with torch.inference_mode():
            if not event:
                return model.scene_embeddings(audio).numpy()
            frames, times = model.timestamp_embeddings(audio)
            return frames.numpy(), times[0].numpy()
    return features


def log_mel_features(event: bool, window_frames: int = 16) -> Features:
    """Mean and std over time of each log-mel bin: of the clip, or of 160 ms windows every 40 ms."""
    frontend = LogMelSpectrogram()

    def features(audio: torch.Tensor):
        lms = frontend(audio)  # (n, 80, T)
        if not event:
            return torch.cat([lms.mean(-1), lms.std(-1)], dim=1).numpy()
        windows = lms.unfold(-1, window_frames, HOP_FRAMES)  # (n, 80, t, 16)
        centres = (np.arange(windows.shape[2]) * HOP_FRAMES + (window_frames - 1) / 2) * 10.0  # ms
        return torch.cat([windows.mean(-1), windows.std(-1)], dim=1).transpose(1, 2).numpy(), centres
    return features


# -- features -> the probe's task data -------------------------------------------------------------------

def split_data(task: Task, split: str, features: Features, batch: int = 32) -> SplitData:
    names = task.files(split)
    audio = torch.from_numpy(np.stack([soundfile.read(str(p), dtype="float32")[0]
                                       for p in task.audio_paths(split)]))  # every file is sample_duration long
    parts = [features(audio[i:i + batch]) for i in range(0, len(audio), batch)]
    if task.embedding_type == "scene":
        labels = task.scene_labels(split)
        return SplitData(np.concatenate(parts), np.stack([multi_hot(labels[n], task.label_to_idx) for n in names]))
    frames, times = np.concatenate([p[0] for p in parts]), parts[0][1]  # (n, t, D), (t,)
    events = task.split_labels[split]
    targets = [multi_hot(labels, task.label_to_idx) for n in names for labels in labels_at_timestamps(events[n], times)]
    return SplitData(frames.reshape(-1, frames.shape[-1]), np.stack(targets),
                     [n for n in names for _ in times], np.tile(times, len(names)), events)


def probe(task: Task, features: Features) -> float:
    """The task's primary score (mean over folds) of the linear probe."""
    data = TaskData(task, {split: split_data(task, split, features) for split in task.splits})
    result = run_linear_probe(data)
    return result["scores"][result["primary_score"]]["mean"]


def random_weights_model(checkpoint_path) -> Embedder:
    checkpoint = load_checkpoint(checkpoint_path)
    torch.manual_seed(0)
    encoder = MaskedAutoencoder(checkpoint.config, decoder=False)
    return Embedder(encoder, checkpoint, EmbedderOptions()).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    parser.add_argument("--tasks-dir", type=Path, default=REPO / "data" / "probe_tasks",
                        help="where the tasks are built")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "probe_quality.json")
    parser.add_argument("--tiny", action="store_true", help="a handful of files per task (to try the script)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(default_checkpoint())
    tasks = sorted((read_task(path) for path in synthetic.generate(args.tasks_dir, tiny=args.tiny, seed=0)),
                   key=lambda task: task.name)
    feature_sets = {
        "pretrained": lambda event: embedder_features(load_model(checkpoint, device="cpu", dtype="float32"), event),
        "random": lambda event: embedder_features(random_weights_model(checkpoint), event),
        "log-mel": log_mel_features,
    }
    results: Dict[str, Dict[str, float]] = {}
    for task in tasks:
        event = task.embedding_type == "event"
        results[task.name] = {}
        for name, make in feature_sets.items():
            started = time.time()
            results[task.name][name] = probe(task, make(event))
            print(f"{task.name} {name}: {results[task.name][name]:.4f} ({time.time() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    metric = {t.name: t.primary_metric for t in tasks}
    digests = {t.name: t.metadata["digest"] for t in tasks}
    lines = [f"| task | task digest | metric | {' | '.join(feature_sets)} | pretrained best |",
             "|---" * (len(feature_sets) + 4) + "|"]
    for task, row in results.items():
        best = all(row["pretrained"] > v for k, v in row.items() if k != "pretrained")
        lines.append(f"| {task} | {short_digest(digests[task])} | {metric[task]} | " +
                     " | ".join(f"{row[k]:.3f}" for k in feature_sets) + f" | {'yes' if best else 'NO'} |")
    print("\n".join(lines))
    args.out.write_text(json.dumps({"checkpoint": str(checkpoint), "probe": "eval.linear_probe",
                                    "task_digests": digests, "results": results, "table": lines}, indent=1))


if __name__ == "__main__":
    main()
