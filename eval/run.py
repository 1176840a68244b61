"""The whole evaluation in one command: embed every task, train the downstream models, score, report.

    python -m eval.run --tasks-dir T --module hear_msm_mae [--model CKPT] [--model-options JSON]
                       --out DIR [--protocol linear|hear|both] [--tasks FOLDER ...] [--hop-comparison]
    python -m eval.run --demo --out DIR [--model CKPT] [--protocol ...]

The first form evaluates any HEAR module (ours with any checkpoint and options, or e.g. hearbaseline)
on HEAR-format task folders (the HEAR 2021 tasks at 16 kHz); `--protocol hear` is the official HEAR
2021 MLP protocol (eval.hear_protocol: hear-eval-kit's numbers within seed noise), `linear` the
logistic-regression probe (eval.linear_probe). `--seeds N` repeats the HEAR protocol with seeds 42, 43, ...
(hear-eval-kit's is 42) and reports, per score, the mean over seeds of the mean over folds, the standard
deviation and a 95% interval over seeds (one seed: mean and standard deviation over folds); `--fast` (=
`--dtype bfloat16`) runs its matmuls in bfloat16 on centred inputs: faster where the hardware has fast
bfloat16, the same model in exact arithmetic, scores within seed noise of float32's.
The demo builds the small synthetic tasks (eval.synthetic) into DIR/tasks and evaluates the bundled
checkpoint (or --model) on them with the linear probe unless --protocol says otherwise, embedding in
float32 (model option dtype, unless --model-options says otherwise) so that its numbers do not depend on
whether the machine has fast bfloat16.

`--hop-comparison` (always on in the demo, for hear_msm_mae): the event tasks are embedded again with
native timestamp frames, one per patch column (model option timestamp_hop_ms = the patch width, 160 ms
for 16x16 patches), and scored beside the run's hop (default 40 ms) with onset F-measures at 50 ms and
200 ms collars.

Scale-out over processes/GPUs: `torchrun --nproc_per_node N -m eval.run ...` embeds as eval.embed does, then
spreads the downstream units of work (a task's linear probe, a task's HEAR protocol with one seed) over the
N processes; rank 0 writes the results and the report, which equal a one-process run's.

Output, all resumable (a re-run skips finished embeddings and finished units of work):
    DIR/embeddings/<module+options>/<task>/     hear-eval-kit's embedding format (eval.embed)
    DIR/results/<run>/<task>.<protocol>.json    one task's scores (per fold, mean and std), settings,
                                                the task's digest (eval.synthetic records one per task)
    DIR/results/<run>/<task>.hear.seed<S>.json  one seed's HEAR protocol result
    DIR/results.json                            every result of this run
    DIR/results.md, results.csv, results.png    tables and chart beside the HEAR 2021 leaderboard
    DIR/timestamp_resolution.md                 the hop comparison, when made
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from hear_msm_mae.atomic import atomic_write
from hear_msm_mae.checkpoint import load_checkpoint
from hear_msm_mae.frontend import build_frontend
from hear_msm_mae.msm_mae import FAMILY, default_checkpoint

from .embed import DONE_FILE, Dist, embed_tasks, model_dir_name, parse_model_options, read_embedded_task
from .hear_protocol import ProtocolConfig, combine_seeds, load_task_data, run_seed, seeds
from .linear_probe import ProbeConfig, run_linear_probe
from .report import write_report

PROTOCOLS = {"linear": ("linear",), "hear": ("hear",), "both": ("linear", "hear")}


def save_json(path: Path, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)


def unit_path(results_dir: Path, task: str, protocol: str, seed: Optional[int]) -> Path:
    """The cache file of one unit of work: a task's linear probe, or its HEAR protocol with one seed."""
    return results_dir / (f"{task}.{protocol}.json" if seed is None else f"{task}.{protocol}.seed{seed}.json")


def cached(path: Path, settings: Optional[dict]):
    """A unit's cached result, None when missing or made with other settings."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("settings") == settings else None


def task_digest(task_dir: Path) -> Optional[str]:
    """The digest of the task a folder's embeddings were made from (eval.synthetic records one per task)."""
    return json.loads((task_dir / "task_metadata.json").read_text()).get("digest")


def evaluate_embeddings(model_out: Path, results_dir: Path, protocols, config: ProtocolConfig,
                        tasks: Optional[List[str]] = None, dist: Dist = Dist()) -> List[dict]:
    """Run the downstream protocols on every embedded task under `model_out`, each unit of work cached in its
    own file. Under torchrun every process computes every world-th unit not cached yet; rank 0 then returns
    the task results (written beside the units), the other ranks []."""
    task_dirs = sorted(p for p in model_out.iterdir() if (p / DONE_FILE).exists())
    if tasks:
        task_dirs = [p for p in task_dirs if p.name in set(tasks)]
    settings = {"grid_points": config.grid_points, "grid": config.grid, "dtype": config.dtype}
    units = [(task_dir, protocol, seed) for task_dir in task_dirs for protocol in protocols
             for seed in (config.seeds if protocol == "hear" else (None,))]
    todo = [u for u in units if cached(unit_path(results_dir, u[0].name, u[1], u[2]),
                                       settings if u[1] == "hear" else None) is None]
    data, data_dir = None, None
    for task_dir, protocol, seed in todo[dist.rank::dist.world]:
        if data_dir != task_dir:
            data, data_dir = load_task_data(task_dir), task_dir
        start = time.perf_counter()
        result = run_seed(data, config, seed) if protocol == "hear" else run_linear_probe(data, ProbeConfig())
        result["task_digest"] = task_digest(task_dir)
        primary = result["scores"][result["primary_score"]]
        print(f"{task_dir.name} [{protocol}{'' if seed is None else f', seed {seed}'}]: {result['primary_score']} "
              f"{primary['mean']:.3f} ± {primary['std']:.3f} ({time.perf_counter() - start:.0f} s), "
              f"task digest {result['task_digest'] or '–'}", file=sys.stderr)
        save_json(unit_path(results_dir, task_dir.name, protocol, seed), result)
    dist.barrier()
    if dist.rank:
        return []
    results = []
    for task_dir in task_dirs:
        for protocol in protocols:
            if protocol == "linear":
                result = json.loads(unit_path(results_dir, task_dir.name, protocol, None).read_text())
            else:
                runs = [json.loads(unit_path(results_dir, task_dir.name, protocol, seed).read_text())
                        for seed in config.seeds]
                result = {"task_digest": runs[0].get("task_digest"), **combine_seeds(runs)}
                save_json(results_dir / f"{task_dir.name}.{protocol}.json", result)
            results.append(result)
    return results


def run_name(module: str, model: Optional[str], options: Dict) -> str:
    name = model_dir_name(module, options)
    return f"{name}@{Path(model).stem}" if model else name


def native_hop_ms(model: Optional[str]) -> float:
    """Width of one patch column of the checkpoint (the bundled default when None), in ms."""
    checkpoint = load_checkpoint(model or default_checkpoint())
    frontend = build_frontend(checkpoint.frontend)
    return checkpoint.grid.column_stride * frontend.hop_length * 1000 / frontend.sample_rate


def hop_comparison(run: List[dict], run_hop_ms: float, native: List[dict], native_ms: float) -> str:
    """Markdown: onset F-measures of the event tasks at the run's hop and at native (patch column) frames."""
    lines = ["| task | protocol | timestamp hop | onset F (50 ms) | onset F (200 ms) |", "|---|---|---|---|---|"]
    for hop, results in ((f"{run_hop_ms:g} ms", run), (f"{native_ms:g} ms (native)", native)):
        for r in results:
            cells = [r["scores"].get(k) for k in ("event_onset_50ms_fms", "event_onset_200ms_fms")]
            if any(cells):
                text = [f"{c['mean']:.3f} ± {c['std']:.3f}" if c else "–" for c in cells]
                lines.append(f"| {r['task']} | {r['protocol']} | {hop} | {text[0]} | {text[1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--demo", action="store_true", help="build the synthetic tasks and evaluate on them")
    parser.add_argument("--tiny", action="store_true", help="demo with the tiny synthetic tasks (for tests)")
    parser.add_argument("--tasks-dir", type=Path, help="folder of HEAR task folders")
    parser.add_argument("--tasks", nargs="+", help="task folder names to evaluate (default: all)")
    parser.add_argument("--module", default="hear_msm_mae", help="HEAR module (default: hear_msm_mae)")
    parser.add_argument("--model", default=None, help="model weights for load_model (default: the module's)")
    parser.add_argument("--model-options", default="{}", help="JSON dict of keyword arguments for load_model")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default=None,
                        help="downstream models (default: both; linear in the demo)")
    parser.add_argument("--hop-comparison", action="store_true",
                        help="also score event tasks with one timestamp frame per patch column (hear_msm_mae)")
    parser.add_argument("--grid-points", type=int, default=8, help="HEAR protocol: grid points (default 8)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="HEAR protocol: training seeds 42, 43, ... (default 1: hear-eval-kit's 42)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="precision of the HEAR protocol's MLP matmuls (default float32, hear-eval-kit's)")
    parser.add_argument("--fast", action="store_true", help="the same as --dtype bfloat16")
    args = parser.parse_args(argv)

    options = parse_model_options(args.model_options, args.model)
    if args.seeds < 1 or args.grid_points < 1:
        raise SystemExit("error: --seeds and --grid-points must be at least 1")
    dist = Dist.from_env()
    try:
        run(args, options, dist)
    finally:
        dist.close()


def run(args, options: dict, dist: Dist) -> None:
    if args.demo:
        from . import synthetic

        if args.module != "hear_msm_mae":
            raise SystemExit("error: the demo evaluates hear_msm_mae")
        if args.model is None:
            try:
                default_checkpoint()
            except FileNotFoundError as e:
                raise SystemExit(f"error: {e}; give the demo a checkpoint with --model") from None
        tasks_dir = args.out / "tasks"
        mode = "tiny" if args.tiny else "full"
        if dist.rank == 0 and not all((tasks_dir / f"{name}-{synthetic.VERSION}-{mode}" / "task_metadata.json").exists()
                                      for name in synthetic.TASKS):
            synthetic.generate(tasks_dir, tiny=args.tiny)
        dist.barrier()
        protocols = PROTOCOLS[args.protocol or "linear"]
        compare_hops = True
        # float32 unless asked otherwise: bfloat16 runs only where the hardware is fast at it, and the demo's
        # numbers should not depend on the machine
        options = {"dtype": "float32", **options}
    else:
        if args.tasks_dir is None or not args.tasks_dir.is_dir():
            raise SystemExit(f"error: --tasks-dir must be a folder of HEAR tasks, got {args.tasks_dir}")
        tasks_dir = args.tasks_dir
        protocols = PROTOCOLS[args.protocol or "both"]
        compare_hops = args.hop_comparison
    if compare_hops and args.module != "hear_msm_mae":
        raise SystemExit("error: --hop-comparison needs hear_msm_mae (model option timestamp_hop_ms)")

    config = ProtocolConfig(grid_points=args.grid_points, device=str(dist.device()), seeds=seeds(args.seeds),
                            dtype="bfloat16" if args.fast else args.dtype)
    embeddings_dir = args.out / "embeddings"
    name = run_name(args.module, args.model, options)
    model_out = embed_tasks(args.module, tasks_dir, embeddings_dir, args.model, options, args.tasks)
    runs = {name: evaluate_embeddings(model_out, args.out / "results" / name, protocols, config, args.tasks, dist)}
    event_tasks = onset_scored_tasks(model_out, args.tasks) if compare_hops else []
    run_hop = float(options.get("timestamp_hop_ms", FAMILY.timestamp_hop_ms))
    native_hop = native_hop_ms(args.model) if event_tasks else run_hop
    compared = native_hop != run_hop
    if compared:
        native_options = {**options, "timestamp_hop_ms": native_hop}
        native_out = embed_tasks(args.module, tasks_dir, embeddings_dir, args.model, native_options, event_tasks)
        native_name = f"{name}, hop {native_hop:g} ms"
        runs[native_name] = evaluate_embeddings(
            native_out, args.out / "results" / run_name(args.module, args.model, native_options), protocols,
            config, event_tasks, dist)
    if dist.rank:
        return
    if compared:
        with atomic_write(args.out / "timestamp_resolution.md", "w") as f:
            f.write(hop_comparison([r for r in runs[name] if r["task"] in event_tasks], run_hop,
                                   runs[native_name], native_hop))
    save_json(args.out / "results.json", {"run": name, "module": args.module, "model": args.model,
                                          "model_options": options, "results": runs[name]})
    for kind, path in write_report(runs, args.out).items():
        print(f"{kind}: {path}")
    if compared:
        print(f"timestamp resolution: {args.out / 'timestamp_resolution.md'}")
    print((args.out / "results.md").read_text())


def onset_scored_tasks(model_out: Path, tasks: Optional[List[str]]) -> List[str]:
    """The embedded tasks (of `tasks`, default all) scored with onset F-measures: the hop comparison's."""
    names = sorted(p.name for p in model_out.iterdir() if (p / DONE_FILE).exists() and (not tasks or p.name in tasks))
    return [n for n in names if {"event_onset_50ms_fms", "event_onset_200ms_fms"}
            & set(read_embedded_task(model_out / n).evaluation)]


if __name__ == "__main__":
    main()
