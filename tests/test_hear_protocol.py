"""The HEAR 2021 protocol (eval.hear_protocol): grid keys, early stopping (patience, a non-finite check, the best
check's weights, the validation loss), seeds, and tiny tasks that train above chance. The batched MLP:
tests/test_eval_mlp.py; scoring and post-processing: tests/test_eval_scoring.py. Against hear-eval-kit's own
code (grid sampling, training batches, ranking, post-processing, the runner's files):
tests/test_heareval_reference.py."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import hear_protocol as hp
from eval.embedded import SplitData, TaskData
from eval.tasks import Task


def toy_task(kind="scene", split_mode="trainvaltest", n_labels=4, evaluation=("top1_acc",), **metadata):
    """A task description (no files) for in-memory splits."""
    splits = ["train", "valid", "test"] if split_mode == "trainvaltest" else [f"fold{i:02d}" for i in range(5)]
    meta = {"task_name": "toy", "embedding_type": kind, "prediction_type": "multiclass" if kind == "scene"
            else "multilabel", "split_mode": split_mode, "splits": splits, "evaluation": list(evaluation), **metadata}
    return Task(Path("toy"), meta, [f"c{i}" for i in range(n_labels)])


def gaussian_split(rng, centers, n):
    k = rng.integers(0, len(centers), n)
    x = centers[k] + rng.normal(size=(n, centers.shape[1]))
    return SplitData(x.astype(np.float32), np.eye(len(centers), dtype=np.float32)[k])


FAST = {"evaluation_params": {"task_specific_param_grid": {"max_epochs": [12], "patience": [2], "hidden_dim": [64]}}}


def test_tiny_kfold_task_above_chance_every_fold_tested_in_order():
    rng = np.random.default_rng(0)
    centers = 3 * rng.normal(size=(4, 16))
    task = toy_task(split_mode="new_split_kfold", **FAST)
    data = TaskData(task, {f"fold{i:02d}": gaussian_split(rng, centers, 40) for i in range(5)})
    result = hp.run_protocol(data, hp.ProtocolConfig(grid_points=2))
    assert [f["test"] for f in result["folds"]] == [f"fold{i:02d}" for i in range(5)]
    assert result["scores"]["top1_acc"]["mean"] > 0.6  # chance: 0.25
    assert result["scores"]["top1_acc"]["std"] == pytest.approx(
        np.std([f["scores"]["top1_acc"] for f in result["folds"]], ddof=1))


def test_early_stopping_after_patience_checks_without_improvement():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 16))
    task = toy_task()
    noise = SplitData(rng.normal(size=(60, 16)).astype(np.float32),
                         np.eye(4, dtype=np.float32)[rng.integers(0, 4, 60)])  # nothing to learn
    data = TaskData(task, {"train": noise, "valid": noise, "test": gaussian_split(rng, centers, 20)})
    conf = dict(hp.sample_grid_points(hp.PARAM_GRID, 1)[0], patience=3, check_val_every_n_epoch=2, max_epochs=200,
                hidden_dim=64)
    torch.manual_seed(0)
    (result,) = hp.Trainer(data, hp.ProtocolConfig()).train([conf], noise, noise)
    # a check every 2 epochs; stop at the 3rd check after the best one
    assert result.epochs_trained == result.epoch + 1 + 3 * 2
    assert result.epochs_trained < 200
    assert (result.epoch + 1) % 2 == 0


def test_tiny_event_task_above_chance():
    """Frames whose embedding carries the active label; onset F-measure well above zero."""
    rng = np.random.default_rng(2)
    codes = 3 * rng.normal(size=(3, 12))  # background, then labels a, b

    def split(n_files):
        rows, targets, names, times, events = [], [], [], [], {}
        for f in range(n_files):
            name = f"f{f}.wav"
            active = np.zeros((40, 2))
            file_events = []
            for label, start in ((0, rng.integers(2, 15)), (1, rng.integers(20, 33))):
                active[start:start + 5, label] = 1
                file_events.append({"label": "ab"[label], "start": start * 40.0, "end": (start + 5) * 40.0})
            x = codes[0] + active @ codes[1:] + 0.3 * rng.normal(size=(40, 12))
            rows.append(x)
            targets.append(active)
            names += [name] * 40
            times.append(np.arange(40) * 40.0)
            events[name] = file_events
        return SplitData(np.concatenate(rows).astype(np.float32), np.concatenate(targets).astype(np.float32),
                            names, np.concatenate(times), events)

    grid = {"max_epochs": [60], "patience": [5], "hidden_dim": [64], "lr": [3.2e-3]}
    task = toy_task("event", n_labels=2, evaluation=("event_onset_200ms_fms", "segment_1s_er"),
                     evaluation_params={"task_specific_param_grid": grid})
    task.labels[:] = ["a", "b"]
    data = TaskData(task, {"train": split(12), "valid": split(4), "test": split(4)})
    result = hp.run_protocol(data, hp.ProtocolConfig(grid_points=1))
    assert result["scores"]["event_onset_200ms_fms"]["mean"] > 0.5
    assert not math.isnan(result["scores"]["segment_1s_er"]["mean"])


BASE = hp.sample_grid_points(hp.PARAM_GRID, 1)[0]  # every grid key at hear-eval-kit's default


def test_every_grid_key_checked_with_key_value_and_task_named():
    hp.check_grid_point(BASE, "t")
    for key, value in [("hidden_norm", "LayerNorm"), ("optim", "RMSprop"), ("initialization", "kaiming_uniform"),
                       ("norm_after_activation", 1), ("hidden_dim", 0), ("hidden_dim", 2.0), ("dropout", 1.0),
                       ("lr", "fast"), ("batch_size", True), ("max_epochs", 0)]:
        with pytest.raises(ValueError, match=rf"task t: grid key '{key}' = {value!r} is not"):
            hp.check_grid_point({**BASE, key: value}, "t")
    with pytest.raises(ValueError, match="task t: grid key 'momentum' = 0.9 is not a hear-eval-kit grid key"):
        hp.check_grid_point({**BASE, "momentum": 0.9}, "t")
    task = toy_task(evaluation_params={"task_specific_param_grid": {"hidden_norm": ["LayerNorm"]}})
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8))
    data = TaskData(task, {s: gaussian_split(rng, centers, 20) for s in ("train", "valid", "test")})
    with pytest.raises(ValueError, match="task toy: grid key 'hidden_norm' = 'LayerNorm' is not implemented"):
        hp.run_protocol(data, hp.ProtocolConfig(grid_points=1))


def tiny_data(evaluation=("top1_acc",), valid_classes=4, seed=0, **metadata):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.normal(size=(4, 8))
    valid = gaussian_split(rng, centers[:valid_classes], 40)
    valid.targets = np.pad(valid.targets, ((0, 0), (0, 4 - valid_classes)))
    splits = {"train": gaussian_split(rng, centers, 80), "valid": valid, "test": gaussian_split(rng, centers, 40)}
    return TaskData(toy_task(evaluation=evaluation, **metadata), splits)


def test_stops_at_the_first_non_finite_check():
    """aucroc is NaN on a validation split with one class: Lightning's EarlyStopping (check_finite) stops at
    that check; ModelCheckpoint has saved it (first check), so the grid point's score is NaN."""
    data = tiny_data(evaluation=("aucroc", "top1_acc"), valid_classes=1)
    conf = dict(BASE, hidden_dim=16, check_val_every_n_epoch=4)
    (result,) = hp.Trainer(data, hp.ProtocolConfig()).train([conf], data.splits["train"], data.splits["valid"])
    assert (result.epoch, result.epochs_trained) == (3, 4) and math.isnan(result.validation_score)


def test_test_uses_the_best_checks_weights(monkeypatch):
    data = tiny_data()
    trainer = hp.Trainer(data, hp.ProtocolConfig())
    scripted = iter([0.5, 0.8, 0.6, 0.7, 0.75, 0.9])  # best at the 2nd check, then 3 checks without improvement
    monkeypatch.setattr(trainer.scorer, "evaluate", lambda *a, **k: ({"top1_acc": next(scripted)}, ()))
    snapshots = []  # every model's parameters and statistics at each check
    predict = trainer.predict

    def snapshot_predict(model, x):
        if len(x) == len(data.splits["valid"].embeddings):
            snapshots.append(model.state(0))
        return predict(model, x)

    monkeypatch.setattr(trainer, "predict", snapshot_predict)
    conf = dict(BASE, hidden_dim=16, patience=3, check_val_every_n_epoch=2, lr=1e-2)
    (result,) = trainer.train([conf], data.splits["train"], data.splits["valid"])
    assert (result.validation_score, result.epoch, result.epochs_trained, len(snapshots)) == (0.8, 3, 10, 5)
    for key, value in result.state.items():
        assert torch.equal(value, snapshots[1][key])
    assert not torch.equal(result.state["w0"], snapshots[-1]["w0"])
    trainer.predict = predict
    test = data.splits["test"]
    loss = trainer.test(result, test)["loss"]
    for state, same in ((snapshots[1], True), (snapshots[-1], False)):
        other = hp.ModelResult(conf=conf, validation_score=0.0, epoch=0, state=state)
        assert (trainer.test(other, test)["loss"] == loss) == same


def test_validation_loss_path_of_maestro_like_tasks(monkeypatch):
    """use_scoring_for_early_stopping false: the validation loss is monitored (min), scores are not computed
    during training, the grid ranks by loss, and an event task needs exactly one post-processing."""
    data = tiny_data(use_scoring_for_early_stopping=False, **FAST)
    trainer = hp.Trainer(data, hp.ProtocolConfig())
    assert not trainer.maximize
    monkeypatch.setattr(trainer.scorer, "evaluate", lambda *a, **k: pytest.fail("scored during training"))
    losses = []
    predict = trainer.predict

    def loss_predict(model, x):
        logits = predict(model, x)
        target = torch.as_tensor(data.splits["valid"].targets).argmax(1)
        losses.append([torch.nn.functional.cross_entropy(g, target).item() for g in logits])
        return logits

    monkeypatch.setattr(trainer, "predict", loss_predict)
    confs = [dict(BASE, hidden_dim=16, patience=3, lr=lr, max_epochs=30) for lr in (1e-1, 1e-3)]
    results = trainer.train(confs, data.splits["train"], data.splits["valid"])
    for g, result in enumerate(results):  # models leave the stack as they stop: follow each one's rows
        curve = []
        for check in losses:
            if len(curve) < result.epochs_trained // 3:
                curve.append(check[g] if len(check) == 2 else check[0])
        assert result.validation_score == pytest.approx(min(curve), rel=1e-6)
        assert result.epoch == 3 * curve.index(min(curve)) + 2
    best = hp.rank_grid_points(results, trainer.maximize)[0]
    assert best.validation_score == min(r.validation_score for r in results)
    result = hp.run_seed(data, hp.ProtocolConfig(grid_points=2), 42)
    assert result["score_mode"] == "min"
    events = toy_task("event", n_labels=2, evaluation=("event_onset_50ms_fms",), use_scoring_for_early_stopping=False)
    with pytest.raises(ValueError, match="exactly one event post-processing"):
        hp.Trainer(TaskData(events, {}), hp.ProtocolConfig())


def test_seeds_keep_per_seed_scores_and_report_the_spread_over_seeds():
    data = tiny_data(**FAST)
    config = hp.ProtocolConfig(grid_points=1, seeds=hp.seeds(3))
    assert config.seeds == (42, 43, 44)
    result = hp.run_protocol(data, config)
    runs = result["runs"]
    assert result["spread"] == "seeds" and [r["seed"] for r in runs] == [42, 43, 44]
    values = [r["scores"]["top1_acc"]["mean"] for r in runs]
    top1 = result["scores"]["top1_acc"]
    assert top1["per_seed"] == values and top1["mean"] == pytest.approx(np.mean(values))
    assert top1["std"] == pytest.approx(np.std(values, ddof=1))
    half = 4.302652729911275 * top1["std"] / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert top1["ci95"] == pytest.approx([top1["mean"] - half, top1["mean"] + half])
    single = hp.run_protocol(data, hp.ProtocolConfig(grid_points=1))  # seed 42 alone: the same run
    def outcome(folds):
        return [(f["scores"], f["loss"], f["epoch"], f["validation_score"]) for f in folds]

    assert single["spread"] == "folds" and outcome(single["folds"]) == outcome(runs[0]["folds"])
    assert outcome(hp.run_seed(data, hp.ProtocolConfig(grid_points=1), 43)["folds"]) == outcome(runs[1]["folds"])
    assert outcome(runs[1]["folds"]) != outcome(runs[0]["folds"])

