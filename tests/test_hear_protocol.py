"""The HEAR 2021 protocol: grid sampling as hear-eval-kit, fold rotation, the batched MLP against
torch.nn, early stopping, event post-processing, and tiny tasks that train above chance."""
from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from eval import hear_protocol as hp
from eval.tasks import Task

# hear-eval-kit 2021.1.3: seed_everything(42); random.shuffle(list(ParameterGrid(PARAM_GRID)))[:8],
# printed once as (hidden_layers, lr, initialization).
HEAREVAL_DEFAULT_GRID_POINTS = [
    (1, 1e-4, "xavier_normal"), (2, 1e-3, "xavier_uniform"), (1, 1e-3, "xavier_normal"),
    (1, 3.2e-4, "xavier_normal"), (2, 3.2e-4, "xavier_normal"), (2, 3.2e-4, "xavier_uniform"),
    (2, 3.2e-3, "xavier_normal"), (2, 3.2e-3, "xavier_uniform"),
]


def summary(confs):
    return [(c["hidden_layers"], c["lr"], c["initialization"]) for c in confs]


def test_grid_sampling_matches_hear_eval_kit():
    confs = hp.sample_grid_points(hp.task_param_grid({"task_name": "any"}), 8)
    assert summary(confs) == HEAREVAL_DEFAULT_GRID_POINTS
    assert all(c["max_epochs"] == 500 and c["patience"] == 20 and c["check_val_every_n_epoch"] == 3
               and c["batch_size"] == 1024 and c["hidden_dim"] == 1024 and c["dropout"] == 0.1 for c in confs)


def test_grid_sampling_against_installed_heareval():
    task_predictions = pytest.importorskip("heareval.predictions.task_predictions")  # needs pytorch_lightning
    from sklearn.model_selection import ParameterGrid
    random.seed(42)
    confs = list(ParameterGrid(copy.copy(task_predictions.PARAM_GRID)))
    random.shuffle(confs)
    expected = [(c["hidden_layers"], c["lr"], c["initialization"].__name__.rstrip("_")) for c in confs[:8]]
    assert summary(hp.sample_grid_points(hp.PARAM_GRID, 8)) == expected


def test_task_specific_grids():
    assert {c["check_val_every_n_epoch"] for c in hp.sample_grid_points(
        hp.task_param_grid({"task_name": "dcase2016_task2"}), 8)} == {10}
    maestro = {"task_name": "maestro", "evaluation_params": {
        "task_specific_param_grid": {"max_epochs": [50], "check_val_every_n_epoch": [1]}}}
    confs = hp.sample_grid_points(hp.task_param_grid(maestro), 8)
    assert {(c["max_epochs"], c["check_val_every_n_epoch"]) for c in confs} == {(50, 1)}
    # singleton overrides leave the order of the drawn points unchanged
    assert summary(confs) == HEAREVAL_DEFAULT_GRID_POINTS


def make_task(kind="scene", split_mode="trainvaltest", n_labels=4, evaluation=("top1_acc",), **metadata):
    splits = ["train", "valid", "test"] if split_mode == "trainvaltest" else [f"fold{i:02d}" for i in range(5)]
    meta = {"task_name": "toy", "embedding_type": kind, "prediction_type": "multiclass" if kind == "scene"
            else "multilabel", "split_mode": split_mode, "splits": splits, "evaluation": list(evaluation), **metadata}
    return Task(Path("toy"), meta, [f"c{i}" for i in range(n_labels)])


def gaussian_split(rng, centers, n):
    k = rng.integers(0, len(centers), n)
    x = centers[k] + rng.normal(size=(n, centers.shape[1]))
    return hp.SplitData(x.astype(np.float32), np.eye(len(centers), dtype=np.float32)[k])


FAST = {"evaluation_params": {"task_specific_param_grid": {"max_epochs": [12], "patience": [2], "hidden_dim": [64]}}}


def test_fold_rotation_and_tiny_kfold_task_above_chance():
    rng = np.random.default_rng(0)
    centers = 3 * rng.normal(size=(4, 16))
    task = make_task(split_mode="new_split_kfold", **FAST)
    data = hp.TaskData(task, {f"fold{i:02d}": gaussian_split(rng, centers, 40) for i in range(5)})
    splits = task.data_splits()
    assert [(s.test, s.valid, s.train) for s in splits[:2]] == [
        (("fold00",), ("fold01",), ("fold02", "fold03", "fold04")),
        (("fold01",), ("fold02",), ("fold00", "fold03", "fold04"))]
    assert (splits[-1].test, splits[-1].valid) == (("fold04",), ("fold00",))
    result = hp.run_protocol(data, hp.ProtocolConfig(grid_points=2))
    assert [f["test"] for f in result["folds"]] == [f"fold{i:02d}" for i in range(5)]
    assert result["scores"]["top1_acc"]["mean"] > 0.6  # chance: 0.25
    assert result["scores"]["top1_acc"]["std"] == pytest.approx(
        np.std([f["scores"]["top1_acc"] for f in result["folds"]], ddof=1))


def test_batched_mlp_matches_torch_modules():
    """Each model of a stack trains exactly like hear-eval-kit's Linear-BatchNorm-ReLU MLP under torch Adam."""
    torch.manual_seed(0)
    confs = [dict(hidden_layers=2, hidden_dim=32, dropout=0.0, lr=lr, initialization="xavier_uniform")
             for lr in (1e-2, 1e-3)]
    batched = hp.BatchedMLP(confs, 8, 3, "cpu")
    x, y = torch.randn(50, 8), torch.randint(0, 3, (50,))
    references = []
    for g, conf in enumerate(confs):
        layers = []
        for layer in range(2):
            linear = torch.nn.Linear(8 if layer == 0 else 32, 32)
            layers += [linear, torch.nn.BatchNorm1d(32), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(32, 3))
        net = torch.nn.Sequential(*layers)
        with torch.no_grad():
            for i, linear in enumerate([layers[0], layers[3], layers[6]]):
                linear.weight.copy_(batched.params[f"w{i}"][g])
                linear.bias.copy_(batched.params[f"b{i}"][g, :, 0])
        references.append((net, torch.optim.Adam(net.parameters(), lr=conf["lr"])))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(batched.logits(x, train=True).transpose(1, 2),
                                                 y.expand(2, -1), reduction="none").mean(1)
        loss.sum().backward()
        batched.optimizer.step()
        for net, adam in references:
            adam.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            adam.step()
    # Compared in training mode: the hidden biases get ~1e-10 gradients (BatchNorm cancels them), which
    # Adam turns into +-lr steps of arbitrary sign in either implementation; BatchNorm removes them again.
    with torch.no_grad():
        out = batched.logits(x, train=True)
        for g, (net, _) in enumerate(references):
            torch.testing.assert_close(out[g], net(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.params["w2"][g], net[6].weight, atol=1e-6, rtol=1e-5)


def test_dropout_drops_p_and_rescales_like_torch():
    torch.manual_seed(0)
    h = torch.rand(1, 512, 1000) + 1.0
    out = hp.dropout(h, 0.1, train=True)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 512k draws: std 4e-4
    kept = out != 0
    torch.testing.assert_close(out[kept], h[kept] / 0.9)
    assert hp.dropout(h, 0.1, train=False) is h and hp.dropout(h, 0.0, train=True) is h
    grad = torch.ones_like(h, requires_grad=True)
    hp.dropout(grad, 0.1, train=True).sum().backward()
    values = grad.grad.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.9)


def test_early_stopping_after_patience_checks_without_improvement():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(4, 16))
    task = make_task()
    noise = hp.SplitData(rng.normal(size=(60, 16)).astype(np.float32),
                         np.eye(4, dtype=np.float32)[rng.integers(0, 4, 60)])  # nothing to learn
    data = hp.TaskData(task, {"train": noise, "valid": noise, "test": gaussian_split(rng, centers, 20)})
    conf = dict(hp.sample_grid_points(hp.PARAM_GRID, 1)[0], patience=3, check_val_every_n_epoch=2, max_epochs=200,
                hidden_dim=64)
    torch.manual_seed(0)
    (result,) = hp.Trainer(data, hp.ProtocolConfig()).train([conf], noise, noise)
    # a check every 2 epochs; stop at the 3rd check after the best one
    assert result.epochs_trained == result.epoch + 1 + 3 * 2
    assert result.epochs_trained < 200
    assert (result.epoch + 1) % 2 == 0


def test_event_decoder_matches_hear_eval_kit_rules():
    # one file, timestamps every 50 ms; label 0 active at 100..300 ms, label 1 one frame at 400 ms
    times = np.arange(0, 500, 50.0)
    probs = np.zeros((10, 2))
    probs[2:7, 0] = 0.9
    probs[8, 1] = 0.8
    split = hp.SplitData(np.zeros((10, 1), np.float32), np.zeros((10, 2), np.float32), ["dir/a.wav"] * 10, times, {})
    decoder = hp.EventDecoder(split, ["x", "y"], threshold=0.5)
    events = decoder.decode(probs, median_filter_ms=0, min_duration=0)
    assert events == {"a.wav": [{"label": "x", "start": 100.0, "end": 300.0},
                                {"label": "y", "start": 400.0, "end": 400.0}]}
    # events shorter than min_duration go; a 150 ms median filter (3 frames) removes the lone frame
    assert decoder.decode(probs, median_filter_ms=0, min_duration=250)["a.wav"] == []
    assert decoder.decode(probs, median_filter_ms=150, min_duration=0)["a.wav"] == [
        {"label": "x", "start": 100.0, "end": 300.0}]
    # rows given out of order are sorted by time within the file
    shuffled = np.random.default_rng(0).permutation(10)
    split2 = hp.SplitData(split.embeddings, split.targets, ["a.wav"] * 10, times[shuffled], {})
    assert hp.EventDecoder(split2, ["x", "y"], 0.5).decode(probs[shuffled], 0, 0) == events


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
        return hp.SplitData(np.concatenate(rows).astype(np.float32), np.concatenate(targets).astype(np.float32),
                            names, np.concatenate(times), events)

    grid = {"max_epochs": [60], "patience": [5], "hidden_dim": [64], "lr": [3.2e-3]}
    task = make_task("event", n_labels=2, evaluation=("event_onset_200ms_fms", "segment_1s_er"),
                     evaluation_params={"task_specific_param_grid": grid})
    task.labels[:] = ["a", "b"]
    data = hp.TaskData(task, {"train": split(12), "valid": split(4), "test": split(4)})
    result = hp.run_protocol(data, hp.ProtocolConfig(grid_points=1))
    assert result["scores"]["event_onset_200ms_fms"]["mean"] > 0.5
    assert dict(result["folds"][0]["postprocessing"])["min_duration"] in (125, 250)
    assert not math.isnan(result["scores"]["segment_1s_er"]["mean"])
