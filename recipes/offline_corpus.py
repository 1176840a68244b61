"""A pre-training corpus built offline from Debian packages, deterministically.

    python -m recipes.offline_corpus --out data/corpus [--seed 0] [--scale 1.0] [--workers 2]

(run from the repository root: it uses the sound sources of eval/sounds.py, which is part of the
repository but not of the installed package). Writes 16 kHz mono 16-bit FLAC files of 8 s:

  music_ensemble/  GM pieces rendered by fluidsynth: a key, scale and tempo, a chord progression
                   (block chords or arpeggios), a bass line, a melody, often GM drums
  music_solo/      one GM program at a time, all 128 (sound-effect programs included): melodies,
                   runs, chords, repeated notes, long tones
  drums/           real Hydrogen drum-kit samples arranged into grooves with fills, 14 kits
  speech/          sentences from 823 TTS voices (espeak-ng dialects x variants at random speed
                   and pitch, flite, festival), with pauses
  mixtures/        2-3 overlapping talkers, or speech over music or drums at 0-20 dB SNR
  recordings/      packaged real recordings cut into 8 s pieces: orchestral game music
                   (wesnoth-1.16-music), band recordings and their guitar stems
                   (fretsonfire-songs-*), game music and sound effects (colobot-common-sounds),
                   desktop sounds (sound-theme-freedesktop)

Every clip's level is set to a random loudness (-35 to -15 dB RMS, peaks below 0 dBFS). Work is cut
into batches, each drawn from its own generator seeded by (seed, part, batch), so a batch's files
do not depend on which others exist: an interrupted run resumes by skipping complete batches
(files are written atomically, the batch's last file last). The spoken texts avoid the digit words
that the synthetic evaluation tasks ask for. The voices, kits and soundfont are eval.sounds' pinned
ones, never whatever else is installed. `manifest.json` records the clips and hours per part, and
what they are made from (sources, package versions).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import soundfile

from eval.sounds import (DRUM_CATEGORIES, SAMPLE_RATE, Note, Voice, all_drum_hits, debian_versions,
                         load_drum_hit, provenance, render_clips, speak_many, speech_voices)
from hear_msm_mae.atomic import atomic_write
from hear_msm_mae.audio import load_audio
from hear_msm_mae.pretrain.data import AUDIO_SUFFIXES

CLIP_SECONDS = 8.0
CLIP_SAMPLES = int(CLIP_SECONDS * SAMPLE_RATE)
BATCH = 24  # clips per batch (one fluidsynth / TTS session)
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "dorian": (0, 2, 3, 5, 7, 9, 10),
          "harmonic_minor": (0, 2, 3, 5, 7, 8, 11), "mixolydian": (0, 2, 4, 5, 7, 9, 10),
          "pentatonic": (0, 2, 4, 7, 9), "blues": (0, 3, 5, 6, 7, 10)}
CHORD_PROGRAMS = (0, 1, 2, 4, 5, 6, 7, 16, 17, 18, 19, 24, 25, 26, 27, 28, 46, 48, 49, 50, 52, 88, 89, 90, 91, 94)
BASS_PROGRAMS = (32, 33, 34, 35, 36, 37, 38, 39, 42, 43, 58, 70)
MELODY_PROGRAMS = tuple(p for p in range(112) if p not in BASS_PROGRAMS)
WORDS = ("the", "a", "red", "green", "small", "large", "old", "new", "house", "river", "music", "morning", "people",
         "quickly", "slowly", "never", "always", "walked", "found", "under", "between", "garden", "window",
         "yesterday", "tomorrow", "paper", "silver", "mountain", "coffee", "station", "listen", "remember",
         "evening", "winter", "summer", "table", "letter", "bright", "cold", "warm", "city", "forest", "train",
         "story", "water", "light", "dark", "children", "played", "sang", "opened", "closed", "door", "road",
         "is", "was", "and", "but", "with", "near", "across", "every", "many", "some", "friend", "teacher",
         "doctor", "market", "bread", "apple", "window", "question", "answer", "weather", "rain", "snow",
         "wind", "sun", "moon", "stars", "ocean", "island", "bridge", "tower", "village", "kitchen", "chair")
PACKAGES = ("wesnoth-1.16-music", "fretsonfire-songs-muldjord", "fretsonfire-songs-sectoid",
            "colobot-common-sounds", "sound-theme-freedesktop")
# Hours of pieces taken from each part at --scale 1
PART_HOURS = {"music_ensemble": 1.0, "music_solo": 0.5, "drums": 0.5, "speech": 1.1, "mixtures": 0.4,
              "recordings": 1.6}


def set_level(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale to a random RMS level between -35 and -15 dBFS, keeping peaks below 0.99."""
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    if rms == 0:
        return audio.astype(np.float32)
    audio = audio * (10 ** (rng.uniform(-35, -15) / 20) / rms)
    peak = float(np.abs(audio).max())
    return (audio * min(1.0, 0.99 / peak)).astype(np.float32)


def fit(audio: np.ndarray, samples: int = CLIP_SAMPLES) -> np.ndarray:
    return np.pad(audio[:samples], (0, max(0, samples - len(audio))))


# -- music -------------------------------------------------------------------------------------------

def ensemble_piece(rng: np.random.Generator) -> List[Note]:
    """A few bars in a random key, scale and tempo: chords, bass, melody and (often) GM drums."""
    beat = 60 / rng.uniform(60, 170)
    scale = SCALES[list(SCALES)[rng.integers(len(SCALES))]]
    root = int(rng.integers(45, 58))
    chord_program, bass_program = int(rng.choice(CHORD_PROGRAMS)), int(rng.choice(BASS_PROGRAMS))
    melody_program = int(rng.choice(MELODY_PROGRAMS))
    degrees = rng.integers(0, len(scale), size=8)
    arpeggio = rng.random() < 0.4
    notes, bar = [], 0
    pitch_of = lambda degree, octave: root + 12 * (octave + degree // len(scale)) + scale[degree % len(scale)]
    while bar * 4 * beat < CLIP_SECONDS:
        start, degree = bar * 4 * beat, int(degrees[bar % len(degrees)])
        chord = [pitch_of(degree + k, 1) for k in (0, 2, 4)]
        velocity = int(rng.integers(50, 90))
        if arpeggio:
            for i in range(8):
                notes.append(Note(chord_program, chord[i % 3] + 12 * (i // 3 % 2), velocity, beat / 2,
                                  start + i * beat / 2))
        else:
            notes += [Note(chord_program, p, velocity, 4 * beat * 0.95, start) for p in chord]
        per_bar = int(rng.choice([1, 2, 4]))
        for i in range(per_bar):
            notes.append(Note(bass_program, pitch_of(degree, -1), int(rng.integers(70, 110)), 4 * beat / per_bar * 0.9,
                              start + i * 4 * beat / per_bar))
        bar += 1
    t, degree = 0.0, int(rng.integers(0, len(scale)))
    while t < CLIP_SECONDS:
        length = beat * float(rng.choice([0.25, 0.5, 0.5, 1, 1, 1.5, 2]))
        if rng.random() > 0.15:
            notes.append(Note(melody_program, int(np.clip(pitch_of(degree, 2), 0, 127)), int(rng.integers(60, 120)),
                              length * 0.9, t))
        degree = int(np.clip(degree + rng.integers(-3, 4), -len(scale), 2 * len(scale)))
        t += length
    if rng.random() < 0.6:
        kick, snare, hat = (36, 35)[rng.integers(2)], (38, 40, 39)[rng.integers(3)], (42, 44, 46, 51)[rng.integers(4)]
        step = 0
        while step * beat / 2 < CLIP_SECONDS:
            at = step * beat / 2
            notes.append(Note(0, hat, int(rng.integers(40, 90)), 0.1, at, percussion=True))
            if step % 4 == 0 or rng.random() < 0.1:
                notes.append(Note(0, kick, int(rng.integers(80, 127)), 0.1, at, percussion=True))
            if step % 4 == 2:
                notes.append(Note(0, snare, int(rng.integers(70, 120)), 0.1, at, percussion=True))
            step += 1
    return [n for n in notes if n.onset < CLIP_SECONDS]


def solo_piece(rng: np.random.Generator, program: int) -> List[Note]:
    """One program: a melody, a run, chords, repeated notes or long tones."""
    style = rng.integers(5)
    centre = int(rng.integers(40, 80))
    notes, t = [], 0.0
    scale = SCALES[list(SCALES)[rng.integers(len(SCALES))]]
    while t < CLIP_SECONDS:
        velocity = int(rng.integers(40, 127))
        if style == 0:  # melody
            length = float(rng.choice([0.15, 0.25, 0.5, 0.75, 1.0]))
            notes.append(Note(program, centre + int(rng.integers(-7, 8)), velocity, length, t))
        elif style == 1:  # scale run up and down
            length = float(rng.uniform(0.08, 0.25))
            i = len(notes) % (2 * len(scale))
            degree = i if i < len(scale) else 2 * len(scale) - i
            notes.append(Note(program, centre + scale[degree % len(scale)] + 12 * (degree // len(scale)),
                              velocity, length, t))
        elif style == 2:  # chords
            length = float(rng.uniform(0.5, 2.0))
            notes += [Note(program, centre + k, velocity, length * 0.95, t) for k in (0, scale[2], scale[4] % 12 + 7)]
        elif style == 3:  # repeated notes
            length = float(rng.uniform(0.1, 0.4))
            notes.append(Note(program, centre, velocity, length * 0.7, t))
        else:  # long tones with silences
            length = float(rng.uniform(1.0, 3.0))
            notes.append(Note(program, int(rng.integers(30, 90)), velocity, length * rng.uniform(0.5, 1.0), t))
        t += length
    return [n for n in notes if n.onset < CLIP_SECONDS]


def music_ensemble(rng: np.random.Generator, count: int) -> List[np.ndarray]:
    return render_clips([ensemble_piece(rng) for _ in range(count)], [CLIP_SECONDS] * count)


def music_solo(rng: np.random.Generator, count: int) -> List[np.ndarray]:
    programs = rng.permutation(128)[:count]
    return render_clips([solo_piece(rng, int(p)) for p in programs], [CLIP_SECONDS] * count)


# -- drums -------------------------------------------------------------------------------------------

def random_kit(rng: np.random.Generator) -> str:
    kits = sorted({h.kit for h in all_drum_hits()})
    return kits[rng.integers(len(kits))]


def drum_groove(rng: np.random.Generator, kit: str) -> np.ndarray:
    """A groove of one Hydrogen kit's real samples: 16 steps per bar, random pattern, fills."""
    hits = all_drum_hits()
    by_category: Dict[str, list] = {c: [h for h in hits if h.kit == kit and h.category == c] for c in DRUM_CATEGORIES}
    others = [h for h in hits if h.kit == kit and h.category is None]
    step = 60 / rng.uniform(70, 180) / 4
    pattern = {c: rng.random(16) < p for c, p in (("kick", 0.3), ("snare", 0.2), ("hihat", 0.6), ("clap", 0.08),
                                                  ("tom", 0.05), ("cymbal", 0.04))}
    pattern["kick"][0] = True
    out = np.zeros(CLIP_SAMPLES + SAMPLE_RATE * 3, dtype=np.float32)
    for i in range(int(CLIP_SECONDS / step)):
        fill = i % 64 >= 56 and rng.random() < 0.5
        for category, on in pattern.items():
            choices = by_category[category] or others
            if choices and (on[i % 16] or (fill and category in ("tom", "snare") and rng.random() < 0.4)):
                sound = load_drum_hit(choices[rng.integers(len(choices))], max_seconds=2.5)
                at = int((i * step + rng.normal(0, 0.004)) * SAMPLE_RATE) if i else 0
                out[max(at, 0):max(at, 0) + len(sound)] += sound[:len(out) - max(at, 0)] * rng.uniform(0.4, 1.0)
    return out[:CLIP_SAMPLES]


def drums(rng: np.random.Generator, count: int) -> List[np.ndarray]:
    kits = [random_kit(rng) for _ in range(2)]  # two kits a batch: each sample is decoded once
    return [drum_groove(rng, kits[i % 2]) for i in range(count)]


# -- speech ------------------------------------------------------------------------------------------

def random_voice(rng: np.random.Generator, voices: List[Voice]) -> Voice:
    voice = voices[rng.integers(len(voices))]
    if voice.engine == "espeak-ng":
        return Voice(voice.engine, voice.name, float(rng.uniform(0.7, 1.4)), int(rng.integers(15, 85)))
    if voice.engine == "flite":
        return Voice(voice.engine, voice.name, float(rng.uniform(0.8, 1.25)))
    return voice


def sentence(rng: np.random.Generator) -> str:
    return " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=rng.integers(4, 14))) + "."


def talk(rng: np.random.Generator, count: int, workers: int = 1) -> List[np.ndarray]:
    """`count` clips, each one voice saying sentences with pauses, until the clip is full."""
    voices = speech_voices()
    clips_voices = [random_voice(rng, voices) for _ in range(count)]
    requests = [(sentence(rng), v) for v in clips_voices for _ in range(4)]
    spoken = speak_many(requests, workers=workers)
    clips = []
    for i in range(count):
        pieces = []
        for utterance in spoken[4 * i:4 * i + 4]:
            pieces += [np.zeros(int(rng.uniform(0.1, 0.8) * SAMPLE_RATE), np.float32), utterance]
        clips.append(fit(np.concatenate(pieces)))
    return clips


def speech(rng: np.random.Generator, count: int) -> List[np.ndarray]:
    return talk(rng, count)


def mixtures(rng: np.random.Generator, count: int) -> List[np.ndarray]:
    """Overlapping talkers (2-3), or one talker over music or drums at 0-20 dB SNR."""
    kinds = rng.integers(3, size=count)
    talkers = talk(rng, int(count + (kinds == 0).sum() * 2))
    music = music_ensemble(rng, int((kinds == 1).sum()))
    clips, next_talker, kit = [], count, random_kit(rng)
    for i, kind in enumerate(kinds):
        voice = talkers[i] / (np.sqrt(np.mean(talkers[i] ** 2)) + 1e-9)
        if kind == 0:
            extra = talkers[next_talker:next_talker + int(rng.integers(1, 3))]
            next_talker += 2
            background = sum(np.roll(t, int(rng.integers(CLIP_SAMPLES))) / (np.sqrt(np.mean(t ** 2)) + 1e-9)
                             for t in extra) / len(extra)
        elif kind == 1:
            background = music.pop()
        else:
            background = drum_groove(rng, kit)
        background = background / (np.sqrt(np.mean(background ** 2)) + 1e-9)
        clips.append(voice + background * 10 ** (-rng.uniform(0, 20) / 20))
    return clips


# -- packaged recordings -----------------------------------------------------------------------------

def package_files(package: str) -> List[Path]:
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if listing.returncode != 0:
        raise RuntimeError(f"Debian package {package} is not installed (apt-get install {package})")
    return sorted(Path(line) for line in listing.stdout.splitlines()
                  if Path(line).suffix.lower() in AUDIO_SUFFIXES and Path(line).is_file())


def recording_pieces(seconds_budget: float) -> List[Tuple[Path, int]]:
    """(file, start sample) of 8 s pieces spread evenly over every packaged recording; short files whole."""
    files = [f for package in PACKAGES for f in package_files(package)]
    durations = {f: soundfile.info(str(f)).duration for f in files}
    keep = min(1.0, seconds_budget / sum(durations.values()))
    pieces = []
    for f in files:
        n = max(1, round(durations[f] * keep / CLIP_SECONDS))
        span = max(durations[f] - CLIP_SECONDS, 0.0)
        pieces += [(f, int(span * (k + 0.5) / n * SAMPLE_RATE)) for k in range(n)]
    return pieces


def recordings(rng: np.random.Generator, pieces: List[Tuple[Path, int]]) -> List[np.ndarray]:
    out, loaded = [], {}
    for path, start in pieces:
        if path not in loaded:
            loaded = {path: load_audio(path, SAMPLE_RATE).numpy()}
        audio = loaded[path][start:start + CLIP_SAMPLES]
        out.append(audio if len(audio) < CLIP_SAMPLES else fit(audio))
    return out


# -- driver ------------------------------------------------------------------------------------------

GENERATORS: Dict[str, Callable[[np.random.Generator, int], List[np.ndarray]]] = {
    "music_ensemble": music_ensemble, "music_solo": music_solo, "drums": drums, "speech": speech,
    "mixtures": mixtures}


def batch_files(out: Path, part: str, batch: int, count: int) -> List[Path]:
    return [out / part / f"{part}_{batch:04d}_{i:02d}.flac" for i in range(count)]


def make_batch(job: Tuple[Path, str, int, int, int, list]) -> str:
    out, part, batch, count, seed, pieces = job
    files = batch_files(out, part, batch, count)
    if files[-1].is_file():
        return f"{part} {batch}: done before"
    rng = np.random.default_rng((seed, list(PART_HOURS).index(part), batch))
    clips = recordings(rng, pieces) if part == "recordings" else GENERATORS[part](rng, count)
    for path, clip in zip(files, clips):
        with atomic_write(path) as f:
            soundfile.write(f, set_level(clip, rng), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return f"{part} {batch}: {count} clips"


def build(out: Path, seed: int = 0, scale: float = 1.0, workers: int = 2) -> dict:
    jobs = []
    for part, hours in PART_HOURS.items():
        clips = max(1, round(hours * scale * 3600 / CLIP_SECONDS))
        pieces = recording_pieces(hours * scale * 3600) if part == "recordings" else []
        clips = len(pieces) if pieces else clips
        for batch, first in enumerate(range(0, clips, BATCH)):
            count = min(BATCH, clips - first)
            jobs.append((out, part, batch, count, seed, pieces[first:first + count]))
    started = time.time()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, message in enumerate(pool.map(make_batch, jobs)):
            print(f"[{i + 1}/{len(jobs)} {time.time() - started:.0f}s] {message}", file=sys.stderr, flush=True)
    made_from = provenance(("notes", "speech", "drums"))
    made_from["debian_packages"].update(debian_versions(PACKAGES))  # those of the packaged recordings
    manifest = {"seed": seed, "scale": scale, "clip_seconds": CLIP_SECONDS, "packages": list(PACKAGES),
                "made_from": made_from, "parts": {}}
    for part in PART_HOURS:
        files = sorted((out / part).glob("*.flac"))
        seconds = sum(soundfile.info(str(f)).duration for f in files)
        manifest["parts"][part] = {"clips": len(files), "hours": round(seconds / 3600, 3)}
    manifest["hours"] = round(sum(p["hours"] for p in manifest["parts"].values()), 3)
    with atomic_write(out / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every part's hours")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    manifest = build(args.out, args.seed, args.scale, args.workers)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
