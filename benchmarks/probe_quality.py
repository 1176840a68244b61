"""Is the bundled default checkpoint better than chance features? A linear probe on every synthetic task.

    python benchmarks/probe_quality.py [--checkpoint C] [--tasks-dir data/probe_tasks] [--out FILE.json] [--tiny]

Builds the small labelled HEAR-format tasks of eval.synthetic (pitch, spoken word, speaker count,
drum events; made once under --tasks-dir) and fits the same linear probe on three feature sets:

  pretrained   scene embeddings of the checkpoint (event task: its timestamp embeddings)
  random       the same architecture with random weights (same seed-0 initialisation as pre-training)
  log-mel      mean and standard deviation over time of each of the 80 log-mel bins (event task:
               over the same 160 ms window a timestamp embedding covers)

Probe: standardised features, logistic regression (one-vs-rest for the multi-label event frames),
C chosen on the validation split from a fixed grid, scored on the test split; k-fold tasks average
over the folds as hear-eval-kit rotates them. Scene tasks report accuracy, the event task frame-level
mean average precision over its labels at an 80 ms hop. All three feature sets go through the same
code in one run; the table is printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import soundfile
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval import synthetic  # noqa: E402
from eval.tasks import Task, list_tasks  # noqa: E402
from hear_msm_mae.api import default_checkpoint, load_model  # noqa: E402
from hear_msm_mae.checkpoint import load_checkpoint  # noqa: E402
from hear_msm_mae.embedder import Embedder, EmbedderOptions  # noqa: E402
from hear_msm_mae.frontend import LogMelSpectrogram  # noqa: E402
from hear_msm_mae.model import MaskedAutoencoder  # noqa: E402

HOP_MS = 80.0  # event task frame hop
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# (n, S) audio -> scene (n, D), or for the event task (frames (n, t, D), frame centres (t,) in ms)
Features = Callable[[torch.Tensor], Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]]


# -- feature sets ----------------------------------------------------------------------------------------

def embedder_features(model: Embedder, event: bool) -> Features:
    def features(audio: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            if not event:
                return model.scene_embeddings(audio).numpy()
            frames, times = model.timestamp_embeddings(audio)
            return frames.numpy(), times[0].numpy()
    return features


def log_mel_features(event: bool, window_frames: int = 16, hop_frames: int = 8) -> Features:
    frontend = LogMelSpectrogram()

    def features(audio: torch.Tensor) -> np.ndarray:
        lms = frontend(audio)  # (n, 80, T)
        if not event:
            return torch.cat([lms.mean(-1), lms.std(-1)], dim=1).numpy()
        windows = lms.unfold(-1, window_frames, hop_frames)  # (n, 80, t, 16): frames [i * 8, i * 8 + 16)
        centres = (np.arange(windows.shape[2]) * hop_frames + (window_frames - 1) / 2) * 10.0  # ms
        return torch.cat([windows.mean(-1), windows.std(-1)], dim=1).transpose(1, 2).numpy(), centres
    return features


# -- data ------------------------------------------------------------------------------------------------

def split_audio(task: Task, split: str) -> torch.Tensor:
    clips = [soundfile.read(str(p), dtype="float32")[0] for p in task.audio_paths(split)]
    return torch.from_numpy(np.stack(clips))  # every file is sample_duration long


def extract(task: Task, features: Features, batch: int = 32) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """split -> (scene (n, D) or frames (n, t, D), targets: class per file (n,) or multi-hot (n, t, labels))."""
    out = {}
    for split in task.splits:
        audio = split_audio(task, split)
        parts = [features(audio[i:i + batch]) for i in range(0, len(audio), batch)]
        if task.embedding_type == "scene":
            out[split] = np.concatenate(parts), targets(task, split)
        else:
            out[split] = np.concatenate([p[0] for p in parts]), targets(task, split, parts[0][1])
    return out


def targets(task: Task, split: str, centres: Optional[np.ndarray] = None) -> np.ndarray:
    """Scene: class index per file (n,). Event: multi-hot (n, t, labels) of the labels active at each frame centre."""
    if task.embedding_type == "scene":
        labels = task.scene_labels(split)
        return np.array([task.label_to_idx[labels[f][0]] for f in task.files(split)])
    events = task.events(split)
    y = np.zeros((len(events), len(centres), len(task.labels)), np.float32)
    for i, name in enumerate(task.files(split)):
        for e in events[name]:
            y[i, (centres >= e.start) & (centres < e.end), task.label_to_idx[e.label]] = 1
    return y


# -- the probe -------------------------------------------------------------------------------------------

def fit_probe(x: np.ndarray, y: np.ndarray, c: float, multilabel: bool):
    model = LogisticRegression(C=c, max_iter=2000)
    return OneVsRestClassifier(model, n_jobs=1) if multilabel else model


def score(model, x: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        present = y.sum(0) > 0
        return float(average_precision_score(y[:, present], model.predict_proba(x)[:, present], average="macro"))
    return float((model.predict(x) == y).mean())


def probe(task: Task, feats: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> float:
    """Test score, averaged over folds; C picked on the validation split."""
    multilabel = task.embedding_type == "event"

    def data(splits) -> Tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for split in splits:
            x, y = feats[split]
            xs.append(x.reshape(-1, x.shape[-1]))
            ys.append(y.reshape(-1, y.shape[-1]) if multilabel else y)
        return np.concatenate(xs), np.concatenate(ys)

    scores = []
    for fold in task.data_splits():
        (xt, yt), (xv, yv), (xs, ys) = data(fold.train), data(fold.valid), data(fold.test)
        scaler = StandardScaler().fit(xt)
        xt, xv, xs = scaler.transform(xt), scaler.transform(xv), scaler.transform(xs)
        fitted = {c: fit_probe(xt, yt, c, multilabel).fit(xt, yt) for c in C_GRID}
        best = max(C_GRID, key=lambda c: score(fitted[c], xv, yv, multilabel))
        scores.append(score(fitted[best], xs, ys, multilabel))
    return float(np.mean(scores))


def random_weights_model(checkpoint_path) -> Embedder:
    checkpoint = load_checkpoint(checkpoint_path)
    torch.manual_seed(0)
    encoder = MaskedAutoencoder(checkpoint.config, decoder=False)
    return Embedder(encoder, EmbedderOptions(timestamp_hop_ms=HOP_MS), checkpoint.norm_stats).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    parser.add_argument("--tasks-dir", type=Path, default=REPO / "data" / "probe_tasks")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "probe_quality.json")
    parser.add_argument("--tiny", action="store_true", help="a handful of files per task (to try the script)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(default_checkpoint())
    if not args.tasks_dir.is_dir() or not list(args.tasks_dir.iterdir()):
        synthetic.generate(args.tasks_dir, tiny=args.tiny, seed=0)
    tasks = list_tasks(args.tasks_dir)
    feature_sets = {
        "pretrained": lambda event: embedder_features(
            load_model(checkpoint, device="cpu", timestamp_hop_ms=HOP_MS), event),
        "random": lambda event: embedder_features(random_weights_model(checkpoint), event),
        "log-mel": log_mel_features,
    }
    results: Dict[str, Dict[str, float]] = {}
    for task in tasks:
        event = task.embedding_type == "event"
        results[task.name] = {}
        for name, make in feature_sets.items():
            started = time.time()
            results[task.name][name] = probe(task, extract(task, make(event)))
            print(f"{task.name} {name}: {results[task.name][name]:.4f} ({time.time() - started:.0f} s)",
                  file=sys.stderr, flush=True)
    metric = {t.name: "frame mAP" if t.embedding_type == "event" else "accuracy" for t in tasks}
    lines = [f"| task | metric | {' | '.join(feature_sets)} | pretrained best |", "|---" * (len(feature_sets) + 3) + "|"]
    for task, row in results.items():
        best = all(row["pretrained"] > v for k, v in row.items() if k != "pretrained")
        lines.append(f"| {task} | {metric[task]} | " + " | ".join(f"{row[k]:.3f}" for k in feature_sets) +
                     f" | {'yes' if best else 'NO'} |")
    print("\n".join(lines))
    args.out.write_text(json.dumps({"checkpoint": str(checkpoint), "hop_ms": HOP_MS, "c_grid": C_GRID,
                                    "results": results, "table": lines}, indent=1))


if __name__ == "__main__":
    main()
