"""Pre-training speed: steps per second of the trainer's own step for the bundled default's configuration.

    flock /tmp/heavy.lock python benchmarks/pretrain_step.py [--checkpoint checkpoints/msm_mae_default.pth]
    flock /tmp/heavy.lock python benchmarks/pretrain_step.py --trees ../old-tree .   # before / after

The configuration (model size, input, batch size, precision, gradient clipping, optimiser) is the one stored
in the checkpoint's `args`: for the bundled default a 192-d, 6-block encoder and 2-block decoder over 80x208
log-mel units, batch 128, bf16 autocast where fast. A real `Trainer` is built over a small synthetic corpus
(noise, 2.5 s files: enough for one batch plus the held-out files); one of its batches is then fed to
`Trainer.train_step` (forward, masked MSE, backward, clipping, AdamW, schedule) again and again. Data loading
is not timed. Printed: the best of --rounds rounds of --steps steps, as steps / s and ms / step, and the
share of the CPUs other processes used meanwhile (this machine is shared).

With --trees the script runs itself on each source tree in turn (PYTHONPATH=TREE, one round per process),
--rounds times, so that a change in the machine's load hits every tree alike, and prints each tree's best
and its speed relative to the first tree's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import soundfile
import torch

import hear_msm_mae
from hear_msm_mae.checkpoint import read_file
from hear_msm_mae.pretrain.trainer import PretrainConfig, Trainer

from inference import OtherLoad

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "msm_mae_default.pth"


def config_from_checkpoint(path: Path, corpus: Path, out: Path) -> PretrainConfig:
    """The checkpoint's training args as a PretrainConfig over `corpus`, one process, no data workers."""
    args = vars(read_file(path)["args"])
    known = {f.name for f in fields(PretrainConfig)} - {"audio", "out", "cache", "model", "device", "num_workers",
                                                        "convert_workers", "stop_after_steps"}
    size = args["model"].split("_")[2]  # "mae_vit_tiny_patch16x16" -> "tiny"
    return PretrainConfig(audio=[str(corpus)], out=str(out), model=size, device="cpu", num_workers=0,
                          convert_workers=1, **{k: v for k, v in args.items() if k in known})


def write_corpus(folder: Path, files: int, seconds: float = 2.5) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        soundfile.write(folder / f"noise{i:04d}.wav", 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)


def compare_trees(args) -> None:
    """One round per process, the trees in turn; each tree's best round."""
    best, package = {tree: float("inf") for tree in args.trees}, {}
    load = OtherLoad().start()
    for _ in range(args.rounds):
        for tree in args.trees:
            command = [sys.executable, __file__, "--checkpoint", str(args.checkpoint), "--threads", str(args.threads),
                       "--steps", str(args.steps), "--rounds", "1", "--json"]
            result = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": str(tree.resolve())})
            if result.returncode:
                raise RuntimeError(f"{tree}: {result.stderr[-3000:]}")
            child = json.loads(result.stdout.strip().splitlines()[-1])
            best[tree], package[tree] = min(best[tree], child["seconds_per_step"]), child["package"]
    print(f"\n| hear_msm_mae from | steps / s | ms / step | vs the first |\n|---|---|---|---|")
    for tree, seconds in best.items():
        print(f"| {package[tree]} | {1 / seconds:.2f} | {seconds * 1000:.0f} | {best[args.trees[0]] / seconds:.2f}x |")
    print(f"(best of {args.rounds} rounds of {args.steps} steps each; other processes used {load.share():.0%} of "
          "the CPUs meanwhile)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trees", nargs="+", type=Path, help="source trees to compare (see above)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one round's result, for --trees
    args = parser.parse_args()
    if args.trees:
        return compare_trees(args)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        stored = vars(read_file(args.checkpoint)["args"])
        write_corpus(Path(tmp) / "corpus", stored["batch_size"] + stored["holdout"])
        config = config_from_checkpoint(args.checkpoint, Path(tmp) / "corpus", Path(tmp) / "run")
        trainer = Trainer(config)
        batch = next(iter(trainer.loader(0, 0)))
        trainer.model.train()
        for _ in range(2):  # warm-up
            trainer.train_step(batch)
        load, best = OtherLoad().start(), float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(batch)
            best = min(best, (time.perf_counter() - start) / args.steps)
    if args.json:
        return print(json.dumps({"seconds_per_step": best, "package": str(Path(hear_msm_mae.__file__).parent)}))
    c = trainer.model_config.to_dict()  # the stored form, the same in every tree
    print(f"hear_msm_mae from {Path(hear_msm_mae.__file__).parent}; torch {torch.__version__}, {args.threads} threads")
    print(f"{args.checkpoint.name}'s configuration: {c['embed_dim']}-d, {c['depth']} blocks, decoder "
          f"{c['decoder_embed_dim']}-d x {c['decoder_depth']}, {c['input_size'][0]}x{c['input_size'][1]}, batch "
          f"{config.batch_size}, {trainer.dtype}, "
          f"mask ratio {config.mask_ratio}, clip_grad {config.clip_grad}")
    print(f"train_step: {1 / best:.2f} steps / s ({best * 1000:.0f} ms / step), best of {args.rounds} rounds of "
          f"{args.steps} steps; other processes used {load.share():.0%} of the CPUs meanwhile")


if __name__ == "__main__":
    main()
