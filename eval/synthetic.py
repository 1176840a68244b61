"""Small HEAR-format tasks built offline from Debian packages (see eval.sounds), deterministically.

    python -m eval.synthetic --out DIR [--tiny] [--seed 0]

writes four tasks into DIR, each in hear-preprocess's final layout (what the HEAR 2021 task
tarballs hold, and what hear-eval-kit reads; written by eval.tasks.write_task)::

    DIR/<task_name>-v1-<mode>/
        task_metadata.json      task_name, version, embedding_type, prediction_type, split_mode,
                                (nfolds), sample_duration, evaluation, default_mode, mode, splits,
                                made_from (generator version, seed, the eval.sounds sources and
                                the package versions), digest (eval.tasks.task_digest: "sha256:...")
        labelvocabulary.csv     idx,label
        <split>.json            {file name: [label, ...]}  (scene)
                                {file name: [{"label", "start", "end"} (ms), ...]}  (event)
        16000/<split>/*.wav     16 kHz mono 16-bit PCM, every file exactly sample_duration long

The tasks (mode "full"; "tiny" is the same with a handful of files, for tests):

| task                  | type  | split mode          | what is predicted                     | held out by |
|-----------------------|-------|---------------------|---------------------------------------|-------------|
| synth_pitch           | scene | trainvaltest        | MIDI pitch of a GM note (2 octaves)   | instrument  |
| synth_words           | scene | new_split_kfold (5) | which of ten spoken digits            | TTS voice   |
| synth_speaker_count   | scene | new_split_kfold (5) | how many voices talk at once (1-4)    | TTS voice   |
| synth_drum_events     | event | trainvaltest        | onsets/offsets of kick, snare, hi-hat | drum kit    |

The speaker-count mixtures give every voice the same level and then scale the mixture to a level
drawn independently of the count, so the count cannot be read off the loudness. The drum events
are real Hydrogen drum-kit samples placed at known times in coloured noise; an event ends where
the hit's envelope has fallen 40 dB below its peak.

Full mode: 528 + 400 + 200 + 200 files (1 s, 1 s, 3 s and 4 s), 74 MB, about 15 s on two
cores; tiny mode: a few seconds. The same seed gives the same bytes on any machine with the same
versions of the packages `made_from` lists: the voices, drum kits and soundfont are eval.sounds'
pinned ones, never whatever else is installed. The digest (sha256 of every split's labels and
every file's samples) tells two builds of a task apart; eval.run prints it beside the results.
Each task folder is written under a temporary name and renamed when complete, so a killed run
never leaves a half-written task; an existing task folder of the same name is replaced.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .sounds import (SAMPLE_RATE, DrumHit, Note, Voice, drum_hits, load_drum_hit, provenance, render_notes,
                     speak_many, speech_voices)
from .tasks import Example, write_task

VERSION = "v1"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SENTENCE_WORDS = ("the", "a", "red", "green", "small", "large", "house", "river", "music", "morning",
                  "people", "quickly", "never", "always", "walked", "found", "under", "between", "garden",
                  "window", "yesterday", "tomorrow", "seven", "paper", "silver", "mountain", "coffee",
                  "station", "listen", "remember", "evening", "winter", "summer", "table", "letter")
# GM programs (numbered from 0) that sound clearly between MIDI 48 and 71 in FluidR3
PITCHED_PROGRAMS = (0, 1, 2, 4, 5, 6, 11, 12, 16, 17, 19, 21, 24, 25, 26, 27, 40, 41, 42, 48, 49, 52,
                    56, 57, 60, 61, 64, 65, 66, 68, 71, 73, 74, 80, 81, 82)
DRUM_LABELS = ("hihat", "kick", "snare")
COUNT_LEVEL = 0.04  # speaker-count mixtures' RMS (+-6 dB): low enough that no clip needs limiting


@dataclass(frozen=True)
class Sizes:
    """How much of everything a mode generates."""
    pitch_programs: Tuple[int, int, int]  # instruments in train, valid, test
    pitches: Tuple[int, int]  # MIDI range, inclusive
    words: int  # how many of DIGITS
    words_folds: int
    words_voices_per_fold: int
    count_max: int  # speaker counts 1..count_max
    count_folds: int
    count_voices_per_fold: int
    count_clips_per_count_and_fold: int
    events_clips: Tuple[int, int, int]  # train, valid, test
    events_seconds: float


SIZES = {
    "full": Sizes(pitch_programs=(12, 5, 5), pitches=(48, 71), words=10, words_folds=5, words_voices_per_fold=8,
                  count_max=4, count_folds=5, count_voices_per_fold=8, count_clips_per_count_and_fold=10,
                  events_clips=(120, 40, 40), events_seconds=4.0),
    "tiny": Sizes(pitch_programs=(2, 1, 1), pitches=(60, 65), words=3, words_folds=3, words_voices_per_fold=2,
                  count_max=2, count_folds=3, count_voices_per_fold=3, count_clips_per_count_and_fold=2,
                  events_clips=(4, 2, 2), events_seconds=2.0),
}


def fit(audio: np.ndarray, seconds: float) -> np.ndarray:
    """Trim or zero-pad to exactly `seconds`."""
    size = round(seconds * SAMPLE_RATE)
    return np.pad(audio[:size], (0, max(0, size - len(audio)))).astype(np.float32)


def place(audio: np.ndarray, seconds: float, rng: np.random.Generator, lead: Tuple[float, float]) -> np.ndarray:
    """Put `audio` into a silent clip of `seconds`, starting after a random lead (seconds)."""
    start = round(rng.uniform(*lead) * SAMPLE_RATE)
    return fit(np.concatenate([np.zeros(start, np.float32), audio]), seconds)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)) + 1e-12))


def coloured_noise(rng: np.random.Generator, size: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n=size)
    return (noise / rms(noise)).astype(np.float32)


def to_pcm_range(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale down (never up) so the peak is at most `peak`: 16-bit PCM without clipping."""
    top = float(np.abs(audio).max())
    return audio * (peak / top) if top > peak else audio


def varied_voices(rng: np.random.Generator, count: int) -> List[Voice]:
    """`count` different installed voices in a seeded order, espeak-ng/flite ones at a random speed."""
    pool = speech_voices()
    if count > len(pool):
        raise ValueError(f"need {count} voices, only {len(pool)} installed")
    chosen = [pool[i] for i in rng.permutation(len(pool))[:count]]
    return [Voice(v.engine, v.name, speed=round(float(rng.uniform(0.85, 1.2)), 2)) if v.engine != "festival" else v
            for v in chosen]


# ----------------------------------------------------------------------------------------------
# The four tasks: each returns (metadata, {split: {file name: (audio, labels)}})

def pitch_task(rng: np.random.Generator, sizes: Sizes) -> Tuple[dict, Dict[str, Dict[str, Example]]]:
    """GM notes of every pitch in range; the instruments of valid and test are unseen in train."""
    programs = [PITCHED_PROGRAMS[i] for i in rng.permutation(len(PITCHED_PROGRAMS))[:sum(sizes.pitch_programs)]]
    n_train, n_valid, _ = sizes.pitch_programs
    split_programs = {"train": programs[:n_train], "valid": programs[n_train:n_train + n_valid],
                      "test": programs[n_train + n_valid:]}
    pitches = range(sizes.pitches[0], sizes.pitches[1] + 1)
    requests = [(split, program, pitch, int(rng.integers(70, 128)), float(rng.uniform(0.5, 0.9)))
                for split, progs in split_programs.items() for program in progs for pitch in pitches]
    notes = [Note(program, pitch, velocity, duration) for _, program, pitch, velocity, duration in requests]
    waves = render_notes(notes, tail=0.5)
    splits: Dict[str, Dict[str, Example]] = {s: {} for s in split_programs}
    for (split, program, pitch, velocity, _), wave in zip(requests, waves):
        if rms(wave) < 1e-4:
            raise RuntimeError(f"GM program {program} is silent at pitch {pitch}: pick audible programs")
        audio = place(to_pcm_range(wave / (4 * rms(wave))), 1.0, rng, (0.0, 0.05))
        splits[split][f"gm{program:03d}_p{pitch}_v{velocity}.wav"] = (audio, [str(pitch)])
    metadata = {"embedding_type": "scene", "prediction_type": "multiclass", "split_mode": "trainvaltest",
                "sample_duration": 1.0, "evaluation": ["pitch_acc", "chroma_acc"],
                "pitch_range_min": sizes.pitches[0], "pitch_range_max": sizes.pitches[1]}
    return metadata, splits


def fold_names(n: int) -> List[str]:
    return [f"fold{i:02d}" for i in range(n)]


def words_task(rng: np.random.Generator, sizes: Sizes) -> Tuple[dict, Dict[str, Dict[str, Example]]]:
    """Spoken digits; every voice says every digit once and belongs to exactly one fold."""
    folds = fold_names(sizes.words_folds)
    voices = varied_voices(rng, sizes.words_folds * sizes.words_voices_per_fold)
    requests = [(fold, voice, word) for f, fold in enumerate(folds)
                for voice in voices[f * sizes.words_voices_per_fold:(f + 1) * sizes.words_voices_per_fold]
                for word in DIGITS[:sizes.words]]
    waves = speak_many([(word, voice) for _, voice, word in requests])
    splits: Dict[str, Dict[str, Example]] = {fold: {} for fold in folds}
    for (fold, voice, word), wave in zip(requests, waves):
        lead = (0.0, max(0.0, 0.95 - len(wave) / SAMPLE_RATE))
        audio = place(to_pcm_range(wave * (0.1 / rms(wave))), 1.0, rng, lead)
        splits[fold][f"{voice.id}_{word}.wav"] = (audio, [word])
    metadata = {"embedding_type": "scene", "prediction_type": "multiclass", "split_mode": "new_split_kfold",
                "nfolds": sizes.words_folds, "sample_duration": 1.0, "evaluation": ["top1_acc"]}
    return metadata, splits


def sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(SENTENCE_WORDS[i] for i in rng.integers(len(SENTENCE_WORDS), size=words))


def speaker_count_task(rng: np.random.Generator, sizes: Sizes) -> Tuple[dict, Dict[str, Dict[str, Example]]]:
    """Mixtures of 1..count_max different voices talking over each other for 3 s, loudness-normalised."""
    seconds = 3.0
    folds = fold_names(sizes.count_folds)
    voices = varied_voices(rng, sizes.count_folds * sizes.count_voices_per_fold)
    clips = []  # (fold, count, index, [voices of the clip])
    for f, fold in enumerate(folds):
        fold_voices = voices[f * sizes.count_voices_per_fold:(f + 1) * sizes.count_voices_per_fold]
        for count in range(1, sizes.count_max + 1):
            for index in range(sizes.count_clips_per_count_and_fold):
                chosen = [fold_voices[i] for i in rng.permutation(len(fold_voices))[:count]]
                clips.append((fold, count, index, chosen))
    requests = [(sentence(rng, int(rng.integers(6, 10))), voice) for *_, chosen in clips for voice in chosen]
    waves = iter(speak_many(requests))
    splits: Dict[str, Dict[str, Example]] = {fold: {} for fold in folds}
    for fold, count, index, chosen in clips:
        mixture = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
        for _ in chosen:
            wave = next(waves)
            wave = wave * (0.1 / rms(wave))  # every talker at the same level
            mixture += place(wave, seconds, rng, (0.0, max(0.0, seconds - len(wave) / SAMPLE_RATE) * 0.5))
        level = COUNT_LEVEL * 10 ** (rng.uniform(-6, 6) / 20)  # +-6 dB, independent of the count
        audio = mixture * (level / rms(mixture)) + 0.001 * coloured_noise(rng, len(mixture), 1.0)
        name = f"{fold}_{count}spk_{index:02d}.wav"
        splits[fold][name] = (to_pcm_range(audio).astype(np.float32), [str(count)])
    metadata = {"embedding_type": "scene", "prediction_type": "multiclass", "split_mode": "new_split_kfold",
                "nfolds": sizes.count_folds, "sample_duration": seconds, "evaluation": ["top1_acc"]}
    return metadata, splits


def hit_length(audio: np.ndarray, floor_db: float = -40.0) -> float:
    """Seconds until the 10 ms-frame RMS envelope last exceeds `floor_db` below its peak (>= 50 ms)."""
    frame = SAMPLE_RATE // 100
    frames = len(audio) // frame
    if frames == 0:
        return max(0.05, len(audio) / SAMPLE_RATE)
    envelope = np.sqrt(np.mean(audio[:frames * frame].reshape(frames, frame) ** 2, axis=1))
    loud = np.nonzero(envelope > envelope.max() * 10 ** (floor_db / 20))[0]
    return max(0.05, (loud[-1] + 1) * frame / SAMPLE_RATE)


def drum_events_task(rng: np.random.Generator, sizes: Sizes) -> Tuple[dict, Dict[str, Dict[str, Example]]]:
    """3-8 real drum hits (kick, snare, hi-hat) at known onsets in coloured noise; kits held out."""
    by_kit: Dict[str, List[DrumHit]] = {}
    for hit in drum_hits(DRUM_LABELS):
        by_kit.setdefault(hit.kit, []).append(hit)
    kits = sorted(k for k, hits in by_kit.items() if {h.category for h in hits} == set(DRUM_LABELS))
    kits = [kits[i] for i in rng.permutation(len(kits))]
    split_kits = {"valid": kits[:2], "test": kits[2:4], "train": kits[4:]}
    seconds = sizes.events_seconds
    size = round(seconds * SAMPLE_RATE)
    splits: Dict[str, Dict[str, Example]] = {}
    for split, n_clips in zip(("train", "valid", "test"), sizes.events_clips):
        pool = {label: [h for k in split_kits[split] for h in by_kit[k] if h.category == label] for label in DRUM_LABELS}
        splits[split] = {}
        for index in range(n_clips):
            audio = np.zeros(size, np.float32)
            events = []
            onset = float(rng.uniform(0.05, 0.4))
            for _ in range(int(rng.integers(3, 9))):
                if onset > seconds - 0.3:
                    break
                label = DRUM_LABELS[rng.integers(len(DRUM_LABELS))]
                hit = pool[label][rng.integers(len(pool[label]))]
                wave = load_drum_hit(hit, max_seconds=0.6)
                wave = wave * (10 ** (rng.uniform(-6, 0) / 20) / max(1e-6, float(np.abs(wave).max())))
                start = round(onset * SAMPLE_RATE)
                piece = wave[:size - start]
                audio[start:start + len(piece)] += piece
                end = min(seconds, onset + hit_length(piece))
                events.append({"label": label, "start": round(onset * 1000, 3), "end": round(end * 1000, 3)})
                onset += float(rng.uniform(0.2, 0.7))
            noise_db = rng.uniform(-35, -20)  # noise RMS relative to a full-scale hit peak
            audio += 10 ** (noise_db / 20) * coloured_noise(rng, size, float(rng.uniform(0.0, 2.0)))
            splits[split][f"{split}_{index:03d}.wav"] = (to_pcm_range(audio * 0.7).astype(np.float32), events)
    metadata = {"embedding_type": "event", "prediction_type": "multilabel", "split_mode": "trainvaltest",
                "sample_duration": seconds, "evaluation": ["event_onset_200ms_fms", "event_onset_50ms_fms",
                                                           "segment_1s_er"]}
    return metadata, splits


TASKS = {"synth_pitch": pitch_task, "synth_words": words_task, "synth_speaker_count": speaker_count_task,
         "synth_drum_events": drum_events_task}
TASK_SOUNDS = {"synth_pitch": ("notes",), "synth_words": ("speech",), "synth_speaker_count": ("speech",),
               "synth_drum_events": ("drums",)}  # the kinds of eval.sounds source each task is made from


def generate(out_dir, tiny: bool = False, seed: int = 0, tasks: Sequence[str] = tuple(TASKS)) -> List[Path]:
    """Build the synthetic tasks into `out_dir`; returns the task folders. Same seed, same files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "tiny" if tiny else "full"
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown synthetic tasks {unknown}; known: {sorted(TASKS)}")
    paths = []
    for task_name in tasks:
        rng = np.random.default_rng([seed, list(TASKS).index(task_name)])
        metadata, splits = TASKS[task_name](rng, SIZES[mode])
        made_from = {"generator": "eval.synthetic", "generator_version": VERSION, "seed": seed,
                     **provenance(TASK_SOUNDS[task_name])}
        metadata = {"task_name": task_name, "version": VERSION, **metadata, "default_mode": "full", "mode": mode,
                    "made_from": made_from}
        sorted_splits = {split: dict(sorted(examples.items())) for split, examples in splits.items()}
        paths.append(write_task(out_dir / f"{task_name}-{VERSION}-{mode}", metadata, sorted_splits, digest=True))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to put the task folders in")
    parser.add_argument("--tiny", action="store_true", help="a handful of files per task (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args(argv)
    start = time.time()
    for path in generate(args.out, tiny=args.tiny, seed=args.seed, tasks=args.tasks):
        metadata = json.loads((path / "task_metadata.json").read_text())
        counts = {s: len(json.loads((path / f"{s}.json").read_text())) for s in metadata["splits"]}
        print(f"{path}: {counts} {metadata['digest']}")
    print(f"done in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
