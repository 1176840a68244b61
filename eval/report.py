"""Results tables (Markdown, CSV) and a bar chart: our runs next to the HEAR 2021 leaderboard.

A *run* is one evaluation (a module/checkpoint/options) with its per-task results, the dicts that
`eval.hear_protocol.run_protocol` and `eval.linear_probe.run_linear_probe` return. The references are
read from `hear2021_leaderboard.csv` beside this file (HEAR 2021 leaderboard, hearbenchmark/hear-leaderboard,
Apache-2.0, plus the MSM-MAE paper's CREMA-D and LibriCount scores): the wav2vec2 and CREPE baselines,
the best HEAR 2021 submission per task and the paper. Tasks are matched to leaderboard columns by
their HEAR 2021 folder name (eval.tasks.HEAR2021_TASKS); other tasks (e.g. synthetic ones) get no
reference scores.

    python -m eval.report --out DIR NAME=RESULTS_JSON [NAME=RESULTS_JSON ...]

puts several runs' results.json (written by eval.run) side by side.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from hear_msm_mae.atomic import atomic_write

from .tasks import HEAR2021_TASKS

LEADERBOARD = Path(__file__).with_name("hear2021_leaderboard.csv")
PAPER_MODEL = "MSM-MAE 80x512p16x16 (paper)"


@dataclass
class Reference:
    """Reference primary scores of one task (None where the leaderboard has none)."""
    wav2vec2: Optional[float] = None
    crepe: Optional[float] = None
    best_2021: Optional[float] = None
    best_2021_model: str = ""
    paper: Optional[float] = None


def read_leaderboard(path: Path = LEADERBOARD) -> List[dict]:
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def references(leaderboard: List[dict]) -> Dict[str, Reference]:
    """Leaderboard column title -> Reference."""
    by_model = {row["Model"]: row for row in leaderboard}

    def value(row: Optional[dict], title: str) -> Optional[float]:
        return float(row[title]) if row and row.get(title) else None

    titles = [k for k in leaderboard[0] if k not in ("Model", "URL", "Submission Date")]
    out = {}
    for title in titles:
        entries = [(float(r[title]), r["Model"]) for r in leaderboard
                   if r["Submission Date"] == "HEAR 2021" and r.get(title)]
        best = max(entries) if entries else (None, "")
        out[title] = Reference(value(by_model.get("wav2vec2"), title), value(by_model.get("CREPE"), title),
                               best[0], best[1], value(by_model.get(PAPER_MODEL), title))
    return out


def task_title(task_folder: str) -> str:
    spec = HEAR2021_TASKS.get(task_folder)
    return spec.title if spec else task_folder


def fmt(mean: Optional[float], std: Optional[float] = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if std else f"{mean:.3f}"


def result_rows(runs: Dict[str, List[dict]]) -> List[dict]:
    """Long format: one row per run, task, protocol and score."""
    rows = []
    for run, results in runs.items():
        for r in results:
            for score, value in r["scores"].items():
                rows.append({"run": run, "task": r["task"], "title": task_title(r["task"]), "protocol": r["protocol"],
                             "score": score, "primary": score == r["primary_score"], "mean": value["mean"],
                             "std": value["std"], "folds": len(r["folds"]), "train_seconds": r["train_seconds"],
                             "task_digest": r.get("task_digest")})
    return rows


def columns(runs: Dict[str, List[dict]]) -> List[tuple]:
    """(run, protocol) pairs in first-seen order."""
    seen = []
    for run, results in runs.items():
        for r in results:
            if (run, r["protocol"]) not in seen:
                seen.append((run, r["protocol"]))
    return seen


def short_digest(digest: Optional[str]) -> str:
    """'sha256:0986047…' -> its first 12 hex digits ('–' for none)."""
    return digest.split(":")[-1][:12] if digest else "–"


def primary_table(runs: Dict[str, List[dict]], refs: Dict[str, Reference]) -> List[dict]:
    """One row per task: the task's digest where one is recorded (two that differ: the runs were scored on
    different versions of the task), its primary score, each run and protocol, then the references; a
    column empty for every task (e.g. the references on tasks outside HEAR 2021) is left out."""
    tasks, primary, digests = [], {}, {}
    cells: Dict[tuple, str] = {}
    for run, results in runs.items():
        for r in results:
            if r["task"] not in tasks:
                tasks.append(r["task"])
            primary[r["task"]] = r["primary_score"]
            digests.setdefault(r["task"], {})[short_digest(r.get("task_digest"))] = None  # an ordered set
            s = r["scores"][r["primary_score"]]
            cells[(r["task"], run, r["protocol"])] = fmt(s["mean"], s["std"])
    any_digest = any(d != "–" for found in digests.values() for d in found)
    table = []
    for task in tasks:
        ref = refs.get(task_title(task), Reference())
        row = {"task": task_title(task)}
        if any_digest:
            row["task digest"] = " ≠ ".join(digests[task])
        row["score"] = primary[task]
        for run, protocol in columns(runs):
            row[f"{run} ({protocol})"] = cells.get((task, run, protocol), "–")
        row["wav2vec2"] = fmt(ref.wav2vec2)
        row["CREPE"] = fmt(ref.crepe)
        row["best HEAR 2021"] = f"{fmt(ref.best_2021)} ({ref.best_2021_model})" if ref.best_2021 else "–"
        row["MSM-MAE paper"] = fmt(ref.paper)
        table.append(row)
    empty = [column for column in table[0] if all(row[column] == "–" for row in table)]
    return [{k: v for k, v in row.items() if k not in empty} for row in table]


def markdown(table: List[dict]) -> str:
    head = list(table[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(row[k]) for k in head) + " |" for row in table]
    return "\n".join(lines) + "\n"


def bar_chart(runs: Dict[str, List[dict]], refs: Dict[str, Reference], path: Path) -> None:
    """Grouped bars per task, labelled with their values: each run/protocol's primary mean (with its std),
    then the references that have a score for the task; the legend beside the axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, Dict[str, tuple]] = {}  # name -> {task title: (mean, std)}
    tasks: List[str] = []
    for run, results in runs.items():
        for r in results:
            title = task_title(r["task"])
            if title not in tasks:
                tasks.append(title)
            s = r["scores"][r["primary_score"]]
            series.setdefault(f"{run} ({r['protocol']})", {})[title] = (s["mean"], s["std"])
    for name, attr in (("wav2vec2", "wav2vec2"), ("CREPE", "crepe"), ("best HEAR 2021", "best_2021"),
                       ("MSM-MAE paper", "paper")):
        values = {t: (getattr(refs[t], attr), 0.0) for t in tasks if t in refs and getattr(refs[t], attr) is not None}
        if values:
            series[name] = values
    colours = {name: f"C{i % 10}" for i, name in enumerate(series)}
    per_task = [[name for name in series if task in series[name]] for task in tasks]
    width = 0.8 / max(map(len, per_task))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * sum(map(len, per_task)) + 0.6 * len(tasks)), 4.5))
    labelled = set()
    for x, (task, names) in enumerate(zip(tasks, per_task)):
        for j, name in enumerate(names):  # the task's bars side by side, centred on its tick
            mean, std = series[name][task]
            centre = x + (j - (len(names) - 1) / 2) * width
            ax.bar(centre, mean, width, yerr=std or None, capsize=2, color=colours[name],
                   label=None if name in labelled else name)
            ax.text(centre, mean + (std or 0.0) + 0.01, fmt(mean), rotation=90, ha="center", va="bottom", fontsize=7)
            labelled.add(name)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylabel("primary score (test, mean over folds)")
    ax.set_ylim(0, 1.15)  # room for the values above bars near 1
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: list(series).index(names[i]))
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")  # the legend and tick labels inside the picture
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def write_report(runs: Dict[str, List[dict]], out_dir, leaderboard: Path = LEADERBOARD) -> Dict[str, Path]:
    """results.csv (every score), results.md (primary scores beside the references, with the tasks'
    digests where recorded), results.png."""
    if not any(runs.values()):
        raise ValueError("no results to report")
    out_dir = Path(out_dir)
    refs = references(read_leaderboard(leaderboard))
    paths = {"csv": out_dir / "results.csv", "markdown": out_dir / "results.md", "chart": out_dir / "results.png"}
    rows = result_rows(runs)
    with atomic_write(paths["csv"], "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(paths["markdown"], "w") as f:
        f.write(markdown(primary_table(runs, refs)))
    bar_chart(runs, refs, paths["chart"])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=results.json (from eval.run)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"error: expected NAME=RESULTS_JSON with an existing file, got {item!r}")
        runs[name] = json.loads(Path(path).read_text())["results"]
    for kind, path in write_report(runs, args.out).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
