"""The HEAR 2021 protocol: grid sampling and grid keys, fold rotation, the batched MLP against plain torch models
(initialisation, dropout and BatchNorm in training and eval mode), bfloat16's centring in float64, early stopping
(patience, a non-finite check, the best check's weights, the validation loss), event post-processing, seeds, and
tiny tasks that train above chance. Against hear-eval-kit's own code: tests/test_heareval_reference.py."""
from __future__ import annotations

import math
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
    confs = [dict(hp.sample_grid_points(hp.PARAM_GRID, 1)[0], hidden_layers=2, hidden_dim=32, dropout=0.0, lr=lr,
                  initialization="xavier_uniform") for lr in (1e-2, 1e-3)]
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
    task = make_task(evaluation_params={"task_specific_param_grid": {"hidden_norm": ["LayerNorm"]}})
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8))
    data = hp.TaskData(task, {s: gaussian_split(rng, centers, 20) for s in ("train", "valid", "test")})
    with pytest.raises(ValueError, match="task toy: grid key 'hidden_norm' = 'LayerNorm' is not implemented"):
        hp.run_protocol(data, hp.ProtocolConfig(grid_points=1))


def test_xavier_gains_and_bias_initialisation():
    """hear-eval-kit: xavier_uniform_/xavier_normal_ with gain calculate_gain('linear') for the first layer and
    'relu' after a ReLU (the projection too); biases as torch.nn.Linear's, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    fan_in, width, labels = 600, 500, 400
    for init in ("xavier_uniform", "xavier_normal"):
        model = hp.BatchedMLP([dict(BASE, hidden_layers=2, hidden_dim=width, initialization=init)] * 2, fan_in,
                              labels, "cpu")
        for layer, (fi, fo, gain) in enumerate([(fan_in, width, 1.0), (width, width, math.sqrt(2)),
                                                (width, labels, math.sqrt(2))]):
            w, b = model.params[f"w{layer}"].detach(), model.params[f"b{layer}"].detach()
            assert w.shape == (2, fo, fi) and b.shape == (2, fo, 1)
            std = gain * math.sqrt(2.0 / (fi + fo))
            assert w.std().item() == pytest.approx(std, rel=0.01)
            if init == "xavier_uniform":
                assert w.abs().max().item() <= std * math.sqrt(3) and w.abs().max().item() > 0.999 * std * math.sqrt(3)
            else:
                assert w.abs().max().item() > 3.5 * std  # normal tails, not a uniform's bound
            bound = 1 / math.sqrt(fi)
            assert b.abs().max().item() <= bound and b.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            assert not torch.equal(w[0], w[1])  # each model draws its own
    shallow = hp.BatchedMLP([dict(BASE, hidden_layers=0)], fan_in, labels, "cpu")  # no ReLU before the projection
    assert shallow.params["w0"].std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + labels)), rel=0.01)


def recording_dropout(masks):
    """eval.hear_protocol.dropout, keeping each keep-mask (scaled) it draws."""
    def dropout(h, p, train):
        if not train or p == 0:
            return h
        mask = (torch.rand_like(h) >= p) * (1.0 / (1.0 - p))
        masks.append(mask)
        return h * mask
    return dropout


class ReplayDropout(torch.nn.Module):
    """Dropout with the masks our model drew, in order; (1, H, B) masks applied to (B, H) activations."""

    def __init__(self, masks):
        super().__init__()
        self.masks = masks

    def forward(self, x):
        return x * self.masks.pop(0)[0].t() if self.training else x


@pytest.mark.parametrize("hidden_norm,after", [("BatchNorm1d", False), ("BatchNorm1d", True), ("Identity", False)])
def test_dropout_position_and_eval_batchnorm_match_torch(monkeypatch, hidden_norm, after):
    """With dropout on: hear-eval-kit's layer order (Linear, BatchNorm, Dropout, ReLU; or Linear, Dropout, ReLU,
    BatchNorm) as a plain torch model, trained side by side with the same dropout masks, then compared in eval
    mode (BatchNorm's running statistics). Dropout before or after the ReLU is the same function (a
    non-negative scale commutes with it); before or after BatchNorm is not. SGD: Adam turns the ~1e-10
    gradients of a bias that BatchNorm cancels into +-lr steps of arbitrary sign, which eval mode shows."""
    torch.manual_seed(0)
    conf = dict(BASE, hidden_layers=2, hidden_dim=16, dropout=0.3, lr=0.1, optim="SGD", hidden_norm=hidden_norm,
                norm_after_activation=after)
    masks = []
    monkeypatch.setattr(hp, "dropout", recording_dropout(masks))
    ours = hp.BatchedMLP([conf], 6, 3, "cpu")
    replay = []
    layers = []
    for layer in range(2):
        linear = torch.nn.Linear(6 if layer == 0 else 16, 16)
        norm = [torch.nn.BatchNorm1d(16)] if hidden_norm == "BatchNorm1d" else []
        layers += [linear, *([] if after else norm), ReplayDropout(replay), torch.nn.ReLU(), *(norm if after else [])]
    layers.append(torch.nn.Linear(16, 3))
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for i, linear in enumerate(m for m in net if isinstance(m, torch.nn.Linear)):
            linear.weight.copy_(ours.params[f"w{i}"][0])
            linear.bias.copy_(ours.params[f"b{i}"][0, :, 0])
    sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    for _ in range(5):
        out = ours.logits(x, train=True)  # (1, B, C)
        replay.extend(masks)
        masks.clear()
        reference = net.train()(x)
        torch.testing.assert_close(out[0], reference, atol=1e-5, rtol=1e-4)
        torch.nn.functional.cross_entropy(out[0], y).backward()
        ours.optimizer.step()
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(reference, y).backward()
        sgd.step()
    assert not replay  # every mask was used, at the position it was drawn
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(x, train=False)[0], net.eval()(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optim", ["Adam", "SGD"])
@pytest.mark.parametrize("after", [False, True])
def test_centred_inputs_give_the_same_model_in_float64(after, optim):
    """bfloat16 mode's centring (inputs x - m, the first layer adding W m back) is the raw-input model: same
    training losses and (SGD: see the dropout test on Adam and cancelled biases) the same eval-mode outputs,
    in float64. Centring alone is not (BatchNorm's running mean lags behind the W m it would have to absorb;
    with BatchNorm after the ReLU, not even the training curve is the same)."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(100 + 0.3 * rng.normal(size=(256, 5)))  # features far from 0 against their spread
    y = torch.as_tensor(rng.integers(0, 3, 256))
    m = x.mean(0)
    conf = dict(BASE, hidden_layers=2, hidden_dim=32, lr=1e-2 if optim == "Adam" else 0.1, optim=optim,
                norm_after_activation=after)
    models = {}
    for name, shift in (("raw", None), ("centred", m), ("naive", None)):
        torch.manual_seed(0)
        models[name] = hp.BatchedMLP([conf], 5, 3, "cpu", dtype=torch.float64, input_shift=shift)
    inputs = {"raw": x, "centred": x - m, "naive": x - m}
    curves = {name: [] for name in models}
    for step in range(30):
        batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
        for name, model in models.items():
            torch.manual_seed(step)  # the same dropout masks
            loss = torch.nn.functional.cross_entropy(model.logits(inputs[name][batch], train=True)[0], y[batch])
            loss.backward()
            model.optimizer.step()
            curves[name].append(loss.item())
    np.testing.assert_allclose(curves["centred"], curves["raw"], rtol=1e-9)
    if after:
        assert not np.allclose(curves["naive"], curves["raw"], rtol=1e-3)
    else:
        np.testing.assert_allclose(curves["naive"], curves["raw"], rtol=1e-9)
    if optim == "SGD":
        with torch.no_grad():
            raw = models["raw"].logits(x, train=False)
            torch.testing.assert_close(models["centred"].logits(x - m, train=False), raw, rtol=1e-9, atol=1e-9)
            assert (models["naive"].logits(x - m, train=False) - raw).abs().max() > 1e-3


def tiny_data(evaluation=("top1_acc",), valid_classes=4, seed=0, **metadata):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.normal(size=(4, 8))
    valid = gaussian_split(rng, centers[:valid_classes], 40)
    valid.targets = np.pad(valid.targets, ((0, 0), (0, 4 - valid_classes)))
    splits = {"train": gaussian_split(rng, centers, 80), "valid": valid, "test": gaussian_split(rng, centers, 40)}
    return hp.TaskData(make_task(evaluation=evaluation, **metadata), splits)


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
    events = make_task("event", n_labels=2, evaluation=("event_onset_50ms_fms",), use_scoring_for_early_stopping=False)
    with pytest.raises(ValueError, match="exactly one event post-processing"):
        hp.Trainer(hp.TaskData(events, {}), hp.ProtocolConfig())


def event_scorer(grid=None):
    params = {"event_postprocessing_grid": grid} if grid else {}
    task = make_task("event", n_labels=2, evaluation=("event_onset_200ms_fms",), evaluation_params=params)
    task.labels[:] = ["x", "y"]
    times = np.arange(0, 2000, 50.0)
    split = hp.SplitData(np.zeros((40, 1), np.float32), np.zeros((40, 2), np.float32), ["a.wav"] * 40, times,
                         {"a.wav": [{"label": "x", "start": 500.0, "end": 1000.0},
                                    {"label": "y", "start": 1500.0, "end": 1650.0}]})
    return hp.Scorer(hp.TaskData(task, {})), split


def test_postprocessing_tie_break_and_nan_as_zero():
    scorer, split = event_scorer({"median_filter_ms": [0], "min_duration": [125, 250]})
    decoder = scorer.decoder(split)
    probabilities = np.zeros((40, 2))
    probabilities[10:21, 0] = 0.9  # 500-1000 ms: long enough for both options
    scores, option = scorer.evaluate(probabilities, split, decoder, all_scores=False)
    assert (scores["event_onset_200ms_fms"], option) == (pytest.approx(2 / 3), (("median_filter_ms", 0),
                                                                                 ("min_duration", 250)))
    probabilities[30:34, 1] = 0.9  # 1500-1650 ms: only min_duration 125 keeps it
    scores, option = scorer.evaluate(probabilities, split, decoder, all_scores=False)
    assert (scores["event_onset_200ms_fms"], dict(option)["min_duration"]) == (1.0, 125)
    # nothing predicted: F is NaN for both, counted as 0 to choose (tie: the larger option); reported NaN
    scores, option = scorer.evaluate(np.zeros((40, 2)), split, decoder, all_scores=False)
    assert math.isnan(scores["event_onset_200ms_fms"]) and dict(option)["min_duration"] == 250


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
