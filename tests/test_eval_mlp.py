"""eval.mlp: the batched MLP against plain torch models (initialisation, training steps, dropout and BatchNorm in
training and eval mode) and bfloat16's centring, in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval import mlp
from eval.mlp import BatchedMLP, dropout
from test_hear_protocol import BASE


def test_batched_mlp_matches_torch_modules():
    """Each model of a stack trains exactly like hear-eval-kit's Linear-BatchNorm-ReLU MLP under torch Adam."""
    torch.manual_seed(0)
    confs = [dict(BASE, hidden_layers=2, hidden_dim=32, dropout=0.0, lr=lr,
                  initialization="xavier_uniform") for lr in (1e-2, 1e-3)]
    batched = BatchedMLP(confs, 8, 3, "cpu")
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
    out = dropout(h, 0.1, train=True)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 512k draws: std 4e-4
    kept = out != 0
    torch.testing.assert_close(out[kept], h[kept] / 0.9)
    assert dropout(h, 0.1, train=False) is h and dropout(h, 0.0, train=True) is h
    grad = torch.ones_like(h, requires_grad=True)
    dropout(grad, 0.1, train=True).sum().backward()
    values = grad.grad.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.9)


def test_xavier_gains_and_bias_initialisation():
    """hear-eval-kit: xavier_uniform_/xavier_normal_ with gain calculate_gain('linear') for the first layer and
    'relu' after a ReLU (the projection too); biases as torch.nn.Linear's, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    fan_in, width, labels = 600, 500, 400
    for init in ("xavier_uniform", "xavier_normal"):
        model = BatchedMLP([dict(BASE, hidden_layers=2, hidden_dim=width, initialization=init)] * 2, fan_in,
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
    shallow = BatchedMLP([dict(BASE, hidden_layers=0)], fan_in, labels, "cpu")  # no ReLU before the projection
    assert shallow.params["w0"].std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + labels)), rel=0.01)


def recording_dropout(masks):
    """eval.mlp.dropout, keeping each keep-mask (scaled) it draws."""
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
    monkeypatch.setattr(mlp, "dropout", recording_dropout(masks))
    ours = BatchedMLP([conf], 6, 3, "cpu")
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
        models[name] = BatchedMLP([conf], 5, 3, "cpu", dtype=torch.float64, input_shift=shift)
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

