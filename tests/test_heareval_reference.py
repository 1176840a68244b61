"""eval.hear_protocol, eval.embedded, eval.scoring and eval.predict against hear-eval-kit 2021.1.3's own code, run
in its pinned environment (tests/heareval_env.py, built by `make test`), on tasks embedded by its own embeddings
code."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import heareval_env
import numpy as np
import pytest
from heareval_reference import FAST_GRID, embed_with_heareval, oracle, write_tasks

from eval import hear_protocol as hp
from eval import predict
from eval.embedded import SplitData, TaskData, load_task_data
from eval.mlp import BatchedMLP
from eval.scoring import Scorer
from eval.tasks import Task


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """hear-eval-kit's embeddings of the reference tasks: a 4-fold event task (80 frames per file), a
    trainvaltest multiclass scene task and a 4-fold multilabel scene task."""
    root = tmp_path_factory.mktemp("reference")
    return embed_with_heareval(write_tasks(root / "tasks"), root / "embeddings")


def test_grid_sampling_against_installed_heareval(tmp_path):
    """The grid points task_predictions trains, for every grid, several seeds, the DCASE 2016 table and a
    metadata grid (MAESTRO's)."""
    base = {"embedding_type": "scene", "prediction_type": "multiclass", "split_mode": "trainvaltest",
            "splits": ["train", "valid", "test"], "evaluation": ["top1_acc"]}
    maestro = {"task_specific_param_grid": {"max_epochs": [50], "check_val_every_n_epoch": [1]}}
    cases = [{"metadata": {**base, "task_name": "any"}, "grid": grid, "seed": seed, "n": 8}
             for grid in hp.GRIDS for seed in (42, 43, 44)]
    cases += [{"metadata": {**base, "task_name": "dcase2016_task2"}, "grid": "default", "seed": 42, "n": 8},
              {"metadata": {**base, "task_name": "maestro", "evaluation_params": maestro}, "grid": "default",
               "seed": 42, "n": 5}]
    answers = oracle("grid", {"cases": cases}, tmp_path)
    for case, theirs in zip(cases, answers):
        ours = hp.sample_grid_points(hp.task_param_grid(case["metadata"], case["grid"]), case["n"], case["seed"])
        assert ours == theirs, case
        for conf in ours:
            hp.check_grid_point(conf, "any")
    assert answers[0] != answers[1]  # another seed, other grid points


@pytest.mark.parametrize("task", ["ref_events-v1-full", "ref_scene-v1-full", "ref_multilabel-v1-full"])
def test_training_rows_are_heareval_loader_batches(embedded, tmp_path, monkeypatch, task):
    """Our training rows, as the protocol feeds them to the model, are hear-eval-kit's: the rows of its memmaps
    read by its own dataloader (k-fold: the training folds concatenated in sorted order), in the same
    64-row batches, the same in every epoch."""
    task_dir = embedded / task
    theirs = oracle("loader", {"task_dir": str(task_dir), "batch_size": FAST_GRID["batch_size"][0]}, tmp_path)
    data = load_task_data(task_dir)
    split = data.task.data_splits()[0]
    assert list(split.train) == theirs["train_splits"]
    epoch = theirs["epochs"][0]
    assert theirs["epochs"][1] == epoch and len(epoch) >= 3
    seen = []  # the training batches the model is given, in order
    logits = BatchedMLP.logits

    def recording(model, x, train):
        if train:
            seen.append(x.detach().clone())
        return logits(model, x, train)

    monkeypatch.setattr(BatchedMLP, "logits", recording)
    hp.run_seed(data, hp.ProtocolConfig(grid_points=1), 42)
    assert len(seen) >= 2 * len(epoch)
    for (x, _), ours in zip(epoch * 2, seen):  # the first fold's first two epochs
        np.testing.assert_array_equal(ours.numpy(), np.asarray(x, dtype=np.float32))
    rows = data.training_rows(split.train)
    batches = hp.batch_slices(len(rows.embeddings), FAST_GRID["batch_size"][0])
    for (x, y), batch in zip(epoch, batches):
        np.testing.assert_array_equal(rows.targets[batch], np.asarray(y, dtype=np.float32))
    # <split>.json order would not have passed
    assert not np.array_equal(rows.embeddings, data.concat(split.train).embeddings)


def test_grid_ranking_and_tie_order_as_heareval(tmp_path):
    cases = [{"scores": [0.5, 0.7, 0.5, 0.7, 0.1, 0.7], "mode": "max"},
             {"scores": [0.5, 0.7, 0.5, 0.7, 0.1, 0.7], "mode": "min"},
             {"scores": [0.5, math.nan, 0.7, math.nan, 0.2, 0.7], "mode": "max"},
             {"scores": [math.nan, 0.3, 0.3, 0.1], "mode": "min"}]
    answers = oracle("rank", {"cases": cases}, tmp_path)
    for case, theirs in zip(cases, answers):
        results = [hp.ModelResult(conf={"index": i}, validation_score=s, epoch=0) for i, s in enumerate(case["scores"])]
        assert [r.conf["index"] for r in hp.rank_grid_points(results, case["mode"] == "max")] == theirs, case


def test_event_postprocessing_and_its_choice_as_heareval(tmp_path):
    """Per post-processing option the events of get_events_for_all_files, and the option an
    EventPredictionModel's validation epoch picks (best primary score, NaN as 0, ties to the larger option)."""
    rng = np.random.default_rng(0)
    labels = ["x", "y"]
    times = np.arange(0, 3000, 40.0)
    target = {"a.wav": [{"label": "x", "start": 400.0, "end": 1200.0}, {"label": "y", "start": 2000.0, "end": 2150.0}],
              "b.wav": [{"label": "y", "start": 100.0, "end": 900.0}]}
    grid = {"median_filter_ms": [0, 120, 250], "min_duration": [0, 125, 250]}
    smooth = np.clip(rng.normal(0, 0.3, (2 * len(times), 2)).cumsum(0) * 0.1 + 0.5, 0, 1)
    tied = np.zeros((2 * len(times), 2))
    tied[10:31, 0] = 0.9  # one long event in a.wav: every option finds it
    cases = [smooth, tied, np.zeros_like(tied)]  # the last: no events at all (NaN for every option)
    filenames = ["dir/a.wav"] * len(times) + ["dir/b.wav"] * len(times)
    stamps = np.concatenate([times, times])
    answers = oracle("postprocess", {"cases": [
        {"predictions": p.tolist(), "filenames": filenames, "timestamps": stamps.tolist(), "labels": labels,
         "target_events": target, "grid": grid, "evaluation": ["event_onset_200ms_fms"]} for p in cases]}, tmp_path)
    task = Task(Path("toy"), {"task_name": "toy", "embedding_type": "event", "prediction_type": "multilabel",
                                    "split_mode": "trainvaltest", "splits": ["train", "valid", "test"],
                                    "evaluation": ["event_onset_200ms_fms"],
                                    "evaluation_params": {"event_postprocessing_grid": grid}}, labels)
    split = SplitData(np.zeros((len(stamps), 1), np.float32), np.zeros((len(stamps), 2), np.float32), filenames,
                      stamps, target)
    scorer = Scorer(TaskData(task, {}))
    decoder = scorer.decoder(split)
    for probabilities, theirs in zip(cases, answers):
        for option, events in theirs["events"]:
            assert decoder.decode(probabilities, **dict(option)) == events, option
        for all_scores in (False, True):
            _, option = scorer.evaluate(probabilities, split, decoder, all_scores=all_scores)
            assert [list(p) for p in option] == theirs["chosen"]
    assert [a["chosen"] for a in answers[1:]] == [[["median_filter_ms", 250], ["min_duration", 250]]] * 2


def test_predict_writes_heareval_runners_scores_file(embedded, tmp_path):
    """eval.predict and `python -m heareval.predictions.runner` on copies of the same folders (hear-eval-kit's
    embeddings; one grid point): test.predicted-scores.json with the same keys and structure, scene and
    event, k-fold and trainvaltest."""
    tasks = ["ref_events-v1-full", "ref_scene-v1-full"]
    for side in ("theirs", "ours"):
        for task in tasks:
            shutil.copytree(embedded / task, tmp_path / side / task)
    heareval_env.run(["-m", "heareval.predictions.runner", *tasks, "--grid-points", "1"], cwd=tmp_path / "theirs",
                     capture_output=True, timeout=900)
    predict.main([str(tmp_path / "ours" / task) for task in tasks] + ["--grid-points", "1"])
    for task in tasks:
        theirs = json.loads((tmp_path / "theirs" / task / predict.SCORES_FILE).read_text())
        ours = json.loads((tmp_path / "ours" / task / predict.SCORES_FILE).read_text())
        assert sorted(ours) == sorted(theirs)
        for key, value in theirs.items():
            if isinstance(value, dict):
                assert sorted(ours[key]) == sorted(value), key
                assert all(type(ours[key][k]) is type(v) or {type(v), type(ours[key][k])} <= {int, float}
                           for k, v in value.items()), key
        assert ours["score_mode"] == theirs["score_mode"]
        assert [p[0] for p in ours["postprocessing"]] == [p[0] for p in theirs["postprocessing"]]
        assert ours["embedding_path"] == str(tmp_path / "ours" / task)
        done = json.loads((tmp_path / "ours" / task / predict.DONE_FILE).read_text())
        assert set(json.loads((tmp_path / "theirs" / task / predict.DONE_FILE).read_text())) <= set(done)
        result = json.loads((tmp_path / "ours" / task / predict.RESULT_FILE).read_text())
        assert result["seed"] == 42 and result["settings"]["grid_points"] == 1
    # a done folder is skipped, as hear-eval-kit's runner skips it
    before = (tmp_path / "ours" / tasks[1] / predict.SCORES_FILE).read_bytes()
    predict.main([str(tmp_path / "ours" / tasks[1])])
    assert (tmp_path / "ours" / tasks[1] / predict.SCORES_FILE).read_bytes() == before


def test_predict_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="not task folders"):
        predict.main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--gpus must be a JSON list"):
        predict.main([str(tmp_path), "--gpus", "0"])
    with pytest.raises(SystemExit, match="embeddings incomplete"):
        predict.main([str(tmp_path)])
