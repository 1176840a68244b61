"""`python -m eval.run` on task folders: torchrun's downstream stage gives a one-process run's results, another
family's HEAR module, the hop comparison asking the loaded model for its hops."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from heareval_reference import FAST_GRID
from test_eval_tasks import make_task

REPO = Path(__file__).resolve().parents[1]


def without_times(obj):
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if k not in ("train_seconds",)}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj


def test_torchrun_two_processes_equal_one_process(tmp_path, tiny_checkpoint):
    tasks = tmp_path / "tasks"
    fast = {"task_specific_param_grid": FAST_GRID}
    make_task(tasks, "kfold_scene-v0-full", split_mode="new_split_kfold", files_per_split=6, evaluation_params=fast)
    make_task(tasks, "scene-v0-full", files_per_split=6, seed=1, evaluation_params=fast)
    args = ["-m", "eval.run", "--tasks-dir", str(tasks), "--model", str(tiny_checkpoint), "--model-options",
            json.dumps({"dtype": "float32"}), "--protocol", "hear", "--seeds", "2", "--grid-points", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs = {"one": [sys.executable], "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc_per_node", "2"]}
    results = {}
    for name, launcher in runs.items():
        done = subprocess.run([*launcher, *args, "--out", str(tmp_path / name)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())["results"]
        assert "kfold_scene-v0-full" in done.stdout  # rank 0's report
    assert len(results["one"]) == 2 and all(r["spread"] == "seeds" for r in results["one"])
    assert without_times(results["two"]) == without_times(results["one"])
    units = sorted(p.name for p in (tmp_path / "two" / "results").rglob("*.seed*.json"))
    assert units == sorted(f"{t}.hear.seed{s}.json" for t in ("kfold_scene-v0-full", "scene-v0-full") for s in (42, 43))


def test_eval_run_with_another_family(tmp_path):
    """`python -m eval.run --module hear_msm_mae.audiomae --model pretrained.pth ...`: embeddings and scores."""
    from conftest import FAMILY_CHECKPOINTS, golden_path
    from eval import run

    tasks = tmp_path / "tasks"
    make_task(tasks, "scene-v0-full", files_per_split=6)
    checkpoint = golden_path(FAMILY_CHECKPOINTS["audiomae"][1])
    run.main(["--tasks-dir", str(tasks), "--module", "hear_msm_mae.audiomae", "--model", str(checkpoint),
              "--protocol", "linear", "--out", str(tmp_path / "out")])
    (result,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert result["task"] == "scene-v0-full" and 0 <= result["scores"][result["primary_score"]]["mean"] <= 1
    (embedded,) = (tmp_path / "out" / "embeddings").iterdir()
    assert embedded.name == "hear_msm_mae.audiomae"
    assert json.loads((embedded / "scene-v0-full" / "train.embedding-dimensions.json").read_text())[1] == 192


def test_hop_comparison_asks_the_model_for_its_hops(tmp_path):
    """AST's grid (a column every 100 ms, timestamps every 50 ms by default): the event task embedded again at
    the model's native hop, scored beside the run's."""
    from conftest import FAMILY_CHECKPOINTS, golden_path
    from eval import run

    tasks = tmp_path / "tasks"
    make_task(tasks, "events-v0-full", "event", "multilabel", files_per_split=3, seconds=2.0)
    checkpoint = golden_path(FAMILY_CHECKPOINTS["ast"][1])
    run.main(["--tasks-dir", str(tasks), "--module", "hear_msm_mae.ast", "--model", str(checkpoint),
              "--protocol", "linear", "--hop-comparison", "--out", str(tmp_path / "out")])
    hops = (tmp_path / "out" / "timestamp_resolution.md").read_text()
    assert "| events-v0-full | linear | 50 ms |" in hops and "| events-v0-full | linear | 100 ms (native) |" in hops
    native = tmp_path / "out" / "embeddings" / "hear_msm_mae.ast-timestamp-hop-ms=100-0" / "events-v0-full"
    stamps = json.loads((native / "test" / "test_0.wav.timestamps.json").read_text())
    assert all(b - a == 100 for a, b in zip(stamps, stamps[1:]))


def test_hop_comparison_refuses_a_model_without_hops(tmp_path):
    """The log-mel reference states no native hop: refused before anything is embedded."""
    from eval import run

    tasks = tmp_path / "tasks"
    make_task(tasks, "events-v0-full", "event", "multilabel", files_per_split=2, seconds=2.0)
    with pytest.raises(SystemExit, match="needs a model that states its hops .* eval.baselines.load_model returned a "
                                         "LogMelStatistics"):
        run.main(["--tasks-dir", str(tasks), "--module", "eval.baselines", "--model-options",
                  '{"reference": "log-mel"}', "--hop-comparison", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "embeddings").exists()
