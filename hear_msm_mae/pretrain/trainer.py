"""MSM-MAE pre-training: one process, or one per GPU under torchrun with DistributedDataParallel.

Objective and optimiser as in MAE / MSM-MAE: random masking (ratio 0.75), MSE on the masked
patches, AdamW (betas 0.9/0.95, weight decay 0.05 except biases and norms), lr = base_lr x
global batch / 256, per-step linear warm-up then half-cosine decay, bf16 autocast where the
hardware is fast at it.

A run lives in one folder (--out RUN):
  dataset.json         cache files, skipped files and log-mel mean/std (computed once)
  checkpoint-last.pth  everything needed to resume (model, optimiser, scheduler, scaler, RNG);
                       running the same command again resumes from it
  checkpoint-N.pth     every --save-every epochs (N = epoch index, as the official checkpoints)
  model.pth            the final weights with config and norm stats, without training state
  log.jsonl            one line per step: step, epoch, loss, lr, seconds
  loss.png, recon-epochN.png   loss curve; reconstructions of held-out clips
Only rank 0 writes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..atomic import atomic_write
from ..checkpoint import read_file
from ..distributed import Distributed
from ..families.msm_mae import vit_config
from ..precision import DTYPES, resolve_dtype
from .data import CropDataset, build_cache, crop_unit, norm_stats
from .mae import MODEL_SIZES, MAEConfig, MaskedAutoencoder
from .visualize import save_reconstruction_png


@dataclass
class PretrainConfig:
    audio: List[str]  # folders of audio files
    out: str  # run folder
    cache: Optional[str] = None  # log-mel cache folder (default RUN/lms)
    # model
    model: str = "base"  # a size from MODEL_SIZES; the fields below override its widths and depths
    input_size: Tuple[int, int] = (80, 208)
    patch_size: Tuple[int, int] = (16, 16)
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    decoder_embed_dim: Optional[int] = None
    decoder_depth: Optional[int] = None
    decoder_num_heads: Optional[int] = None
    use_cls_token: bool = False
    # objective and optimiser
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    epochs: int = 100
    warmup_epochs: float = 10.0
    batch_size: int = 64  # per process
    base_lr: float = 1.5e-4  # lr = base_lr * global batch / 256 ...
    lr: Optional[float] = None  # ... unless given directly
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None  # max gradient norm; None: no clipping
    precision: str = "auto"  # auto (embedder.fast_dtype: bfloat16 or float16 where fast), float32, bfloat16, float16
    seed: int = 0
    # running
    device: Optional[str] = None  # default: this rank's GPU if there is one, else CPU
    num_workers: int = 4  # data loader processes per rank
    convert_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    save_every: int = 10  # epochs between kept checkpoint-N.pth (and loss curve)
    recon_every: int = 10  # epochs between reconstruction pictures
    resume_minutes: float = 10.0  # minutes between checkpoint-last.pth saves inside an epoch
    holdout: int = 4  # cache files kept out of training for the reconstruction pictures
    stop_after_steps: Optional[int] = None  # end this invocation after this global step (schedule unchanged)

    def __post_init__(self):
        self.input_size, self.patch_size = tuple(self.input_size), tuple(self.patch_size)
        self.betas = tuple(self.betas)
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model must be one of {sorted(MODEL_SIZES)}, got {self.model!r}")
        if self.precision not in ("auto", *DTYPES):
            raise ValueError(f"precision must be one of {['auto', *DTYPES]}, got {self.precision!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be between 0 and 1, got {self.mask_ratio}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}")
        self.model_config()  # a bad size or patch fails here, before any audio is converted

    def model_config(self) -> MAEConfig:
        encoder, decoder = (dict(sizes) for sizes in MODEL_SIZES[self.model])
        for sizes in (encoder, decoder):
            sizes.update({k: getattr(self, k) for k in sizes if getattr(self, k) is not None})
        return MAEConfig(vit_config(input_size=self.input_size, patch_size=self.patch_size,
                                    use_cls_token=self.use_cls_token, **encoder),
                         norm_pix_loss=self.norm_pix_loss, **decoder)

    def to_args(self) -> argparse.Namespace:
        """The checkpoint's 'args', as the official ones: plain values, `model` naming the architecture."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        pf, pt = self.patch_size
        values["model"] = f"mae_vit_{self.model}_patch{pf}x{pt}"
        return argparse.Namespace(**values)


# -- data --------------------------------------------------------------------------------------------

def prepare_dataset(config: PretrainConfig, runtime: Distributed) -> dict:
    """RUN/dataset.json: made once by rank 0 (cache conversion, statistics), then read by every rank."""
    path = Path(config.out) / "dataset.json"
    if runtime.main and not path.is_file():
        cache = Path(config.cache) if config.cache else Path(config.out) / "lms"
        result = build_cache([Path(a) for a in config.audio], cache, config.convert_workers)
        if len(result.files) <= config.holdout:
            raise ValueError(f"only {len(result.files)} readable audio files; need more than the "
                             f"{config.holdout} held out for pictures")
        order = np.random.default_rng(config.seed).permutation(len(result.files))
        holdout = sorted(order[:config.holdout].tolist())
        mean, std = norm_stats(result.files)
        info = {"train": [str(f) for i, f in enumerate(result.files) if i not in holdout],
                "holdout": [str(result.files[i]) for i in holdout],
                "skipped": {str(p): reason for p, reason in result.failed},
                "mean": mean, "std": std}
        with atomic_write(path, "w") as f:
            json.dump(info, f, indent=1)
    runtime.barrier()
    return json.loads(path.read_text())


def holdout_units(dataset: dict, frames: int) -> Tuple[torch.Tensor, List[str]]:
    """Normalised (n, 1, 80, frames) units from the middle of each held-out file."""
    units, names = [], []
    for path in dataset["holdout"]:
        lms = np.load(path, mmap_mode="r")
        units.append(crop_unit(lms, max(lms.shape[1] - frames, 0) // 2, frames, dataset["mean"], dataset["std"]))
        names.append(Path(path).name[:-len(".npy")])
    return torch.stack(units), names


# -- optimisation ------------------------------------------------------------------------------------

def make_optimizer(model: MaskedAutoencoder, config: PretrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW; biases and 1-D weights (norms) without weight decay, as in MAE."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=config.betas)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float) -> float:
    """Linear warm-up to 1, then half-cosine decay to min_factor, per step."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def gather_rng_states(runtime: Distributed) -> List[torch.Tensor]:
    """Every rank's torch RNG state (CPU, then CUDA where used), collected on all ranks."""
    state = [torch.get_rng_state()] + ([torch.cuda.get_rng_state(runtime.device)]
                                       if runtime.device.type == "cuda" else [])
    if runtime.world_size == 1:
        return [state]
    states = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states


# -- the run -----------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, config: PretrainConfig):
        self.config = config
        self.out = Path(config.out)
        self.runtime = Distributed.start(config.device)  # joins torchrun's process group, if any
        rt = self.runtime
        if rt.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.dataset_info = prepare_dataset(config, rt)
        self.norm_stats = (self.dataset_info["mean"], self.dataset_info["std"])
        self.model_config = config.model_config()
        self.dataset = CropDataset(self.dataset_info["train"], self.model_config.encoder.input_size[1],
                                   *self.norm_stats, seed=config.seed)
        self.sampler = DistributedSampler(self.dataset, rt.world_size, rt.rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.dataset)} training files are too few for batch size {config.batch_size} "
                             f"x {rt.world_size} process(es); lower --batch-size")
        self.total_steps = config.epochs * self.steps_per_epoch
        global_batch = config.batch_size * rt.world_size
        self.lr = config.lr if config.lr is not None else config.base_lr * global_batch / 256
        self.dtype = resolve_dtype(config.precision, rt.device)

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.model = MaskedAutoencoder(self.model_config).to(rt.device)
        self.optimizer = make_optimizer(self.model, config, self.lr)
        warmup = round(config.warmup_epochs * self.steps_per_epoch)
        min_factor = config.min_lr / self.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, warmup, min_factor))
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        torch.manual_seed(config.seed + rt.rank)  # different masks on every rank
        self.resume()
        self.ddp = DistributedDataParallel(self.model, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                           else None) if rt.world_size > 1 else self.model

    # -- checkpoints --

    def resume(self) -> None:
        path = self.out / "checkpoint-last.pth"
        if not path.is_file():
            return
        state = read_file(path)
        stored = MAEConfig.from_dict(state["config"])
        if stored != self.model_config:
            raise ValueError(f"{path} holds a run of a different model ({stored}); this command asks for "
                             f"{self.model_config}. Use another --out or the original options.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng = state["rng"]
        if len(rng) == self.runtime.world_size:
            torch.set_rng_state(rng[self.runtime.rank][0])
            if self.runtime.device.type == "cuda" and len(rng[self.runtime.rank]) > 1:
                torch.cuda.set_rng_state(rng[self.runtime.rank][1], self.runtime.device)
        else:  # a different number of processes: new, still rank-distinct masks
            torch.manual_seed(self.config.seed + self.runtime.rank + self.step * 1000)
        if self.runtime.main:
            print(f"resuming {path} at step {self.step} (epoch {self.step // self.steps_per_epoch})", file=sys.stderr)
            self.truncate_log()

    def save(self, path: Path, training_state: bool = True) -> None:
        """Official layout (model, epoch, args) + config and norm stats (+ resume state). Rank 0 writes."""
        extra = {"epoch": self.step // self.steps_per_epoch - 1, "args": self.config.to_args(), "step": self.step}
        if training_state:
            rng = gather_rng_states(self.runtime)  # a collective: every rank takes part
            extra.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict(), rng=rng)
        if self.runtime.main:
            self.model.save(path, norm_stats=self.norm_stats, **extra)

    # -- logging and pictures (rank 0) --

    def truncate_log(self) -> None:
        """Drop log lines of steps after the resumed one (written before the interruption)."""
        log = self.out / "log.jsonl"
        if log.is_file():
            lines = [l for l in log.read_text().splitlines() if l and json.loads(l)["step"] <= self.step]
            with atomic_write(log, "w") as f:
                f.write("".join(l + "\n" for l in lines))

    def write_loss_curve(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(l) for l in (self.out / "log.jsonl").read_text().splitlines() if l]
        steps = np.array([r["step"] for r in records])
        loss = np.array([r["loss"] for r in records])
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, loss, color="0.75" if window > 1 else "C0", linewidth=0.6, label="per step")
        if window > 1:
            ax.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window} steps")
        ax.set_xlabel("step")
        ax.set_ylabel("MSE on masked patches")
        ax.set_yscale("log")
        ax.legend(loc="upper right")
        lr_axis = ax.twinx()
        lr_axis.plot(steps, [r["lr"] for r in records], color="C1", linewidth=0.8)
        lr_axis.set_ylabel("learning rate", color="C1")
        encoder = self.model_config.encoder
        ax.set_title(f"{self.out.name}: {encoder.embed_dim}-d, depth {encoder.depth}, "
                     f"batch {self.config.batch_size * self.runtime.world_size}", fontsize=9)
        fig.tight_layout()
        with atomic_write(self.out / "loss.png") as f:
            fig.savefig(f, format="png", dpi=90)
        plt.close(fig)

    def write_reconstructions(self, epoch: int) -> None:
        units, names = holdout_units(self.dataset_info, self.model_config.encoder.input_size[1])
        with torch.autocast(self.runtime.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            save_reconstruction_png(self.out / f"recon-epoch{epoch}.png", self.model, units.to(self.runtime.device),
                                    names, self.config.mask_ratio, seed=self.config.seed, title=f"epoch {epoch}")

    # -- training --

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimiser step on (B, 1, F, T); returns the loss (detached)."""
        with torch.autocast(self.runtime.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss, _, _ = self.ddp(batch, mask_ratio=self.config.mask_ratio)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def loader(self, epoch: int, skip_batches: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        indices = list(self.sampler)[skip_batches * self.config.batch_size:]
        return DataLoader(self.dataset, self.config.batch_size, sampler=indices, drop_last=True,
                          num_workers=self.config.num_workers, pin_memory=self.runtime.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed + epoch))

    def synced(self, loss: torch.Tensor, save_now: bool) -> Tuple[float, bool]:
        """Mean loss over ranks, and rank 0's decision to save (one collective per step)."""
        if self.runtime.world_size == 1:
            return float(loss), save_now
        values = torch.stack([loss.float() / self.runtime.world_size,
                              torch.tensor(float(save_now and self.runtime.main), device=loss.device)])
        dist.all_reduce(values)
        return float(values[0]), bool(values[1] > 0)

    def stop_requested(self) -> bool:
        return self.config.stop_after_steps is not None and self.step >= self.config.stop_after_steps

    def run_epoch(self, epoch: int, skip: int, log) -> bool:
        """Train the rest of an epoch (after `skip` batches); False if stopped inside it (then saved)."""
        rt = self.runtime
        bar = tqdm(self.loader(epoch, skip), total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch}",
                   disable=not rt.main, dynamic_ncols=True)
        for batch in bar:
            lr = self.optimizer.param_groups[0]["lr"]
            loss = self.train_step(batch.to(rt.device, non_blocking=True))
            overdue = time.monotonic() - self.last_save > self.config.resume_minutes * 60
            loss, save_now = self.synced(loss, overdue)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.step}; lower the learning rate "
                                         "or use --clip-grad")
            if rt.main:
                log.write(json.dumps({"step": self.step, "epoch": epoch, "loss": loss, "lr": lr,
                                      "time": round(time.time(), 2)}) + "\n")
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            inside = self.step % self.steps_per_epoch != 0
            if save_now or (self.stop_requested() and inside):
                log and log.flush()
                self.save(self.out / "checkpoint-last.pth")
                self.last_save = time.monotonic()
            if self.stop_requested() and inside:
                return False
        log and log.flush()
        return True

    def end_epoch(self, epoch: int) -> None:
        """Resume checkpoint; every --save-every epochs a kept checkpoint and the loss curve; pictures."""
        self.save(self.out / "checkpoint-last.pth")
        self.last_save = time.monotonic()
        last = epoch + 1 == self.config.epochs
        if (epoch + 1) % self.config.save_every == 0 or last:
            self.save(self.out / f"checkpoint-{epoch}.pth")
            if self.runtime.main:
                self.write_loss_curve()
        if self.runtime.main and ((epoch + 1) % self.config.recon_every == 0 or last):
            self.write_reconstructions(epoch)

    def fit(self) -> MaskedAutoencoder:
        config, rt = self.config, self.runtime
        self.model.train()
        self.last_save = time.monotonic()
        start_epoch, skip = divmod(self.step, self.steps_per_epoch)
        if rt.main:
            print(f"{len(self.dataset)} training files, {self.steps_per_epoch} steps per epoch, "
                  f"{self.total_steps} steps, lr {self.lr:.3g}, {self.dtype}, {rt.world_size} process(es) on "
                  f"{rt.device}", file=sys.stderr)
        log = open(self.out / "log.jsonl", "a") if rt.main else None
        try:
            for epoch in range(start_epoch, config.epochs):
                if not self.run_epoch(epoch, skip, log):
                    return self.model
                skip = 0
                self.end_epoch(epoch)
                if self.stop_requested():
                    return self.model
            self.save(self.out / "model.pth", training_state=False)
            rt.barrier()  # no rank leaves (and tears down its group threads) while rank 0 still writes
        finally:
            if log:
                log.close()
        return self.model


def train(config: PretrainConfig) -> MaskedAutoencoder:
    """Run (or resume) pre-training; returns the trained model (every rank's copy).

    Leaves torchrun's process group at the end if it joined it: a process that exits still in the group
    can abort in gloo's threads ("terminate called without an active exception").
    """
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.runtime.close()


# -- command line --------------------------------------------------------------------------------------

def _size(text: str) -> Tuple[int, int]:
    try:
        f, t = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FxT such as 80x208, got {text!r}") from None
    return f, t


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = {f.name: f.default for f in fields(PretrainConfig) if f.name not in ("audio", "out")}
    parser.add_argument("--audio", nargs="+", required=True, help="folders of audio files (searched recursively)")
    parser.add_argument("--out", required=True, help="run folder; running again with it resumes the run")
    parser.add_argument("--cache", help="log-mel cache folder (default RUN/lms)")
    parser.add_argument("--model", choices=sorted(MODEL_SIZES), default=defaults["model"])
    parser.add_argument("--input-size", type=_size, default=defaults["input_size"], help="FxT, e.g. 80x208")
    parser.add_argument("--patch-size", type=_size, default=defaults["patch_size"], help="e.g. 16x16")
    for name in (name for sizes in MODEL_SIZES["base"] for name in sizes):
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"override the size's {name}")
    parser.add_argument("--use-cls-token", action="store_true")
    parser.add_argument("--mask-ratio", type=float, default=defaults["mask_ratio"])
    parser.add_argument("--norm-pix-loss", action="store_true", help="per-patch normalised targets")
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument("--warmup-epochs", type=float, default=defaults["warmup_epochs"])
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="per process")
    parser.add_argument("--base-lr", type=float, default=defaults["base_lr"], help="lr = base lr x global batch / 256")
    parser.add_argument("--lr", type=float, help="absolute learning rate (overrides --base-lr)")
    parser.add_argument("--min-lr", type=float, default=defaults["min_lr"])
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"])
    parser.add_argument("--betas", type=float, nargs=2, default=defaults["betas"])
    parser.add_argument("--clip-grad", type=float, help="max gradient norm (default: no clipping)")
    parser.add_argument("--precision", choices=["auto", *DTYPES], default=defaults["precision"])
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--device", help="default: this rank's GPU if there is one, else CPU")
    parser.add_argument("--num-workers", type=int, default=defaults["num_workers"], help="data loader processes")
    parser.add_argument("--convert-workers", type=int, default=os.cpu_count() or 1,
                        help="processes converting audio to the log-mel cache")
    parser.add_argument("--save-every", type=int, default=defaults["save_every"], help="epochs between checkpoints")
    parser.add_argument("--recon-every", type=int, default=defaults["recon_every"],
                        help="epochs between reconstruction pictures")
    parser.add_argument("--resume-minutes", type=float, default=defaults["resume_minutes"],
                        help="minutes between resume checkpoints inside an epoch")
    parser.add_argument("--holdout", type=int, default=defaults["holdout"], help="files kept for pictures")
    parser.add_argument("--stop-after-steps", type=int, help="end this invocation after this global step")


def run_pretraining(args: argparse.Namespace) -> None:
    names = {f.name for f in fields(PretrainConfig)}
    try:
        config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
        train(config)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
