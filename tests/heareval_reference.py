"""hear-eval-kit 2021.1.3 as the reference, for the tests.

- `write_tasks(root)`: small HEAR task folders (tones and noise whose labels can be learnt) of the kinds the
  protocol distinguishes: a 4-fold event task, a trainvaltest multiclass scene task, a 4-fold multilabel
  scene task. Their `evaluation_params` make training short (small MLPs, few epochs, 64-row batches, so
  that even these small tasks have several batches per epoch).
- `embed_with_heareval(tasks_root, out)`: embeds them with hear-eval-kit's own embeddings code
  (heareval.embeddings.task_embeddings, in this process) and a tiny HEAR module written beside them
  (log band energies of 50 ms frames), then marks them complete as its runner does.
- `oracle(command, args, tmp)`: runs tests/heareval_oracle.py (hear-eval-kit's own predictions code) in its
  pinned environment (tests/heareval_env.py) and returns what it wrote.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import heareval_env
import numpy as np

from eval.tasks import write_task

HERE = Path(__file__).resolve().parent
SR = 16000
LABELS = ["high", "low", "noise"]
FAST_GRID = {"hidden_dim": [32], "max_epochs": [6], "patience": [2], "batch_size": [64]}

FAKE_MODULE = '''"""A tiny HEAR 2021 module for the tests: log energies of 8 frequency bands in 50 ms frames."""
import math
import torch

HOP = 800  # samples: 50 ms at 16 kHz


class Model(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 8
    timestamp_embedding_size = 8


def load_model(model_file_path="", **options):
    return Model()


def get_timestamp_embeddings(audio, model):
    frames = audio.unfold(1, HOP, HOP)  # (B, T, HOP)
    spectrum = torch.fft.rfft(frames * torch.hann_window(HOP), dim=-1).abs() ** 2  # (B, T, HOP // 2 + 1)
    bands = torch.stack([b.sum(-1) for b in spectrum[..., 1:].chunk(8, dim=-1)], -1)  # (B, T, 8)
    embeddings = torch.log(bands + 1e-6)
    timestamps = (torch.arange(frames.shape[1]) * HOP + HOP / 2) / 16.0  # ms, frame centres
    return embeddings, timestamps.expand(audio.shape[0], -1)


def get_scene_embeddings(audio, model):
    return get_timestamp_embeddings(audio, model)[0].mean(1)
'''


def sound(label: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if label == "high":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
    if label == "low":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(200, 400) * t)
    return 0.2 * rng.standard_normal(len(t))


def reference_task(root: Path, name: str, embedding_type: str, prediction_type: str, splits: list, files: int,
                   seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    examples = {}
    for split in splits:
        examples[split] = {}
        for i in range(files):
            audio = 0.01 * rng.standard_normal(int(seconds * SR))
            if embedding_type == "event":
                events, start = [], 0.2
                while start < seconds - 0.5:
                    label, length = LABELS[rng.integers(3)], float(rng.uniform(0.2, 0.6))
                    a = int(start * SR)
                    audio[a:a + int(length * SR)] += sound(label, length, rng)[:len(audio) - a]
                    events.append({"label": label, "start": round(start * 1000, 1),
                                   "end": round((start + length) * 1000, 1)})
                    start += length + float(rng.uniform(0.1, 0.5))
                labels = events
            else:
                labels = ([LABELS[rng.integers(3)]] if prediction_type == "multiclass"
                          else [label for label in LABELS if rng.random() < 0.5])
                for label in labels:
                    audio += sound(label, seconds, rng)
            examples[split][f"{split}_{i:03d}.wav"] = (audio.astype(np.float32), labels)
    kfold = splits[0] != "train"
    evaluation = {("event", "multilabel"): ["event_onset_200ms_fms", "segment_1s_er"],
                  ("scene", "multiclass"): ["top1_acc", "mAP", "d_prime", "aucroc"],
                  ("scene", "multilabel"): ["mAP", "d_prime", "aucroc", "top1_acc"]}[embedding_type, prediction_type]
    metadata = {"task_name": name.split("-")[0], "version": "v1", "embedding_type": embedding_type,
                "prediction_type": prediction_type, "split_mode": "new_split_kfold" if kfold else "trainvaltest",
                "sample_duration": seconds, "evaluation": evaluation, "mode": "full",
                "evaluation_params": {"task_specific_param_grid": FAST_GRID}}
    if kfold:
        metadata["nfolds"] = len(splits)
    return write_task(root / name, metadata, examples, LABELS, subtype="FLOAT")


TASKS = {  # name: (embedding type, prediction type, splits, files per split, seconds)
    "ref_events-v1-full": ("event", "multilabel", [f"fold{i:02d}" for i in range(4)], 3, 4.0),
    "ref_scene-v1-full": ("scene", "multiclass", ["train", "valid", "test"], 150, 0.3),
    "ref_multilabel-v1-full": ("scene", "multilabel", [f"fold{i:02d}" for i in range(4)], 70, 0.3),
}


def write_tasks(root: Path) -> Path:
    for seed, (name, (kind, prediction, splits, files, seconds)) in enumerate(TASKS.items()):
        reference_task(root, name, kind, prediction, splits, files, seconds, seed)
    return root


def embed_with_heareval(tasks_root: Path, out: Path) -> Path:
    """hear-eval-kit's task_embeddings on every task under tasks_root, with the tiny module; returns the
    module's embeddings folder (out/fake_hear_module)."""
    module_dir = out / "module"
    module_dir.mkdir(parents=True)
    (module_dir / "fake_hear_module.py").write_text(FAKE_MODULE)
    sys.path.insert(0, str(module_dir))
    try:
        from heareval.embeddings.task_embeddings import Embedding, task_embeddings
        embedding = Embedding("fake_hear_module")
        for task in sorted(p for p in tasks_root.iterdir() if p.is_dir()):
            task_embeddings(embedding, task, out / "fake_hear_module" / task.name)
            (out / "fake_hear_module" / task.name / ".done.embeddings").touch()  # as its runner does
    finally:
        sys.path.remove(str(module_dir))
    return out / "fake_hear_module"


def oracle(command: str, args: dict, tmp: Path, timeout: int = 600):
    """tests/heareval_oracle.py COMMAND in hear-eval-kit's environment (cwd tmp); its JSON answer."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "args.json").write_text(json.dumps(args))
    out = tmp / "answer.json"
    heareval_env.run([str(HERE / "heareval_oracle.py"), command, str(tmp / "args.json"), str(out)], cwd=tmp,
                     capture_output=True, timeout=timeout)
    return json.loads(out.read_text())
