"""Is the bundled default checkpoint better than chance features? A linear probe on every synthetic task.

    python benchmarks/probe_quality.py [--checkpoint C] [--work DIR] [--out FILE.json] [--tiny]

Builds the small labelled HEAR-format tasks of eval.synthetic (pitch, spoken word, speaker count,
drum events; about 15 s, the same tasks on every machine with the Makefile's packages: the table gives
their digests) and evaluates three feature sets, each a HEAR module embedded into WORK (a fresh temporary
folder unless --work) and probed exactly as `make demo` does it (eval.run.evaluate_module):

  pretrained   the checkpoint's scene embeddings (event task: its timestamp embeddings every 40 ms), in
               float32 as every machine computes them (bfloat16 only where the hardware is fast at it)
  random       eval.baselines "random": the same architecture with random weights (MAE initialisation, seed 0)
  log-mel      eval.baselines "log-mel": mean and standard deviation over time of each of the 80 log-mel
               bins (event task: over the same 160 ms window a timestamp embedding covers)

Probe: eval.linear_probe, the project's logistic-regression probe under the HEAR protocol (features
standardised on the training rows, C chosen on the validation split, scored on the test split with
the task's primary metric; k-fold tasks averaged over the folds as hear-eval-kit rotates them; the
event task on frames at a 40 ms hop, decoded into events and scored by onset F-measure). The table is
printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval import synthetic  # noqa: E402
from eval.embed import load_module  # noqa: E402
from eval.hear_protocol import ProtocolConfig  # noqa: E402
from eval.report import short_digest  # noqa: E402
from eval.run import evaluate_module, reference_runs  # noqa: E402
from eval.tasks import read_task  # noqa: E402
from hear_msm_mae import default_checkpoint  # noqa: E402
from hear_msm_mae.distributed import Distributed  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    parser.add_argument("--work", type=Path, default=None,
                        help="tasks, embeddings and probe results (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "probe_quality.json")
    parser.add_argument("--tiny", action="store_true", help="a handful of files per task (to try the script)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(default_checkpoint())
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        tasks = sorted((read_task(path) for path in synthetic.generate(work / "tasks", tiny=args.tiny, seed=0)),
                       key=lambda task: task.name)
        feature_sets = {"pretrained": ("hear_msm_mae", checkpoint, {"dtype": "float32"}),
                        **{options["reference"]: (module, model, options)  # "random", "log-mel"
                           for module, model, options in reference_runs(checkpoint).values()}}
        results: Dict[str, Dict[str, float]] = {task.name: {} for task in tasks}
        for name, (module, model, options) in feature_sets.items():
            started = time.time()
            loaded = load_module(module, model, options, torch.device("cpu"))
            for r in evaluate_module(loaded, work / "tasks", work, ("linear",), ProtocolConfig(), None, Distributed()):
                results[r["task"]][name] = r["scores"][r["primary_score"]]["mean"]
            print(f"{name}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
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
