"""A paper's HEAR 2021 table in one command: its checkpoint and options, hear-eval-kit's protocol, its tasks.

    python -m eval.reproduce msm-mae-paper --tasks-dir DIR [--fetch] [--seeds N] [--out OUT]
                             [--tasks FOLDER ...] [--grid-points 8] [--zenodo URL]

The paper (eval.papers: checkpoint, model options, tasks) is evaluated on those of its tasks (or of --tasks, some of
them) that are in DIR — the Zenodo tasks at 48 kHz as they are, resampled as they are read (eval.tasks) — with
hear-eval-kit's downstream protocol (eval.hear_protocol, our exact implementation of it; --seeds training seeds 42,
43, ...), through eval.run's machinery (embeddings, cached units of work, torchrun sharding: `torchrun
--nproc_per_node N -m eval.reproduce ...`; the GPU when there is one). --fetch first fetches the missing tasks
(eval.data, verified); without it, the missing ones are named with the command that fetches them. The checkpoint is
an official name, fetched into the package's cache on first use (hear_msm_mae.releases).

Output (resumable: a re-run reuses finished embeddings and units of work):
    OUT/embeddings/..., OUT/results/...      as eval.run writes them
    OUT/reproduce.md, OUT/reproduce.json     our primary score per task (mean, and the spread over
                                             seeds, or over folds for one seed) beside the paper's
                                             published one (hear2021_leaderboard.csv) and the difference;
                                             the best HEAR 2021 submission for context
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from hear_msm_mae.atomic import atomic_write
from hear_msm_mae.distributed import Distributed
from hear_msm_mae.download import DownloadError
from hear_msm_mae.releases import fetch_checkpoint

from .data import ZENODO, fetch_all, plan_fetch
from .embed import load_module, save_json
from .hear_protocol import ProtocolConfig, seeds
from .papers import PAPERS, Paper
from .report import read_leaderboard, references, task_title
from .run import evaluate_module
from .tasks import TaskError


def comparison(paper: Paper, results: List[dict], missing: List[str], tasks_dir: Path) -> str:
    """Markdown: ours beside the paper's published scores, per task."""
    refs = references(read_leaderboard())
    lines = [f"# {paper.title}: ours beside the published numbers", "",
             f"Checkpoint {paper.checkpoint}, options {paper.model_options}, hear-eval-kit's protocol.", "",
             "| task | score | ours | spread over | paper | ours − paper | best HEAR 2021 |",
             "|---|---|---|---|---|---|---|"]
    for result in results:
        title = task_title(result["task"])
        ref = refs.get(title)
        score = result["scores"][result["primary_score"]]
        spread = f"{len(result['seeds'])} seeds" if result.get("spread") == "seeds" else \
            f"{len(result['folds'])} folds"
        paper_score = ref.paper if ref else None
        difference = f"{score['mean'] - paper_score:+.3f}" if paper_score is not None else "–"
        best = f"{ref.best_2021:.3f} ({ref.best_2021_model})" if ref and ref.best_2021 is not None else "–"
        lines.append(f"| {title} | {result['primary_score']} | {score['mean']:.3f} ± {score['std']:.3f} | {spread} | "
                     f"{'–' if paper_score is None else f'{paper_score:.3f}'} | {difference} | {best} |")
    lines += ["", "The paper's numbers: only its abstract's two (73.4% CREMA-D, 85.8% LibriCount) could be found "
              "(PMLR 166:1-24 / arXiv:2204.12260); eval.papers says how its 15 tasks were chosen."]
    absent = [t for t in missing if not (tasks_dir / t / "task_metadata.json").is_file()]
    if missing:
        lines += ["", f"Not evaluated ({len(missing)} of the paper's {len(paper.tasks)} tasks): {', '.join(missing)}."]
    if absent:
        lines += ["", f"Not in {tasks_dir}: fetch them with", "",
                  f"    python -m eval.data fetch {' '.join(absent)} --to {tasks_dir}"]
    return "\n".join(lines) + "\n"


def reproduce(paper: Paper, tasks: Sequence[str], tasks_dir: Path, out: Path, config: ProtocolConfig, fetch: bool,
              zenodo: str, dist: Distributed) -> Optional[str]:
    """Evaluate those of the paper's `tasks` that are in tasks_dir (fetching the missing ones first with `fetch`);
    rank 0 writes and returns the comparison, the other ranks None."""
    if dist.main:
        tasks_dir.mkdir(parents=True, exist_ok=True)
        if fetch:
            fetch_all(plan_fetch(tasks, tasks_dir, zenodo), tasks_dir)
        fetch_checkpoint(paper.checkpoint)  # once, before every rank loads it
    dist.barrier()
    present = [t for t in tasks if (tasks_dir / t / "task_metadata.json").is_file()]
    missing = [t for t in paper.tasks if t not in present]
    if not present:
        raise SystemExit(f"error: none of the {len(tasks)} tasks of {paper.name} asked for is in {tasks_dir}; fetch "
                         f"them with python -m eval.data fetch {' '.join(tasks)} --to {tasks_dir} (or add --fetch)")
    loaded = load_module(paper.module, paper.checkpoint, paper.model_options, dist.device)
    results = evaluate_module(loaded, tasks_dir, out, ("hear",), config, present, dist)
    if not dist.main:
        return None
    table = comparison(paper, results, missing, tasks_dir)
    save_json(out / "reproduce.json", {"paper": paper.name, "checkpoint": paper.checkpoint,
                                       "model_options": paper.model_options, "seeds": list(config.seeds),
                                       "missing": missing, "results": results}, indent=1)
    with atomic_write(out / "reproduce.md", "w") as f:
        f.write(table)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("paper", choices=sorted(PAPERS), help="which paper's table")
    parser.add_argument("--tasks-dir", type=Path, required=True, help="folder of HEAR task folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/<paper>)")
    parser.add_argument("--fetch", action="store_true", help="fetch the missing tasks first (eval.data)")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these of the paper's task folders")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 42, 43, ... (default 1)")
    parser.add_argument("--grid-points", type=int, default=8, help="hear-eval-kit's grid points (default 8)")
    parser.add_argument("--zenodo", default=ZENODO, help=f"Zenodo's address for --fetch (default {ZENODO})")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.grid_points < 1:
        raise SystemExit("error: --seeds and --grid-points must be at least 1")
    paper = PAPERS[args.paper]
    tasks = args.tasks or list(paper.tasks)
    if set(tasks) - set(paper.tasks):
        raise SystemExit(f"error: {sorted(set(tasks) - set(paper.tasks))} are not tasks of {paper.name}: "
                         f"{', '.join(paper.tasks)}")
    dist = Distributed.start()
    try:
        config = ProtocolConfig(grid_points=args.grid_points, device=str(dist.device), seeds=seeds(args.seeds))
        table = reproduce(paper, tasks, args.tasks_dir, args.out or Path("results") / paper.name, config, args.fetch,
                          args.zenodo, dist)
    except (DownloadError, TaskError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        dist.close()
    if table:
        print(table, file=sys.stdout)


if __name__ == "__main__":
    main()
