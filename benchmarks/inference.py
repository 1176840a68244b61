"""Inference speed and memory of the HEAR module, ViT-Base 80x208 with random weights.

    python benchmarks/inference.py [--threads 2] [--clips 8] [--repeats 2]

All numbers come from one run, as ratios where the machine's load could matter:
  1. throughput (seconds of audio per wall second) of scene embeddings for batches of 10-s clips:
     the reference strategy (float32, eager attention, one encoder call per unit) vs this package
     (bounded batches of units, scaled_dot_product_attention, a bfloat16 encoder where bf16 is fast);
  2. default mode: cost per second of audio of 1-s clips relative to 10-s clips;
  3. peak RSS of one 20-minute clip (scene and timestamp embeddings), each in a fresh process,
     against a 5-minute clip: memory should be flat in duration;
  4. cosine similarity of bfloat16 embeddings to float32 ones.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import hear_msm_mae
from hear_msm_mae.checkpoint import save_checkpoint
from hear_msm_mae.model import MAEConfig, MaskedAutoencoder

SR = 16000


def eager_attention(q, k, v):
    """What the reference computed: softmax(q k^T / sqrt(d)) v, materialised in full."""
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def reference_scene_embeddings(model, audio):
    """The original wrapper's loop: per-batch normalisation, one encoder call per unit, float32, eager."""
    lms = model.normalised_features(audio)
    unit = model.unit_frames
    lms = torch.nn.functional.pad(lms, (0, -lms.shape[-1] % unit)).unsqueeze(1)
    frames = []
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", eager_attention):
        for start in range(0, lms.shape[-1], unit):
            frames.append(model.encode_units(lms[..., start:start + unit]))
    return torch.cat(frames, dim=1).mean(dim=1)


def throughputs(strategies, repeats):
    """{name: (embed, audio)} -> {name: seconds of audio per wall second}, best of `repeats`.

    Rounds interleave the strategies, so a change in the machine's load hits all of them alike.
    """
    for embed, audio in strategies.values():
        embed(audio[:1, :SR])  # warm-up
    best = {name: float("inf") for name in strategies}
    for _ in range(repeats):
        for name, (embed, audio) in strategies.items():
            start = time.perf_counter()
            embed(audio)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: audio.numel() / SR / best[name] for name, (_, audio) in strategies.items()}


def peak_rss_mb(checkpoint: Path, seconds: float, kind: str, threads: int) -> dict:
    """Run one clip in a fresh process; return its peak RSS and the RSS after loading the model."""
    code = f"""
import time, torch, json, hear_msm_mae
def high_water_mb():  # this process's own peak RSS (ru_maxrss would include the parent's at fork)
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
torch.set_num_threads({threads})
model = hear_msm_mae.load_model({str(checkpoint)!r}, device="cpu")
loaded = high_water_mb()
audio = 0.1 * torch.randn(1, int({seconds} * 16000))
start = time.perf_counter()
out = hear_msm_mae.get_{kind}_embeddings(audio, model)
wall = time.perf_counter() - start
print(json.dumps(dict(loaded_mb=loaded, peak_mb=high_water_mb(), wall_s=wall)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=8, help="10-s clips per batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "80x208p16x16_random" / "checkpoint-0.pth"
        save_checkpoint(checkpoint, MaskedAutoencoder(MAEConfig()), epoch=0)
        fp32 = hear_msm_mae.load_model(checkpoint, device="cpu", dtype="float32")
        fast = hear_msm_mae.load_model(checkpoint, device="cpu")  # dtype auto
        reference = hear_msm_mae.load_model(checkpoint, device="cpu", dtype="float32", mode="reference")
        print(f"threads {args.threads}; auto dtype here: {fast.compute_dtype}")

        audio10 = 0.1 * torch.randn(args.clips, 10 * SR)
        audio1 = 0.1 * torch.randn(args.clips * 10, SR)
        scene = hear_msm_mae.get_scene_embeddings
        default = f"batched units, {fast.compute_dtype} weights, SDPA (default)"
        with torch.inference_mode():
            rows = throughputs({
                "reference strategy (fp32, eager, unit per call)":
                    (lambda a: reference_scene_embeddings(reference, a), audio10),
                "batched units, fp32, SDPA": (lambda a: scene(a, fp32), audio10),
                default: (lambda a: scene(a, fast), audio10),
                "1-s clips, default": (lambda a: scene(a, fast), audio1),
            }, args.repeats)
        one_second = rows.pop("1-s clips, default")
        base = next(iter(rows.values()))
        print("\n| 10-s clips, scene embeddings | audio s / wall s | vs reference |\n|---|---|---|")
        for name, value in rows.items():
            print(f"| {name} | {value:.1f} | {value / base:.2f}x |")
        print(f"\ndefault mode, cost per second of audio: 1-s clips / 10-s clips = {rows[default] / one_second:.2f}"
              f"  ({one_second:.1f} vs {rows[default]:.1f} audio s / wall s)")

        probe = 0.1 * torch.randn(4, 10 * SR)
        exact = hear_msm_mae.get_scene_embeddings(probe, fp32)
        approx = hear_msm_mae.get_scene_embeddings(probe, fast)
        frames_exact, _ = hear_msm_mae.get_timestamp_embeddings(probe, fp32)
        frames_approx, _ = hear_msm_mae.get_timestamp_embeddings(probe, fast)
        cosine = torch.nn.functional.cosine_similarity
        print(f"{fast.compute_dtype} vs float32 cosine: scene min {float(cosine(exact, approx).min()):.6f}, "
              f"timestamp frames min {float(cosine(frames_exact, frames_approx, dim=-1).min()):.6f}")

        if not args.skip_memory:
            print("\n| one clip, fresh process | model loaded (MB) | peak RSS (MB) | wall (s) |\n|---|---|---|---|")
            for kind in ("scene", "timestamp"):
                for minutes in (5, 20):
                    r = peak_rss_mb(checkpoint, minutes * 60, kind, args.threads)
                    print(f"| {minutes} min, {kind} | {r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
