"""Offline sound sources from Debian packages, as float32 numpy arrays at 16 kHz mono.

Three kinds of real-sounding audio that need nothing downloaded at run time:

- **Instrument notes** (General MIDI, any program / pitch / velocity / duration), rendered by
  `fluidsynth` with the FluidR3 GM soundfont (Debian: fluidsynth, fluid-soundfont-gm).
  `render_clips` renders many clips in ONE fluidsynth call: it writes a standard MIDI file
  with every clip in its own time slot (separated by "all sound off"), renders it once and
  cuts the slots out. `render_notes` is the one-note-per-clip shortcut.
- **Speech** from three TTS engines: espeak-ng (8 English dialects x 101 voice variants, with
  speed and pitch), flite (6 built-in voices) and festival (kal_diphone). `speech_voices()`
  lists them; `speak(text, voice)` / `speak_many([(text, voice), ...])` synthesise (Debian:
  espeak-ng, flite, festival, festvox-kallpc16k).
- **Real drum hits**: the sample files of the 14 kits of the hydrogen-drumkits package, with
  the kit's instrument name and a coarse category (kick, snare, hihat, tom, cymbal, clap)
  parsed from each kit's drumkit.xml. `drum_hits()` lists them, `load_drum_hit(hit)` reads one.

The voices, kits and soundfont are pinned (ESPEAK_VARIANTS, FLITE_VOICES, FESTIVAL_VOICES,
DRUM_KITS, SOUNDFONT): exactly those of the Debian packages the Makefile installs are used,
whatever else is installed, and a missing one is a RuntimeError naming the package to
install. `provenance(kinds)` records them with the package versions, for metadata.

Everything is deterministic: the engines are run without random effects (no reverb/chorus),
and the `random_*` helpers draw only from the `numpy.random.Generator` they are given, so a
seed fixes the result (for the same versions of the packages `provenance` lists). Nothing here
writes outside a temporary directory. Needs scipy (polyphase resampling).

Example (e.g. for a pre-training corpus)::

    rng = np.random.default_rng(0)
    notes = random_notes(rng, 100)                   # list[Note]
    waves = render_notes(notes)                      # list[np.ndarray], 16 kHz float32
    voice = speech_voices()[3]
    word = speak("seven", voice)                     # np.ndarray
    kick = load_drum_hit(drum_hits(["kick"])[0])     # np.ndarray
"""
from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import scipy
import soundfile
from scipy.signal import resample_poly

SAMPLE_RATE = 16000  # Hz, of every sound made here
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
DRUMKITS_DIR = Path("/usr/share/hydrogen/data/drumkits")
FESTIVAL_VOICES_DIR = Path("/usr/share/festival/voices")
PERCUSSION_CHANNEL = 9  # General MIDI channel 10
ESPEAK_DIALECTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                   "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
DRUM_CATEGORIES = {  # category -> words in a drumkit.xml instrument name that mean it (checked in order)
    "hihat": ("hh", "hat", "hi-hat", "hihat"),
    "kick": ("kick", "bass drum", "bassdrum", "bd"),
    "snare": ("snare", "rim"),
    "tom": ("tom",),
    "cymbal": ("crash", "ride", "cymbal", "splash", "china"),
    "clap": ("clap",),
}


def require_program(name: str, package: str) -> str:
    """Path of an executable, or a RuntimeError naming the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"'{name}' not found on PATH: install the Debian package {package} "
                           f"(apt-get install {package})")
    return path


@dataclass(frozen=True)
class Sources:
    """A pinned list of sound sources of one kind, all from one Debian package."""
    kind: str  # what they are, e.g. "festival voices"
    names: Tuple[str, ...]  # in the order they are used
    package: str

    def check(self, installed: Iterable[str]) -> Tuple[str, ...]:
        """`names`, after checking that each is among `installed`; a RuntimeError naming the package if not."""
        missing = sorted(set(self.names) - set(installed))
        if missing:
            raise RuntimeError(f"{self.kind} {missing} not installed: install the Debian package {self.package} "
                               f"(apt-get install {self.package})")
        return self.names


# The sources the tasks and the corpus are made of: exactly these, in this order, whatever else is
# installed (the voices and kits of the Makefile's Debian 12 packages).
ESPEAK_VARIANTS = Sources("espeak-ng voice variants", (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Mr", "Nguyen", "RicishayMax",
    "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot", "adam", "anika", "anikaRobot", "announcer",
    "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "croak", "david", "ed", "edward", "edward2", "f1",
    "f2", "f3", "f4", "f5", "fast", "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john",
    "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "linda", "m1", "m2", "m3", "m4", "m5",
    "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob",
    "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8",
    "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "whisper", "whisperf", "zac"),
    "espeak-ng-data")
FLITE_VOICES = Sources("flite voices", ("kal", "awb_time", "kal16", "awb", "rms", "slt"), "flite")
FESTIVAL_VOICES = Sources("festival voices", ("kal_diphone",), "festvox-kallpc16k")
DRUM_KITS = Sources("Hydrogen drum kits", (
    "Audiophob", "BJA_Pacific", "ColomboAcousticDrumkit", "ElectricEmpireKit", "ForzeeStereo", "Gimme A Hand 1.0",
    "HardElectro1", "Millo-Drums_v.1", "Millo_MultiLayered2", "Millo_MultiLayered3", "The Black Pearl 1.0",
    "VariBreaks", "circAfrique v4", "rumpf_kit_z01_h2"), "hydrogen-drumkits")
SOUND_PACKAGES = {  # kind of sound -> the Debian packages whose versions shape its audio
    "notes": ("fluidsynth", "fluid-soundfont-gm", "libsndfile1"),
    "speech": ("espeak-ng", "espeak-ng-data", "flite", "festival", "festvox-kallpc16k", "libsndfile1"),
    "drums": ("hydrogen-drumkits", "libsndfile1"),
}


def to_mono_16k(data: np.ndarray, rate: int) -> np.ndarray:
    """(S,) or (S, channels) audio at `rate` -> (S',) float32 mono at 16 kHz (polyphase resampling)."""
    mono = np.asarray(data.mean(axis=1) if data.ndim == 2 else data, dtype=np.float32)
    if rate != SAMPLE_RATE:
        common = math.gcd(int(rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // common, int(rate) // common).astype(np.float32)
    return mono


def read_wav_bytes(data: bytes, what: str) -> np.ndarray:
    """WAV file contents -> (S,) float32 at 16 kHz; ValueError naming `what` if unreadable or empty."""
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise ValueError(f"{what}: produced unreadable audio: {e}") from None
    if audio.shape[0] == 0:
        raise ValueError(f"{what}: produced no audio")
    return to_mono_16k(audio, rate)


# ----------------------------------------------------------------------------------------------
# General MIDI notes through fluidsynth

@dataclass(frozen=True)
class Note:
    """One General MIDI note. `program` 0-127 (GM numbering from 0, e.g. 0 piano, 40 violin);
    `pitch` MIDI key 0-127 (60 = middle C; for percussion the GM drum key); `velocity` 1-127;
    `onset`/`duration` in seconds (onset within its clip); `percussion` plays on GM channel 10."""
    program: int
    pitch: int
    velocity: int = 100
    duration: float = 1.0
    onset: float = 0.0
    percussion: bool = False

    def __post_init__(self):
        for field, value, low, high in (("program", self.program, 0, 127), ("pitch", self.pitch, 0, 127),
                                        ("velocity", self.velocity, 1, 127)):
            if not (isinstance(value, (int, np.integer)) and low <= value <= high):
                raise ValueError(f"Note.{field} must be an integer in [{low}, {high}], got {value!r}")
        if not self.duration > 0 or not self.onset >= 0:
            raise ValueError(f"Note needs duration > 0 and onset >= 0, got {self.duration}, {self.onset}")


def variable_length(value: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits per byte, most significant first."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def midi_file(events: List[Tuple[int, bytes]]) -> bytes:
    """A format-0 standard MIDI file with 1 tick = 1 ms from (time in ms, event bytes) pairs."""
    track = bytearray(b"\x00\xFF\x51\x03" + (1_000_000).to_bytes(3, "big"))  # tempo: 1 s per quarter note
    now = 0
    for time_ms, event in sorted(events, key=lambda e: e[0]):  # stable: keeps the order at equal times
        track += variable_length(time_ms - now) + event
        now = time_ms
    track += b"\x00\xFF\x2F\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000)  # format 0, 1 track, 1000 ticks per quarter
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def clip_events(clip: Sequence[Note], start_ms: int, end_ms: int) -> List[Tuple[int, bytes]]:
    """MIDI events of one clip placed at `start_ms`, every channel silenced at `end_ms`."""
    programs = sorted({n.program for n in clip if not n.percussion})
    melodic_channels = [c for c in range(16) if c != PERCUSSION_CHANNEL]
    if len(programs) > len(melodic_channels):
        raise ValueError(f"a clip can use at most {len(melodic_channels)} different programs, got {len(programs)}")
    channel_of = dict(zip(programs, melodic_channels))
    events = [(start_ms, bytes([0xC0 | channel_of[p], p])) for p in programs]  # program changes first
    for note in clip:
        channel = PERCUSSION_CHANNEL if note.percussion else channel_of[note.program]
        on = start_ms + round(note.onset * 1000)
        if on >= end_ms:
            raise ValueError(f"{note} starts at or after the end of its clip ({(end_ms - start_ms) / 1000:g} s)")
        off = min(on + max(1, round(note.duration * 1000)), end_ms)
        events.append((on, bytes([0x90 | channel, note.pitch, note.velocity])))
        events.append((off, bytes([0x80 | channel, note.pitch, 0])))
    # "all sound off" (CC 120) cuts release tails so nothing leaks into the next clip's slot
    events += [(end_ms, bytes([0xB0 | c, 120, 0])) for c in range(16)]
    return events


def render_clips(clips: Sequence[Sequence[Note]], seconds: Sequence[float], gain: float = 0.5,
                 soundfont: Path = SOUNDFONT) -> List[np.ndarray]:
    """Render each clip (a list of Notes, onsets relative to the clip) to `seconds[i]` seconds of
    16 kHz float32 audio, all in one fluidsynth run. Notes are cut at the end of their clip."""
    if len(clips) != len(seconds):
        raise ValueError(f"{len(clips)} clips but {len(seconds)} durations")
    if not clips:
        return []
    fluidsynth = require_program("fluidsynth", "fluidsynth")
    if not Path(soundfont).is_file():
        raise FileNotFoundError(f"soundfont not found: {soundfont} (Debian package fluid-soundfont-gm)")
    gap_ms = 50  # silence between slots, so a slot never starts inside the previous one's cut-off
    events, starts = [], []
    now = 0
    for clip, length in zip(clips, seconds):
        length_ms = round(length * 1000)
        if length_ms <= 0:
            raise ValueError(f"clip durations must be > 0, got {length}")
        starts.append(now)
        events += clip_events(clip, now, now + length_ms)
        now += length_ms + gap_ms
    events.append((now + 200, bytes([0xB0, 121, 0])))  # a last event so the render runs past the last slot
    with tempfile.TemporaryDirectory(prefix="sounds-") as tmp:
        midi_path, wav_path = Path(tmp) / "clips.mid", Path(tmp) / "clips.wav"
        midi_path.write_bytes(midi_file(events))
        result = subprocess.run(
            [fluidsynth, "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", str(gain), "-r", str(SAMPLE_RATE),
             "-T", "wav", "-O", "float", "-F", str(wav_path), str(soundfont), str(midi_path)],
            capture_output=True, text=True)
        if result.returncode != 0 or not wav_path.is_file():
            raise RuntimeError(f"fluidsynth failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        audio, rate = soundfile.read(str(wav_path), dtype="float32", always_2d=True)  # (S, 2)
    audio = to_mono_16k(audio, rate)
    out = []
    for start_ms, length in zip(starts, seconds):
        begin, size = start_ms * SAMPLE_RATE // 1000, round(length * SAMPLE_RATE)
        piece = audio[begin:begin + size]
        out.append(np.pad(piece, (0, size - len(piece))))  # the renderer may stop early on silence
    return out


def render_notes(notes: Sequence[Note], tail: float = 0.5, **kwargs) -> List[np.ndarray]:
    """One clip per note: the note from time 0, lasting `duration + tail` seconds (the tail keeps
    the release). Keyword arguments go to `render_clips`."""
    clips = [[Note(n.program, n.pitch, n.velocity, n.duration, 0.0, n.percussion)] for n in notes]
    return render_clips(clips, [n.duration + tail for n in notes], **kwargs)


def random_notes(rng: np.random.Generator, count: int, programs: Sequence[int] = range(128),
                 pitches: Tuple[int, int] = (36, 96), velocities: Tuple[int, int] = (60, 127),
                 durations: Tuple[float, float] = (0.3, 2.0)) -> List[Note]:
    """`count` notes with program, pitch, velocity and duration drawn uniformly (inclusive ranges)."""
    programs = list(programs)
    return [Note(program=int(programs[rng.integers(len(programs))]),
                 pitch=int(rng.integers(pitches[0], pitches[1] + 1)),
                 velocity=int(rng.integers(velocities[0], velocities[1] + 1)),
                 duration=float(rng.uniform(*durations)))
            for _ in range(count)]


# ----------------------------------------------------------------------------------------------
# Speech through espeak-ng, flite and festival

@dataclass(frozen=True)
class Voice:
    """A TTS voice. `engine`: 'espeak-ng', 'flite' or 'festival'. `name`: espeak-ng voice with
    optional variant ('en-us+f3'), flite voice ('slt') or festival voice ('kal_diphone').
    `speed`: speaking-rate factor (espeak-ng, flite); `pitch`: espeak-ng pitch 0-99 (None = default)."""
    engine: str
    name: str
    speed: float = 1.0
    pitch: Optional[int] = None

    def __post_init__(self):
        if self.engine not in ("espeak-ng", "flite", "festival"):
            raise ValueError(f"unknown TTS engine {self.engine!r}; use 'espeak-ng', 'flite' or 'festival'")
        if self.pitch is not None and (self.engine != "espeak-ng" or not 0 <= self.pitch <= 99):
            raise ValueError(f"pitch is an espeak-ng setting in [0, 99], got {self.pitch} for {self.engine}")
        if self.engine == "festival" and self.speed != 1.0:
            raise ValueError("festival voices have no speed setting here")
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")

    @property
    def id(self) -> str:
        """A file-name-safe identifier, unique per (engine, name, speed, pitch)."""
        parts = [self.engine, self.name.replace("+", "-")]
        if self.speed != 1.0:
            parts.append(f"s{self.speed:g}")
        if self.pitch is not None:
            parts.append(f"p{self.pitch}")
        return "_".join(parts)


@lru_cache(maxsize=None)
def installed_espeak_variants() -> Tuple[str, ...]:
    """Names of the voice variants espeak-ng has (e.g. 'f3', 'klatt', 'adam'), sorted."""
    listing = subprocess.run([require_program("espeak-ng", "espeak-ng"), "--voices=variant"],
                             capture_output=True, text=True, check=True).stdout
    names = {line.split()[4].split("/", 1)[1] for line in listing.splitlines()[1:] if "!v/" in line}
    return tuple(sorted(names))


@lru_cache(maxsize=None)
def installed_flite_voices() -> Tuple[str, ...]:
    """flite's built-in voices, as listed by `flite -lv`."""
    listing = subprocess.run([require_program("flite", "flite"), "-lv"], capture_output=True, text=True).stdout
    return tuple(listing.split(":", 1)[1].split()) if ":" in listing else ()


@lru_cache(maxsize=None)
def installed_festival_voices() -> Tuple[str, ...]:
    """festival voices installed under /usr/share/festival/voices/<language>/<voice>, sorted."""
    require_program("text2wave", "festival")
    return tuple(sorted(p.name for p in FESTIVAL_VOICES_DIR.glob("*/*") if p.is_dir()))


def espeak_variants() -> Tuple[str, ...]:
    """The pinned espeak-ng voice variants, checked to be installed."""
    return ESPEAK_VARIANTS.check(installed_espeak_variants())


def flite_voices() -> Tuple[str, ...]:
    """The pinned flite voices, checked to be installed."""
    return FLITE_VOICES.check(installed_flite_voices())


def festival_voices() -> Tuple[str, ...]:
    """The pinned festival voices, checked to be installed."""
    return FESTIVAL_VOICES.check(installed_festival_voices())


def speech_voices(engines: Iterable[str] = ("espeak-ng", "flite", "festival")) -> List[Voice]:
    """The pinned English voices of the given engines, in a fixed order: espeak-ng dialects plain and
    with each variant, then flite voices, then festival voices. Other installed voices are never used."""
    voices = []
    engines = set(engines)
    if "espeak-ng" in engines:
        for dialect in ESPEAK_DIALECTS:
            voices.append(Voice("espeak-ng", dialect))
            voices += [Voice("espeak-ng", f"{dialect}+{variant}") for variant in espeak_variants()]
    if "flite" in engines:
        voices += [Voice("flite", name) for name in flite_voices()]
    if "festival" in engines:
        voices += [Voice("festival", name) for name in festival_voices()]
    return voices


def speak(text: str, voice: Voice) -> np.ndarray:
    """Synthesise `text` with `voice` -> (S,) float32 at 16 kHz."""
    if not text.strip():
        raise ValueError("speak() needs non-empty text")
    what = f"{voice.engine} voice {voice.name!r} saying {text[:40]!r}"
    if voice.engine == "espeak-ng":
        command = [require_program("espeak-ng", "espeak-ng"), "-v", voice.name, "-s", str(round(175 * voice.speed)),
                   "--stdout"] + (["-p", str(voice.pitch)] if voice.pitch is not None else []) + ["--", text]
        result = subprocess.run(command, capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"{what}: espeak-ng failed: {result.stderr.decode(errors='replace').strip()}")
        return read_wav_bytes(result.stdout, what)
    with tempfile.TemporaryDirectory(prefix="speak-") as tmp:
        wav_path, text_path = Path(tmp) / "speech.wav", Path(tmp) / "text.txt"
        text_path.write_text(text)
        if voice.engine == "flite":
            command = [require_program("flite", "flite"), "-voice", voice.name, "--setf",
                       f"duration_stretch={1 / voice.speed:g}", "-f", str(text_path), "-o", str(wav_path)]
        else:
            command = [require_program("text2wave", "festival"), "-eval", f"(voice_{voice.name})",
                       "-o", str(wav_path), str(text_path)]
        result = subprocess.run(command, capture_output=True)
        if result.returncode != 0 or not wav_path.is_file():
            raise RuntimeError(f"{what}: {voice.engine} failed: {result.stderr.decode(errors='replace').strip()}")
        return read_wav_bytes(wav_path.read_bytes(), what)


def speak_many(requests: Sequence[Tuple[str, Voice]], workers: int = 2) -> List[np.ndarray]:
    """`speak` for many (text, voice) pairs, `workers` engine processes at a time; results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda request: speak(*request), requests))


# ----------------------------------------------------------------------------------------------
# Real drum hits from hydrogen-drumkits

@dataclass(frozen=True)
class DrumHit:
    """One sample file of a Hydrogen drum kit; `category` is one of DRUM_CATEGORIES or None."""
    kit: str
    instrument: str
    category: Optional[str]
    path: Path


def drum_category(instrument: str) -> Optional[str]:
    """Coarse category of a drumkit.xml instrument name ('Snare Jazz' -> 'snare'), None if unknown."""
    words = instrument.lower().replace("_", " ").replace("-", " ").split()
    text = " ".join(words)
    for category, keys in DRUM_CATEGORIES.items():
        if any((key in words) if len(key) <= 2 else (key in text) for key in keys):
            return category
    return None


def drum_kits(drumkits_dir: Path = DRUMKITS_DIR) -> Tuple[str, ...]:
    """The pinned drum kits (folder names), checked to be installed in `drumkits_dir`."""
    return DRUM_KITS.check(p.parent.name for p in Path(drumkits_dir).glob("*/drumkit.xml"))


@lru_cache(maxsize=None)
def all_drum_hits(drumkits_dir: Path = DRUMKITS_DIR) -> Tuple[DrumHit, ...]:
    """Every sample (each velocity layer) of every pinned kit, sorted by kit, instrument, file."""
    hits = []
    for kit in drum_kits(drumkits_dir):
        xml_path = Path(drumkits_dir) / kit / "drumkit.xml"
        root = ET.parse(xml_path).getroot()
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        for instrument in root.iter(f"{ns}instrument"):
            name = (instrument.findtext(f"{ns}name") or "").strip()
            files = [f.text.strip() for f in instrument.iter(f"{ns}filename") if f.text and f.text.strip()]
            for filename in files:
                path = xml_path.parent / filename
                if path.is_file():
                    hits.append(DrumHit(kit, name, drum_category(name), path))
    return tuple(sorted(set(hits), key=lambda h: (h.kit, h.instrument, str(h.path))))


def drum_hits(categories: Optional[Iterable[str]] = None, kits: Optional[Iterable[str]] = None) -> List[DrumHit]:
    """Drum samples, optionally only of the given categories and/or kits (names of kit folders)."""
    categories = set(categories) if categories is not None else None
    if categories is not None and not categories <= set(DRUM_CATEGORIES):
        raise ValueError(f"unknown drum categories {sorted(categories - set(DRUM_CATEGORIES))}; "
                         f"known: {sorted(DRUM_CATEGORIES)}")
    kits = set(kits) if kits is not None else None
    return [h for h in all_drum_hits()
            if (categories is None or h.category in categories) and (kits is None or h.kit in kits)]


@lru_cache(maxsize=2048)
def read_drum_hit(path: Path, max_seconds: Optional[float]) -> np.ndarray:
    """The first `max_seconds` (None: all) of a sample file at 16 kHz, read-only; only that much is read."""
    try:
        rate = soundfile.info(str(path)).samplerate
        frames = -1 if max_seconds is None else int(np.ceil(max_seconds * rate))
        data, rate = soundfile.read(str(path), frames=frames, dtype="float32", always_2d=True)  # (S, channels)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise ValueError(f"{path}: cannot read audio: {e}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: contains no audio samples")
    audio = to_mono_16k(data, rate)
    if max_seconds is not None:
        audio = audio[:round(max_seconds * SAMPLE_RATE)]
    audio.flags.writeable = False
    return audio


def load_drum_hit(hit: DrumHit, max_seconds: Optional[float] = None) -> np.ndarray:
    """The hit's samples as (S,) float32 at 16 kHz (a copy), cut to `max_seconds` with a 10 ms fade."""
    audio = read_drum_hit(hit.path, max_seconds).copy()
    if max_seconds is not None and len(audio) == round(max_seconds * SAMPLE_RATE):
        fade = min(len(audio), SAMPLE_RATE // 100)
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return audio


# ----------------------------------------------------------------------------------------------
# What the sounds are made from

def pinned_sources(kind: str) -> Dict[str, List[str]]:
    """The sources of one kind of sound ('notes', 'speech' or 'drums'), speech and drums checked to be installed."""
    if kind == "notes":
        return {"soundfont": [str(SOUNDFONT)]}
    if kind == "speech":
        return {"espeak-ng dialects": list(ESPEAK_DIALECTS), ESPEAK_VARIANTS.kind: list(espeak_variants()),
                FLITE_VOICES.kind: list(flite_voices()), FESTIVAL_VOICES.kind: list(festival_voices())}
    if kind == "drums":
        return {DRUM_KITS.kind: list(drum_kits())}
    raise ValueError(f"unknown kind of sound {kind!r}; known: {sorted(SOUND_PACKAGES)}")


def debian_versions(packages: Sequence[str]) -> Dict[str, Optional[str]]:
    """Installed version of each Debian package (dpkg-query), None where dpkg has none."""
    listing = subprocess.run([require_program("dpkg-query", "dpkg"), "-W", "-f", "${Package}\t${Version}\n",
                              *packages], capture_output=True, text=True).stdout
    versions = dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)
    return {package: versions.get(package) or None for package in packages}


def provenance(kinds: Iterable[str]) -> dict:
    """What sounds of these kinds are made from: the pinned sources and the versions of the Debian and
    Python packages that shape their audio (for a task's or a corpus's metadata)."""
    kinds = sorted(set(kinds))
    return {"sources": {kind: pinned_sources(kind) for kind in kinds},
            "debian_packages": debian_versions(sorted({p for kind in kinds for p in SOUND_PACKAGES[kind]})),
            "python_packages": {"numpy": np.__version__, "scipy": scipy.__version__, "soundfile": soundfile.__version__,
                                "libsndfile": soundfile.__libsndfile_version__}}
