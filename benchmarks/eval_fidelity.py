"""Our HEAR 2021 protocol (eval.hear_protocol) against hear-eval-kit's own predictions code, several seeds each.

    python benchmarks/eval_fidelity.py [--work DIR] [--model CKPT] [--seeds 3] [--tasks NAME ...] [--reuse]

Three tasks, derived from the synthetic tasks (eval.synthetic, full size) and embedded once with eval.embed
(the bundled checkpoint unless --model, 40 ms hop):

- long_drum_events: event, trainvaltest, 60 s files (1500 frames each): synth_drum_events' 4 s clips, 15 a file;
- synth_words: scene, multiclass, 5-fold, as generated;
- drum_halves_multilabel: scene, multilabel (which drums sound), trainvaltest: synth_drum_events' clips cut in
  2 s halves.

Both sides train and test on the same embedding files, one after the other on the same machine, once per
seed (42, 43, 44, ...): hear-eval-kit's task_predictions (its predictions runner's function, in its pinned
environment, tests/heareval_env.py) called by a small driver that seeds it with the seed instead of its fixed
42, on a fresh copy of the folder; ours `run_seed` with the same seed, in float32 and in bfloat16. A seed
draws the grid points (Python's random), the initialisation and the dropout on either side. To fit this
2-core machine the grid is cut down through each task's `evaluation_params` (honoured by both sides; see
SETTINGS) and each side trains `grid_points` of it.

Printed (and written to <work>/fidelity.json): per task and side the mean primary test score over seeds with
its standard error, the per-seed scores, and wall and CPU time per seed (CPU: all threads of the process;
hear-eval-kit's without its start-up, like ours). Pass: ours (float32) within max(0.02, 2 standard errors of
the difference) of hear-eval-kit's on every task; bfloat16 within the same of float32.
--reuse takes hear-eval-kit's results of an earlier run in <work> instead of running it again.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import heareval_env  # noqa: E402  (tests/: hear-eval-kit's pinned environment)
from eval import synthetic  # noqa: E402
from eval.embed import embed_tasks, load_module, parse_model_options  # noqa: E402
from eval.embedded import load_task_data  # noqa: E402
from eval.hear_protocol import ProtocolConfig, run_seed, seeds  # noqa: E402
from eval.tasks import read_task, write_task  # noqa: E402

# per task: the grid overrides written into its metadata, and the grid points each side trains
SETTINGS = {
    "long_drum_events": ({"hidden_dim": [256], "max_epochs": [60], "patience": [5]}, 2),
    "synth_words": ({"max_epochs": [100], "patience": [10]}, 4),
    "drum_halves_multilabel": ({"max_epochs": [100], "patience": [10]}, 4),
}
TOLERANCE = 0.02
DRIVER = """
import json, logging, sys, time
from pathlib import Path
import pytorch_lightning as pl
from heareval.predictions import task_predictions as tp
task_dir, seed, grid_points = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tp.seed_everything = lambda _, workers=False: pl.seed_everything(seed, workers=workers)  # instead of 42
metadata = json.loads((task_dir / "task_metadata.json").read_text())
size = json.loads((task_dir / f"{metadata['splits'][0]}.embedding-dimensions.json").read_text())[1]
wall, cpu = time.perf_counter(), time.process_time()
tp.task_predictions(embedding_path=task_dir, embedding_size=size, grid_points=grid_points, gpus=None,
                    in_memory=True, deterministic=True, grid="default", logger=logging.getLogger("fidelity"))
(task_dir / "fidelity-time.json").write_text(json.dumps({"wall": time.perf_counter() - wall,
                                                         "cpu": time.process_time() - cpu}))
"""


def derive_tasks(synth: Path, out: Path) -> List[Path]:
    """The three benchmark tasks (see the docstring) from the generated synthetic task folders."""
    drums = read_task(synth / f"synth_drum_events-{synthetic.VERSION}-full")
    metadata, labels = drums.metadata, drums.labels
    clip_ms = metadata["sample_duration"] * 1000
    long_files, halves = {}, {}
    for split in drums.splits:
        files = drums.split_labels[split]
        names = sorted(files)
        long_files[split], halves[split] = {}, {}
        for f in range(len(names) // 15):
            group = names[15 * f:15 * (f + 1)]
            audio = np.concatenate([soundfile.read(str(drums.audio_dir(split) / n), dtype="float32")[0]
                                    for n in group])
            events = [{**e, "start": e["start"] + i * clip_ms, "end": e["end"] + i * clip_ms}
                      for i, n in enumerate(group) for e in files[n]]
            long_files[split][f"{split}_{f:02d}.wav"] = (audio, events)
        for n in names:
            audio = soundfile.read(str(drums.audio_dir(split) / n), dtype="float32")[0]
            half = len(audio) // 2
            for h in range(2):
                present = sorted({e["label"] for e in files[n]
                                  if h * clip_ms / 2 <= e["start"] < (h + 1) * clip_ms / 2})
                halves[split][f"{n[:-4]}_{h}.wav"] = (audio[h * half:(h + 1) * half], present)
    common = {"version": "v1", "split_mode": "trainvaltest", "mode": "full"}
    write_task(out / "long_drum_events", {
        **common, "task_name": "long_drum_events", "embedding_type": "event", "prediction_type": "multilabel",
        "sample_duration": 15 * metadata["sample_duration"], "evaluation": metadata["evaluation"]}, long_files,
        labels)
    write_task(out / "drum_halves_multilabel", {
        **common, "task_name": "drum_halves_multilabel", "embedding_type": "scene", "prediction_type": "multilabel",
        "sample_duration": metadata["sample_duration"] / 2, "evaluation": ["mAP", "d_prime", "aucroc"]}, halves,
        labels)
    shutil.rmtree(out / "synth_words", ignore_errors=True)
    shutil.copytree(synth / f"synth_words-{synthetic.VERSION}-full", out / "synth_words")
    for name, (grid, _) in SETTINGS.items():
        path = out / name / "task_metadata.json"
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "evaluation_params": {"task_specific_param_grid": grid}}, indent=1))
    return [out / name for name in SETTINGS]


def run_heareval(embedded: Path, work: Path, seed: int, grid_points: int, reuse: bool) -> dict:
    """hear-eval-kit's task_predictions on a copy of the task's embeddings, seeded -> primary score, times."""
    task_dir = work / f"{embedded.name}.seed{seed}"
    if not (reuse and (task_dir / "fidelity-time.json").exists()):
        shutil.rmtree(task_dir, ignore_errors=True)
        shutil.copytree(embedded, task_dir)
        with open(work / f"{task_dir.name}.log", "w") as log:
            heareval_env.run(["-c", DRIVER, str(task_dir), str(seed), str(grid_points)], cwd=work, stdout=log,
                             stderr=log)
    scores = json.loads((task_dir / "test.predicted-scores.json").read_text())
    metadata = json.loads((task_dir / "task_metadata.json").read_text())
    primary = f"test_{metadata['evaluation'][0]}"
    score = scores["aggregated_scores"][f"{primary}_mean"] if "aggregated_scores" in scores else scores["test"][primary]
    return {"score": float(score), **json.loads((task_dir / "fidelity-time.json").read_text())}


def run_ours(task_dir: Path, seed: int, grid_points: int, dtype: str) -> dict:
    data = load_task_data(task_dir)
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_seed(data, ProtocolConfig(grid_points=grid_points, dtype=dtype), seed)
    return {"score": result["scores"][result["primary_score"]]["mean"], "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu}


def summary(runs: List[dict]) -> dict:
    scores = np.array([r["score"] for r in runs])
    return {"mean": float(scores.mean()), "se": float(scores.std(ddof=1) / math.sqrt(len(scores))),
            "per_seed": scores.tolist(), "wall": float(np.mean([r["wall"] for r in runs])),
            "cpu": float(np.mean([r["cpu"] for r in runs]))}


def agree(a: dict, b: dict) -> dict:
    difference = a["mean"] - b["mean"]
    bound = max(TOLERANCE, 2 * math.hypot(a["se"], b["se"]))
    return {"difference": difference, "bound": bound, "pass": abs(difference) <= bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hear_msm_mae_eval_fidelity"))
    parser.add_argument("--model", default=None, help="checkpoint to embed with (default: the bundled one)")
    parser.add_argument("--model-options", default="{}", help="JSON options of hear_msm_mae for the embeddings")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per side: 42, 43, ...")
    parser.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--reuse", action="store_true", help="reuse hear-eval-kit's earlier results in --work")
    args = parser.parse_args()

    options = parse_model_options(args.model_options, args.model)
    heareval_env.environment_python()  # fails early, saying how to build it
    synth = args.work / "synthetic"
    if not all((synth / f"{t}-{synthetic.VERSION}-full" / "task_metadata.json").exists()
               for t in ("synth_drum_events", "synth_words")):
        synthetic.generate(synth, tasks=["synth_drum_events", "synth_words"])
    tasks_dir = args.work / "tasks"
    if not all((tasks_dir / name / "task_metadata.json").exists() for name in SETTINGS):
        derive_tasks(synth, tasks_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_module("hear_msm_mae", args.model, options, device)
    model_out = embed_tasks(loaded, tasks_dir, args.work / "embeddings", args.tasks)
    heareval_work = args.work / "heareval"
    heareval_work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.tasks:
        grid_points = SETTINGS[name][1]
        sides: Dict[str, List[dict]] = {"heareval": [], "float32": [], "bfloat16": []}
        for seed in seeds(args.seeds):
            sides["heareval"].append(run_heareval(model_out / name, heareval_work, seed, grid_points, args.reuse))
            for dtype in ("float32", "bfloat16"):
                sides[dtype].append(run_ours(model_out / name, seed, grid_points, dtype))
            print(f"{name} seed {seed}: " + ", ".join(f"{side} {runs[-1]['score']:.4f} ({runs[-1]['wall']:.0f} s)"
                                                      for side, runs in sides.items()), file=sys.stderr)
        stats = {side: summary(runs) for side, runs in sides.items()}
        rows.append({"task": name, "grid": SETTINGS[name][0], "grid_points": grid_points, **stats,
                     "ours_vs_heareval": agree(stats["float32"], stats["heareval"]),
                     "bfloat16_vs_float32": agree(stats["bfloat16"], stats["float32"])})
    print("| task | hear-eval-kit | ours float32 | ours bfloat16 | fp32 - hear-eval-kit (bound) | bf16 - fp32 (bound) "
          "| wall s: hear-eval-kit / fp32 / bf16 | CPU s: hear-eval-kit / fp32 / bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[s]['mean']:.4f} ± {r[s]['se']:.4f}" for s in ("heareval", "float32", "bfloat16")]
        checks = [f"{r[k]['difference']:+.4f} ({r[k]['bound']:.4f}) {'pass' if r[k]['pass'] else 'FAIL'}"
                  for k in ("ours_vs_heareval", "bfloat16_vs_float32")]
        times = [" / ".join(f"{r[s][t]:.0f}" for s in ("heareval", "float32", "bfloat16")) for t in ("wall", "cpu")]
        print(f"| {r['task']} | " + " | ".join(cells + checks + times) + " |")
    passed = all(r["ours_vs_heareval"]["pass"] and r["bfloat16_vs_float32"]["pass"] for r in rows)
    print(f"all within max({TOLERANCE}, 2 standard errors): {'yes' if passed else 'NO'}")
    (args.work / "fidelity.json").write_text(json.dumps({"seeds": list(seeds(args.seeds)), "model": args.model,
                                                         "model_options": options, "rows": rows, "pass": passed},
                                                        indent=1))


if __name__ == "__main__":
    main()
