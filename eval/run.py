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
The package is used only through the HEAR API: the module named by --module is imported and its
load_model called (eval.embed.load_module), once per set of options.

The demo builds the small synthetic tasks (eval.synthetic) into DIR/tasks and evaluates the bundled
checkpoint (or --model) on them with the linear probe unless --protocol says otherwise, embedding in
float32 (model option dtype, unless --model-options says otherwise) so that its numbers do not depend on
whether the machine has fast bfloat16; beside it, the model card's references (eval.baselines): the same
network with random weights and log-mel statistics.

`--hop-comparison` (always on in the demo): the event tasks are embedded again with native timestamp
frames, one per patch column (model option timestamp_hop_ms = the model's `native_hop_ms`, 160 ms for
16x16 patches, 100 ms for AST), and scored beside the run's hop (the model's `timestamp_hop_ms`, by
default 40 ms) with onset F-measures at 50 ms and 200 ms collars. Every family's HEAR module states both
hops on its model; a module whose model does not is refused before anything is embedded.

Scale-out over processes/GPUs: `torchrun --nproc_per_node N -m eval.run ...` embeds as eval.embed does, then
spreads the downstream units of work (a task's linear probe, a task's HEAR protocol with one seed) over the
N processes; rank 0 writes the results and the report, which equal a one-process run's.

Output, all resumable (a re-run skips finished embeddings and finished units of work):
    DIR/embeddings/<module+options>/<task>/     hear-eval-kit's embedding format (eval.embedded)
    DIR/results/<run>/<task>.<protocol>.json    one task's scores (per fold, mean and std), settings,
                                                the digest of the audio embedded (eval.embed)
    DIR/results/<run>/<task>.hear.seed<S>.json  one seed's HEAR protocol result
    DIR/results.json                            every result of this run (the module's, not the references')
    DIR/results.md, results.csv, results.png    tables and chart beside the HEAR 2021 leaderboard
    DIR/timestamp_resolution.md                 the hop comparison, when made
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hear_msm_mae.atomic import atomic_write
from hear_msm_mae.distributed import Distributed
from hear_msm_mae.download import DownloadError

from .embed import LoadedModule, embed_tasks, load_module, parse_model_options, save_json
from .embedded import embedded_task_dirs, load_task_data, read_audio_digest, read_embedded_task
from .hear_protocol import ProtocolConfig, run_seed, seeds
from .linear_probe import ProbeConfig, run_linear_probe
from .report import write_report
from .statistics import combine_seeds

PROTOCOLS = {"linear": ("linear",), "hear": ("hear",), "both": ("linear", "hear")}
ONSET_SCORES = ("event_onset_50ms_fms", "event_onset_200ms_fms")
DEMO_MODULE = "hear_msm_mae"
REFERENCES_MODULE = "eval.baselines"  # the model card's references, a HEAR module like any other


def unit_path(results_dir: Path, task: str, protocol: str, seed: Optional[int]) -> Path:
    """The cache file of one unit of work: a task's linear probe, or its HEAR protocol with one seed."""
    return results_dir / (f"{task}.{protocol}.json" if seed is None else f"{task}.{protocol}.seed{seed}.json")


def cached(path: Path, settings: Optional[dict]):
    """A unit's cached result, None when missing or made with other settings."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("settings") == settings else None


def evaluate_embeddings(model_out: Path, results_dir: Path, protocols, config: ProtocolConfig,
                        tasks: Optional[List[str]] = None, dist: Distributed = Distributed()) -> List[dict]:
    """Run the downstream protocols on every embedded task under `model_out`, each unit of work cached in its
    own file. Under torchrun every process computes every world-th unit not cached yet; rank 0 then returns
    the task results (written beside the units), the other ranks []."""
    task_dirs = embedded_task_dirs(model_out)
    if tasks:
        task_dirs = [p for p in task_dirs if p.name in set(tasks)]
    settings = {"grid_points": config.grid_points, "grid": config.grid, "dtype": config.dtype}
    units = [(task_dir, protocol, seed) for task_dir in task_dirs for protocol in protocols
             for seed in (config.seeds if protocol == "hear" else (None,))]
    todo = [u for u in units if cached(unit_path(results_dir, u[0].name, u[1], u[2]),
                                       settings if u[1] == "hear" else None) is None]
    data, data_dir = None, None
    for task_dir, protocol, seed in todo[dist.rank::dist.world_size]:
        if data_dir != task_dir:
            data, data_dir = load_task_data(task_dir), task_dir
        start = time.perf_counter()
        result = run_seed(data, config, seed) if protocol == "hear" else run_linear_probe(data, ProbeConfig())
        result["task_digest"] = read_audio_digest(task_dir)
        primary = result["scores"][result["primary_score"]]
        print(f"{task_dir.name} [{protocol}{'' if seed is None else f', seed {seed}'}]: {result['primary_score']} "
              f"{primary['mean']:.3f} ± {primary['std']:.3f} ({time.perf_counter() - start:.0f} s), "
              f"task digest {result['task_digest'] or '–'}", file=sys.stderr)
        save_json(unit_path(results_dir, task_dir.name, protocol, seed), result, indent=1)
    dist.barrier()
    if not dist.main:
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
                save_json(results_dir / f"{task_dir.name}.{protocol}.json", result, indent=1)
            results.append(result)
    return results


def run_name(loaded: LoadedModule) -> str:
    """'<module>-key=value...', then '@<checkpoint file stem>' when a model file was given."""
    return f"{loaded.dir_name}@{Path(loaded.model_path).stem}" if loaded.model_path else loaded.dir_name


def evaluate_module(loaded: LoadedModule, tasks_dir: Path, out: Path, protocols, config: ProtocolConfig,
                    tasks: Optional[Sequence[str]], dist: Distributed) -> List[dict]:
    """Embed the tasks with a loaded module into OUT/embeddings and evaluate them (results in OUT/results)."""
    model_out = embed_tasks(loaded, tasks_dir, out / "embeddings", tasks, dist=dist)
    return evaluate_embeddings(model_out, out / "results" / run_name(loaded), protocols, config, tasks, dist)


def reference_runs(model_file_path: Optional[str]) -> Dict[str, Tuple[str, Optional[str], dict]]:
    """The model card's references beside an MSM-MAE checkpoint (None: the bundled one), embedded in float32:
    column name -> (HEAR module, model file, load_model options)."""
    return {"random weights": (REFERENCES_MODULE, model_file_path, {"reference": "random", "dtype": "float32"}),
            "log-mel statistics": (REFERENCES_MODULE, None, {"reference": "log-mel"})}


def model_hops(loaded: LoadedModule) -> Tuple[float, float]:
    """(timestamp hop, native hop) in ms, as the loaded model states them."""
    try:
        return float(loaded.model.timestamp_hop_ms), float(loaded.model.native_hop_ms)
    except AttributeError:
        raise SystemExit(f"error: --hop-comparison needs a model that states its hops (timestamp_hop_ms and "
                         f"native_hop_ms, as every hear_msm_mae module's does); {loaded.name}.load_model returned "
                         f"a {type(loaded.model).__name__} without them") from None


def hop_comparison(run: List[dict], run_hop_ms: float, native: List[dict], native_ms: float) -> str:
    """Markdown: onset F-measures of the event tasks at the run's hop and at native (patch column) frames."""
    lines = ["| task | protocol | timestamp hop | onset F (50 ms) | onset F (200 ms) |", "|---|---|---|---|---|"]
    for hop, results in ((f"{run_hop_ms:g} ms", run), (f"{native_ms:g} ms (native)", native)):
        for r in results:
            cells = [r["scores"].get(k) for k in ONSET_SCORES]
            if any(cells):
                text = [f"{c['mean']:.3f} ± {c['std']:.3f}" if c else "–" for c in cells]
                lines.append(f"| {r['task']} | {r['protocol']} | {hop} | {text[0]} | {text[1]} |")
    return "\n".join(lines) + "\n"


def onset_scored_tasks(model_out: Path, tasks: Optional[List[str]]) -> List[str]:
    """The embedded tasks (of `tasks`, default all) scored with onset F-measures: the hop comparison's."""
    names = [p.name for p in embedded_task_dirs(model_out) if not tasks or p.name in tasks]
    return [n for n in names if set(ONSET_SCORES) & set(read_embedded_task(model_out / n).evaluation)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--demo", action="store_true", help="build the synthetic tasks and evaluate on them")
    parser.add_argument("--tiny", action="store_true", help="demo with the tiny synthetic tasks (for tests)")
    parser.add_argument("--tasks-dir", type=Path, help="folder of HEAR task folders")
    parser.add_argument("--tasks", nargs="+", help="task folder names to evaluate (default: all)")
    parser.add_argument("--module", default=DEMO_MODULE, help=f"HEAR module (default: {DEMO_MODULE})")
    parser.add_argument("--model", default=None, help="model weights for load_model (default: the module's)")
    parser.add_argument("--model-options", default="{}", help="JSON dict of keyword arguments for load_model")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default=None,
                        help="downstream models (default: both; linear in the demo)")
    parser.add_argument("--hop-comparison", action="store_true",
                        help="also score event tasks with one timestamp frame per patch column")
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
    dist = Distributed.start()
    try:
        run(args, options, dist)
    except (ValueError, FileNotFoundError, DownloadError) as e:  # a task folder, module, model or option that is wrong
        raise SystemExit(f"error: {e}") from None
    finally:
        dist.close()


def run(args, options: dict, dist: Distributed) -> None:
    if args.demo:
        from . import synthetic

        if args.module != DEMO_MODULE:
            raise SystemExit(f"error: the demo evaluates {DEMO_MODULE}")
        tasks_dir = args.out / "tasks"
        mode = "tiny" if args.tiny else "full"
        if dist.main and not all((tasks_dir / f"{name}-{synthetic.VERSION}-{mode}" / "task_metadata.json").exists()
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

    config = ProtocolConfig(grid_points=args.grid_points, device=str(dist.device), seeds=seeds(args.seeds),
                            dtype="bfloat16" if args.fast else args.dtype)
    loaded = load_module(args.module, args.model, options, dist.device)
    run_hop, native_hop = model_hops(loaded) if compare_hops else (None, None)
    name = run_name(loaded)
    runs = {name: evaluate_module(loaded, tasks_dir, args.out, protocols, config, args.tasks, dist)}
    event_tasks = onset_scored_tasks(args.out / "embeddings" / loaded.dir_name, args.tasks) if compare_hops else []
    del loaded  # one model in memory at a time
    compared = bool(event_tasks) and native_hop != run_hop
    native_name = f"{name}, hop {native_hop:g} ms" if compared else None
    if compared:
        native = load_module(args.module, args.model, {**options, "timestamp_hop_ms": native_hop}, dist.device)
        runs[native_name] = evaluate_module(native, tasks_dir, args.out, protocols, config, event_tasks, dist)
        del native
    if args.demo:
        for label, (module, model, reference_options) in reference_runs(args.model).items():
            reference = load_module(module, model, reference_options, dist.device)
            runs[label] = evaluate_module(reference, tasks_dir, args.out, protocols, config, args.tasks, dist)
            del reference
    if not dist.main:
        return
    if compared:
        with atomic_write(args.out / "timestamp_resolution.md", "w") as f:
            f.write(hop_comparison([r for r in runs[name] if r["task"] in event_tasks], run_hop,
                                   runs[native_name], native_hop))
    save_json(args.out / "results.json", {"run": name, "module": args.module, "model": args.model,
                                          "model_options": options, "results": runs[name]}, indent=1)
    for kind, path in write_report(runs, args.out).items():
        print(f"{kind}: {path}")
    if compared:
        print(f"timestamp resolution: {args.out / 'timestamp_resolution.md'}")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
