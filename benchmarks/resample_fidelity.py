"""Our 48 kHz -> 16 kHz resampling (hear_msm_mae.audio) against hear-preprocess's (ffmpeg + libsoxr): samples,
embeddings and scores.

    python benchmarks/resample_fidelity.py [--work DIR] [--model CKPT] [--tasks NAME ...] [--jobs 2]
                                           [--grid-points 2]

The 48 kHz tasks: the synthetic tasks (eval.synthetic, full size) raised to 48 kHz by ffmpeg's soxr resampler
(float internal format: reproducible) and given white noise at -40 dB full scale over the whole 0-24 kHz band (content above the 8 kHz that the
16 kHz folder can hold, which a resampler must remove), as 16-bit WAVs (their recorded digests dropped: they
are new tasks). From each, 16 kHz folders:

- hear-preprocess: `ffmpeg -i IN -af aresample=resampler=soxr -ar 16000 OUT.wav` (hearpreprocess/util/audio.py
  `resample_wav`), run twice (libsoxr dithers 16-bit output from a clock-seeded generator: the two runs differ);
- ffmpeg with a float internal format (`aresample=resampler=soxr:tsf=fltp`): no dither;
- ours: `python -m eval.data resample` (hear_msm_mae.audio.resample_file).

Printed (and written to <work>/resample_fidelity.json):
1. samples: per pair, the largest and mean absolute difference in LSB (1/32768) and the share of equal samples;
2. embeddings (the bundled checkpoint unless --model, float32): eval.embed on the 48 kHz task (resampled as it
   is read) against eval.embed on hear-preprocess's 16 kHz folder, and on its second run's folder against its
   first (how far hear-preprocess is from itself): largest absolute difference, largest difference relative to
   the row's norm, smallest cosine;
3. scores: the linear probe and the HEAR protocol (seed 42, --grid-points of a grid cut down to fit this 2-core
   machine through the tasks' `evaluation_params`, GRID) on the three, the differences to hear-preprocess's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from eval import data, synthetic  # noqa: E402
from eval.embed import embed_tasks, load_module  # noqa: E402
from eval.embedded import load_task_data  # noqa: E402
from eval.hear_protocol import ProtocolConfig  # noqa: E402
from eval.run import evaluate_embeddings  # noqa: E402
from eval.tasks import read_task  # noqa: E402
from hear_preprocess import ffmpeg_resample  # noqa: E402  (tests/: hear-preprocess's command)

NOISE_DB = -40.0
GRID = {"hidden_dim": [256], "max_epochs": [60], "patience": [5]}  # the HEAR protocol's grid cut down to fit 2 cores
TASKS = ("synth_words", "synth_speaker_count", "synth_drum_events")
SIDES = {"hear-preprocess": "", "hear-preprocess again": "", "ffmpeg float": ":tsf=fltp"}  # aresample options


def to_48k(job: Tuple[Path, Path, int]) -> None:
    """One 16 kHz file raised to 48 kHz by ffmpeg's soxr, plus white noise (seeded by `seed`), as 16-bit PCM."""
    source, target, seed = job
    target.parent.mkdir(parents=True, exist_ok=True)
    up = ffmpeg_resample(source, target, 48000, ":tsf=fltp").astype(np.float64) / 32768  # no dither: reproducible
    noise = np.random.default_rng(seed).standard_normal(len(up)) * 10 ** (NOISE_DB / 20)
    soundfile.write(str(target), np.clip(np.round((up + noise) * 32768), -32768, 32767).astype(np.int16), 48000,
                    subtype="PCM_16")


def side_16k(job: Tuple[Path, Path, str]) -> None:
    source, target, options = job
    target.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_resample(source, target, 16000, options)


def build(synth: Path, work: Path, names, jobs: int) -> Dict[str, Path]:
    """The 48 kHz tasks in work/48k, and a folder of tasks per 16 kHz side (work/<side>, only 16000/)."""
    tasks = {name: read_task(synth / f"{name}-{synthetic.VERSION}-full") for name in names}
    for side in ("48k", *SIDES):
        shutil.rmtree(work / side, ignore_errors=True)
    up, down = [], []
    for seed, (name, task) in enumerate(tasks.items()):
        for split in task.splits:
            for i, file in enumerate(task.files(split)):
                target = work / "48k" / name / "48000" / split / file
                up.append((task.audio_dir(split) / file, target, seed * 100003 + i))
                down += [(target, work / side / name / "16000" / split / file, options)
                         for side, options in SIDES.items()]
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(to_48k, up, chunksize=16))
        list(pool.map(side_16k, down, chunksize=16))
    for name, task in tasks.items():
        metadata = {**{k: v for k, v in task.metadata.items() if k != "digest"},
                    "evaluation_params": {"task_specific_param_grid": GRID}}
        for side in ("48k", *SIDES):
            (work / side / name / "task_metadata.json").write_text(json.dumps(metadata, indent=1))
            for file in ["labelvocabulary.csv"] + [f"{s}.json" for s in task.splits]:
                shutil.copy(task.path / file, work / side / name / file)
    data.resample_tasks(work / "48k", 16000, jobs=jobs)  # ours, beside the 48 kHz folder
    return {side: work / side for side in ("48k", *SIDES)}


def compare_samples(a: Path, b: Path) -> dict:
    """Over every WAV under a (the same relative path under b): max and mean |a - b| in LSB, share equal."""
    largest, total, equal, count = 0, 0, 0, 0
    for wav in sorted(a.rglob("16000/*/*.wav")):
        x = soundfile.read(str(wav), dtype="int16")[0].astype(np.int64)
        y = soundfile.read(str(b / wav.relative_to(a)), dtype="int16")[0].astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"{wav}: {len(x)} samples, {len(y)} on the other side")
        d = np.abs(x - y)
        largest, total, equal, count = max(largest, int(d.max())), total + int(d.sum()), equal + int((d == 0).sum()), \
            count + len(d)
    return {"max_lsb": largest, "mean_lsb": total / count, "share_equal": equal / count, "samples": count}


def compare_embeddings(a: Path, b: Path) -> dict:
    worst = {"max_abs": 0.0, "max_relative": 0.0, "min_cosine": 1.0}
    x_data, y_data = load_task_data(a), load_task_data(b)
    for split in x_data.splits:
        x, y = x_data.splits[split].embeddings.astype(np.float64), y_data.splits[split].embeddings.astype(np.float64)
        norms = np.linalg.norm(y, axis=1)
        worst["max_abs"] = max(worst["max_abs"], float(np.abs(x - y).max()))
        worst["max_relative"] = max(worst["max_relative"], float((np.linalg.norm(x - y, axis=1) / norms).max()))
        worst["min_cosine"] = min(worst["min_cosine"], float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * norms))
                                                             .min()))
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "results" / "resample_fidelity")
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled MSM-MAE)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(synthetic.TASKS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--grid-points", type=int, default=2)
    args = parser.parse_args(argv)
    work = args.work
    synth = work / "synthetic"
    if not all((synth / f"{t}-{synthetic.VERSION}-full").is_dir() for t in args.tasks):
        synthetic.generate(synth, tasks=args.tasks)
    sides = build(synth, work, args.tasks, args.jobs)

    report: Dict[str, object] = {"samples": {
        "ours vs hear-preprocess": compare_samples(sides["48k"], sides["hear-preprocess"]),
        "ours vs hear-preprocess again": compare_samples(sides["48k"], sides["hear-preprocess again"]),
        "hear-preprocess vs hear-preprocess again": compare_samples(sides["hear-preprocess"],
                                                                    sides["hear-preprocess again"]),
        "ours vs ffmpeg float": compare_samples(sides["48k"], sides["ffmpeg float"])}}
    for task in sides["48k"].iterdir():  # the 48 kHz tasks are embedded from 48000/ only: resampled as read
        shutil.rmtree(task / "16000")
    loaded = load_module("hear_msm_mae", args.model, {"dtype": "float32"}, torch.device("cpu"))
    config = ProtocolConfig(grid_points=args.grid_points)
    embedded, scores = {}, {}
    compared = ("48k", "hear-preprocess again")  # each against hear-preprocess's first run
    for side in ("hear-preprocess", *compared):
        embedded[side] = embed_tasks(loaded, sides[side], work / "embeddings" / side)
        results = evaluate_embeddings(embedded[side], work / "results" / side, ("linear", "hear"), config)
        scores[side] = {(r["task"], r["protocol"]): r["scores"][r["primary_score"]]["mean"] for r in results}
    report["embeddings"] = {f"{t}, {side}": compare_embeddings(embedded[side] / t, embedded["hear-preprocess"] / t)
                            for t in args.tasks for side in compared}
    report["scores"] = [{"task": t, "protocol": p, **{side: scores[side][(t, p)] for side in scores},
                         **{f"{side} - hear-preprocess": scores[side][(t, p)] - scores["hear-preprocess"][(t, p)]
                            for side in compared}}
                        for (t, p) in scores["hear-preprocess"]]
    (work / "resample_fidelity.json").write_text(json.dumps(report, indent=1))
    print("| 16 kHz samples | max abs diff (LSB) | mean abs diff (LSB) | share equal | samples |\n"
          "|---|---|---|---|---|")
    for pair, r in report["samples"].items():
        print(f"| {pair} | {r['max_lsb']} | {r['mean_lsb']:.4f} | {r['share_equal']:.4f} | {r['samples']} |")
    print("\n| embeddings against hear-preprocess's 16 kHz folder | max abs diff | max diff / row norm | "
          "min cosine |\n|---|---|---|---|")
    for task, r in report["embeddings"].items():
        print(f"| {task} | {r['max_abs']:.2e} | {r['max_relative']:.2e} | {r['min_cosine']:.8f} |")
    print("\n| task | protocol | hear-preprocess | 48 kHz folder (ours) | difference | hear-preprocess again | "
          "difference |\n|---|---|---|---|---|---|---|")
    for r in report["scores"]:
        print(f"| {r['task']} | {r['protocol']} | {r['hear-preprocess']:.4f} | {r['48k']:.4f} | "
              f"{r['48k - hear-preprocess']:+.4f} | {r['hear-preprocess again']:.4f} | "
              f"{r['hear-preprocess again - hear-preprocess']:+.4f} |")


if __name__ == "__main__":
    main()
