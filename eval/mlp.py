"""G MLPs of one shape trained as one batched model: the HEAR protocol's downstream models (eval.hear_protocol).

Each model is hear-eval-kit's: `hidden_layers` hidden layers of `hidden_dim`, each Linear -> BatchNorm ->
Dropout -> ReLU (or Linear -> Dropout -> ReLU -> BatchNorm with `norm_after_activation`), then a Linear
projection; Xavier (uniform or normal) weights with gain 1 for the first layer and sqrt(2) after a ReLU,
torch.nn.Linear's bias initialisation; Adam or SGD. All grid points of one shape (`shape_key`) train
together: stacked weights, `torch.bmm`, per-model BatchNorm statistics, fused Adam with a learning rate
per model; models leave the stack as they stop (`BatchedMLP.keep`). Random draws (initialisation,
dropout) come from torch's global generator.

`matmul_dtype` bfloat16 runs the matmuls in bfloat16 (BatchNorm, losses and the optimiser stay in
float32) on inputs centred by the training rows' mean m (`input_shift`): the first layer computes
W (x - m) + (W m + b), W m in float32, the same function of x in exact arithmetic, for every
architecture and in eval mode too (BatchNorm's running statistics see the same values), while
bfloat16's 8-bit mantissa no longer erases features whose offset is large against their spread.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

INITIALIZATIONS = {"xavier_uniform": torch.nn.init.xavier_uniform_, "xavier_normal": torch.nn.init.xavier_normal_}
OPTIMIZERS = {"Adam": torch.optim.Adam, "SGD": torch.optim.SGD}  # hear-eval-kit: optim(parameters, lr=lr)


def dropout(h: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    """`F.dropout(h, p, train)`, with the keep-mask drawn by `torch.rand`: on CPU, F.dropout's Bernoulli draw
    costs about five times as much and was the largest single cost of a training step."""
    if not train or p == 0:
        return h
    return h * ((torch.rand_like(h) >= p) * (1.0 / (1.0 - p)))


def shape_key(conf: dict) -> tuple:
    """What the models of one BatchedMLP (and one training loop) share; lr and initialisation may differ."""
    return tuple(conf[k] for k in ("hidden_layers", "hidden_dim", "dropout", "hidden_norm", "norm_after_activation",
                                   "optim", "batch_size", "max_epochs", "patience", "check_val_every_n_epoch"))


class BatchedMLP:
    """G independent MLPs (same shape) with stacked parameters, computed features-first.

    Layer l weight (G, out, in) and bias (G, out, 1); BatchNorm gain, shift and running statistics (G, H).
    Activations are (G, features, batch), so that each model's BatchNorm is one channel block of a
    single `F.batch_norm` call on (1, G*H, B) and runs on the fast contiguous path. Parameters in `dtype`,
    matmuls in `matmul_dtype`; `input_shift` m (D,): the inputs given are x - m, and the first layer adds
    W m back (see the module's docstring).
    """

    def __init__(self, confs: List[dict], n_features: int, n_labels: int, device: str,
                 dtype: torch.dtype = torch.float32, matmul_dtype: Optional[torch.dtype] = None,
                 input_shift: Optional[torch.Tensor] = None):
        conf = confs[0]
        assert all(shape_key(c) == shape_key(conf) for c in confs), "one BatchedMLP holds models of one shape"
        self._configure(conf, len(confs), dtype, matmul_dtype, input_shift)
        dims = [n_features] + [conf["hidden_dim"]] * self.depth + [n_labels]
        self.params: Dict[str, torch.Tensor] = {}
        for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
            gain = torch.nn.init.calculate_gain("linear" if layer == 0 else "relu")
            self.params[f"w{layer}"] = torch.stack([INITIALIZATIONS[c["initialization"]](
                torch.empty(fan_out, fan_in, dtype=dtype), gain=gain) for c in confs])
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's bias initialisation
            self.params[f"b{layer}"] = torch.empty(self.G, fan_out, 1, dtype=dtype).uniform_(-bound, bound)
            if layer < self.depth and self.batch_norm:
                self.params[f"gain{layer}"] = torch.ones(self.G, fan_out, dtype=dtype)
                self.params[f"shift{layer}"] = torch.zeros(self.G, fan_out, dtype=dtype)
        self.params = {k: v.to(device).requires_grad_() for k, v in self.params.items()}
        self.buffers = {}
        for layer in range(self.depth if self.batch_norm else 0):
            self.buffers[f"mean{layer}"] = torch.zeros(self.G, conf["hidden_dim"], dtype=dtype, device=device)
            self.buffers[f"var{layer}"] = torch.ones(self.G, conf["hidden_dim"], dtype=dtype, device=device)
        self.optimizer = BatchedOptimizer(self.params, [c["lr"] for c in confs], conf["optim"])

    def _configure(self, conf: dict, G: int, dtype: torch.dtype, matmul_dtype: Optional[torch.dtype],
                   input_shift: Optional[torch.Tensor]) -> None:
        self.G, self.depth, self.dropout = G, conf["hidden_layers"], conf["dropout"]
        self.batch_norm = conf["hidden_norm"] == "BatchNorm1d"
        self.norm_after_activation = conf["norm_after_activation"]
        self.dtype, self.matmul_dtype = dtype, matmul_dtype or dtype
        self.input_shift = input_shift

    def _linear(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """(G, in, B) -> W h + b (G, out, B) in self.dtype, the product in matmul_dtype."""
        w, b = self.params[f"w{layer}"], self.params[f"b{layer}"]
        if layer == 0 and self.input_shift is not None:
            b = b + torch.bmm(w, self.input_shift.to(w).view(1, -1, 1).expand(self.G, -1, 1))  # + W m (G, out, 1)
        if self.matmul_dtype == self.dtype:
            return torch.baddbmm(b, w, h)
        return torch.bmm(w.to(self.matmul_dtype), h.to(self.matmul_dtype)).to(self.dtype) + b

    def _norm(self, layer: int, h: torch.Tensor, train: bool) -> torch.Tensor:
        if not self.batch_norm:
            return h
        G, H, B = h.shape
        return F.batch_norm(h.reshape(1, G * H, B), self.buffers[f"mean{layer}"].view(-1),
                            self.buffers[f"var{layer}"].view(-1), self.params[f"gain{layer}"].view(-1),
                            self.params[f"shift{layer}"].view(-1), training=train, momentum=0.1,
                            eps=1e-5).view(G, H, B)

    def logits(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x (B, D) -> logits (G, B, C). Training mode: batch statistics (running ones updated, momentum
        0.1, unbiased variance) and dropout from torch's global generator; eval mode: running statistics."""
        x = x.to(self.matmul_dtype)
        h = x.t().unsqueeze(0).expand(self.G, *x.t().shape)  # (G, D, B)
        for layer in range(self.depth):
            h = self._linear(layer, h)  # (G, H, B)
            if not self.norm_after_activation:
                h = self._norm(layer, h, train)
            h = torch.relu(dropout(h, self.dropout, train))
            if self.norm_after_activation:
                h = self._norm(layer, h, train)
        return self._linear(self.depth, h).transpose(1, 2)  # (G, B, C)

    def keep(self, models: torch.Tensor) -> None:
        """Drop the models not in `models` (bool (G,)) from the stack, with their optimiser state."""
        index = models.nonzero().view(-1)
        self.G = len(index)
        self.params = {k: v.detach()[index].requires_grad_() for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}
        self.optimizer = self.optimizer.keep(self.params, index.tolist())

    def state(self, g: int) -> Dict[str, torch.Tensor]:
        """Model g's parameters and statistics, each (1, ...)."""
        return {k: v.detach()[g:g + 1].clone() for k, v in {**self.params, **self.buffers}.items()}

    @classmethod
    def from_state(cls, conf: dict, state: Dict[str, torch.Tensor], matmul_dtype: Optional[torch.dtype] = None,
                   input_shift: Optional[torch.Tensor] = None) -> "BatchedMLP":
        model = cls.__new__(cls)
        model._configure(conf, 1, state["w0"].dtype, matmul_dtype, input_shift)
        model.params = {k: v for k, v in state.items() if not k.startswith(("mean", "var"))}
        model.buffers = {k: v.clone() for k, v in state.items() if k.startswith(("mean", "var"))}
        return model


class BatchedOptimizer:
    """torch.optim.Adam (fused kernel, defaults: betas 0.9/0.999, eps 1e-8) or SGD (defaults: no momentum),
    with one learning rate per model.

    Model g's parameters are the views `stacked[g]`, one parameter group per model; each step hands them
    the matching slices of the stacked gradients.
    """

    def __init__(self, params: Dict[str, torch.Tensor], lrs: List[float], optim: str,
                 state: Optional[list] = None):
        self.params, self.lrs, self.optim = params, list(lrs), optim
        self.views = [[p.detach()[g] for p in params.values()] for g in range(len(lrs))]  # [model][param]
        fused = all(p.device.type in ("cpu", "cuda") for p in params.values())
        self.torch_optimizer = OPTIMIZERS[optim]([{"params": v, "lr": lr} for v, lr in zip(self.views, self.lrs)],
                                                 fused=fused)
        for views, model_state in zip(self.views, state or []):
            for view, view_state in zip(views, model_state):
                if view_state is not None:
                    self.torch_optimizer.state[view] = view_state

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params.values()):
            for g, views in enumerate(self.views):
                views[i].grad = p.grad[g]
            p.grad = None
        self.torch_optimizer.step()

    def keep(self, params: Dict[str, torch.Tensor], models: List[int]) -> "BatchedOptimizer":
        """The optimiser for the models `models` of this one, now stacked in `params`."""
        state = [[self.torch_optimizer.state.get(view) for view in self.views[g]] for g in models]
        return BatchedOptimizer(params, [self.lrs[g] for g in models], self.optim, state)
