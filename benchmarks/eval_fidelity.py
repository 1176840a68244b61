"""Our HEAR 2021 protocol (eval.hear_protocol) against hear-eval-kit's own predictions runner.

    python benchmarks/eval_fidelity.py [--work DIR] [--model CKPT] [--tasks synth_pitch synth_drum_events]
                                       [--grid-points 8] [--seeds 1] [--model-options JSON]
                                       [--heareval-env /work/venv-heareval] [--reuse]

On one synthetic scene task and one synthetic event task (eval.synthetic, full size), embedded once
with eval.embed, both implementations train and test on the same embedding files, one after the
other on the same machine: `python -m heareval.predictions.runner <task> --grid-points N` (its
defaults otherwise) in its pinned environment, and `run_protocol` here with the same N (its defaults:
bf16 matmuls where the CPU has them). Printed: the test primary score of each, their difference
(target: within 0.03) and the wall-time ratio (target: ours at least 10x faster). Both start from
random weights, so one run of either is one draw from a distribution: `--seeds N` runs ours N times
(initialisation and dropout seeds 0..N-1) and compares their mean score, with the per-seed scores
recorded; times are per run. Results also go to <work>/fidelity.json.

At the module's default 40 ms hop the event task has 4x the rows and both sides take about 4x as long (a
40 ms run of hear-eval-kit on a busy machine did not finish its first grid point in an hour), so the event
comparison recorded in benchmarks/README.md was run on the native 160 ms frames
(`--model-options '{"timestamp_hop_ms": 160}'`); both sides always get the same embeddings and settings.

hear-eval-kit's environment (built here when --heareval-env does not exist): a venv whose packages
shadow this one's (a .pth file appends this environment's site-packages, so torch, scikit-learn,
scipy, sed_eval, dcase_util and heareval itself are shared) with what heareval 2021.1.3's predictions
code pins or needs and current versions break:

    python3 -m venv /work/venv-heareval
    echo <this venv's site-packages> > /work/venv-heareval/lib/pythonX.Y/site-packages/zz_base.pth
    /work/venv-heareval/bin/pip install "numpy<2" "pytorch-lightning==1.8.6" "torchmetrics<1" \\
        "setuptools<82" torchinfo pandas more_itertools click
    pip install --no-deps --ignore-requires-python heareval==2021.1.3   (if not in this env already)

and it runs with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (Lightning 1.8 reloads its own checkpoints with
torch.load, which now defaults to weights_only). --reuse takes hear-eval-kit's earlier result in
<work>/heareval/<task> (score and its own recorded time) instead of running it again. Wall times are the headline (the
target); CPU times (all threads, hear-eval-kit's including its start-up) are printed beside them,
since on a shared machine the wall time also measures the neighbours.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval import synthetic  # noqa: E402
from eval.embed import embed_tasks, parse_model_options  # noqa: E402
from eval.hear_protocol import ProtocolConfig, load_task_data, run_protocol  # noqa: E402

HEAREVAL_PINS = ["numpy<2", "pytorch-lightning==1.8.6", "torchmetrics<1", "setuptools<82", "torchinfo", "pandas",
                 "more_itertools", "click"]
SCORE_TOLERANCE = 0.03
SPEEDUP_TARGET = 10.0


def heareval_python(env: Path) -> Path:
    """The heareval environment's python, built first if it does not exist."""
    python = env / "bin" / "python"
    if python.exists():
        return python
    print(f"building hear-eval-kit's environment in {env}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (env / "lib" / version / "site-packages" / "zz_base.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", *HEAREVAL_PINS], check=True)
    probe = subprocess.run([str(python), "-c", "import heareval"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-requires-python",
                        "heareval==2021.1.3"], check=True)
    return python


def heareval_primary(task_dir: Path, primary: str) -> float:
    scores = json.loads((task_dir / "test.predicted-scores.json").read_text())
    if "aggregated_scores" in scores:
        return float(scores["aggregated_scores"][f"test_{primary}_mean"])
    return float(scores["test"][f"test_{primary}"])


def run_heareval(python: Path, embedded: Path, work: Path, grid_points: int,
                 reuse: bool) -> Tuple[float, Optional[float]]:
    """hear-eval-kit's predictions runner on a copy of the task's embeddings -> (the wall time it records for
    the task: its task_predictions call, like ours without start-up and imports; the CPU time of the whole
    process, None when reused)."""
    task_dir = work / embedded.name
    done = task_dir / "prediction-done.json"
    cpu = None
    if not (reuse and done.exists()):
        shutil.rmtree(task_dir, ignore_errors=True)
        shutil.copytree(embedded, task_dir)
        env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(work / f"{embedded.name}.log", "w") as log:
            subprocess.run([str(python), "-m", "heareval.predictions.runner", embedded.name,
                            "--grid-points", str(grid_points)], cwd=work, env=env,
                           stdout=log, stderr=subprocess.STDOUT, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(json.loads(done.read_text())["time"]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hear_msm_mae_eval_fidelity"))
    parser.add_argument("--model", default=None, help="checkpoint to embed with (default: the bundled one)")
    parser.add_argument("--tasks", nargs="+", default=["synth_pitch", "synth_drum_events"],
                        choices=list(synthetic.TASKS))
    parser.add_argument("--grid-points", type=int, default=8, help="grid points of both protocols")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run ours with this many training seeds and compare their mean (one run is one draw)")
    parser.add_argument("--model-options", default="{}", help="JSON options of hear_msm_mae for the embeddings")
    parser.add_argument("--heareval-env", type=Path, default=Path("/work/venv-heareval"))
    parser.add_argument("--reuse", action="store_true", help="reuse hear-eval-kit's earlier results in --work")
    args = parser.parse_args()

    model_options = parse_model_options(args.model_options, args.model)
    python = heareval_python(args.heareval_env)
    tasks_dir = args.work / "tasks"
    folders = [f"{name}-{synthetic.VERSION}-full" for name in args.tasks]
    if not all((tasks_dir / f / "task_metadata.json").exists() for f in folders):
        synthetic.generate(tasks_dir, tasks=args.tasks)
    model_out = embed_tasks("hear_msm_mae", tasks_dir, args.work / "embeddings", args.model, model_options,
                            folders)
    heareval_work = args.work / "heareval"
    heareval_work.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in folders:
        data = load_task_data(model_out / folder)
        theirs_s, theirs_cpu = run_heareval(python, model_out / folder, heareval_work, args.grid_points,
                                           args.reuse)
        start, start_cpu = time.perf_counter(), time.process_time()
        runs = [run_protocol(data, ProtocolConfig(grid_points=args.grid_points, train_seed=seed))
                for seed in range(args.seeds)]
        ours_s = (time.perf_counter() - start) / args.seeds  # per run of the protocol, like theirs
        ours_cpu = (time.process_time() - start_cpu) / args.seeds
        primary = runs[0]["primary_score"]
        theirs = heareval_primary(heareval_work / folder, primary)
        seed_scores = [run["scores"][primary]["mean"] for run in runs]
        ours_score = float(sum(seed_scores) / len(seed_scores))
        rows.append({"task": folder, "score": primary, "heareval": theirs, "ours": ours_score,
                     "ours_per_seed": seed_scores, "difference": abs(ours_score - theirs),
                     "heareval_seconds": theirs_s, "ours_seconds": ours_s, "speedup": theirs_s / ours_s,
                     "heareval_cpu_seconds": theirs_cpu, "ours_cpu_seconds": ours_cpu,
                     "cpu_speedup": theirs_cpu / ours_cpu if theirs_cpu else None,
                     "ours_hparams": [run["hparams"] for run in runs], "grid_points": args.grid_points,
                     "model_options": model_options})
        print(f"{folder}: heareval {theirs:.3f} in {theirs_s:.0f} s, ours {ours_score:.3f} in {ours_s:.0f} s",
              file=sys.stderr)
    print(f"{'task':28} {'score':22} {'heareval':>8} {'ours':>6} {'|diff|':>6} {'heareval s':>10} "
          f"{'ours s':>7} {'speedup':>7} {'CPU speedup':>11}")
    for r in rows:
        cpu = f"{r['cpu_speedup']:10.1f}x" if r["cpu_speedup"] else f"{'–':>11}"
        print(f"{r['task']:28} {r['score']:22} {r['heareval']:8.3f} {r['ours']:6.3f} {r['difference']:6.3f} "
              f"{r['heareval_seconds']:10.0f} {r['ours_seconds']:7.0f} {r['speedup']:6.1f}x {cpu}")
    within = all(r["difference"] <= SCORE_TOLERANCE for r in rows)
    fast = all(r["speedup"] >= SPEEDUP_TARGET for r in rows)
    print(f"scores within {SCORE_TOLERANCE}: {'yes' if within else 'NO'}; "
          f"at least {SPEEDUP_TARGET:g}x faster: {'yes' if fast else 'NO'}")
    (args.work / "fidelity.json").write_text(json.dumps({"rows": rows, "scores_within_tolerance": within,
                                                         "speedup_target_met": fast}, indent=1))


if __name__ == "__main__":
    main()
