"""eval.sounds (fluidsynth, espeak-ng, flite, festival, hydrogen-drumkits) and eval.synthetic tasks.

Needs the Debian packages fluidsynth, fluid-soundfont-gm, espeak-ng, flite, festival,
festvox-kallpc16k and hydrogen-drumkits.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from eval import sounds, synthetic
from eval.sounds import Note, Voice, drum_category, drum_hits, load_drum_hit, render_clips, render_notes, speak
from eval.tasks import read_task, task_digest


def fundamental(audio: np.ndarray, low: float = 80.0, high: float = 1000.0) -> float:
    """f0 (Hz): the shortest period whose autocorrelation peak reaches 80% of the highest one
    (periods between 1/high and 1/low; the 80% rule avoids octave errors at multiples of the period)."""
    audio = audio - audio.mean()
    correlation = np.correlate(audio, audio, "full")[len(audio) - 1:]
    lags = np.arange(int(16000 / high), int(16000 / low))
    strong = correlation[lags] >= 0.8 * correlation[lags].max()
    first = int(np.argmax(strong))
    run_end = first + int(np.argmin(strong[first:])) if not strong[first:].all() else len(lags)
    return 16000 / float(lags[first + correlation[lags[first:run_end]].argmax()])


def test_gm_notes_have_their_pitch_and_length():
    notes = [Note(0, 69, 100, 0.5), Note(40, 57, 90, 0.7), Note(73, 72, 110, 0.3)]
    waves = render_notes(notes, tail=0.25)
    assert [len(w) for w in waves] == [12000, 15200, 8800]
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in waves)
    for note, wave in zip(notes, waves):
        expected = 440 * 2 ** ((note.pitch - 69) / 12)
        assert abs(fundamental(wave[800:4800]) - expected) < 0.02 * expected, note
    assert all(np.array_equal(a, b) for a, b in zip(waves, render_notes(notes, tail=0.25)))  # deterministic


def test_clips_do_not_leak_into_each_other():
    """A held organ chord is cut at the end of its clip; the next (empty) clip stays silent."""
    organ = [Note(19, p, 120, 3.0) for p in (48, 52, 55)]
    loud, silent, drums = render_clips([organ, [], [Note(0, 36, 120, 0.2, percussion=True)]], [0.5, 0.5, 0.5])
    assert np.sqrt(np.mean(loud ** 2)) > 0.01
    assert np.abs(silent).max() < 1e-4
    assert np.abs(drums).max() > 0.01  # percussion channel: GM kick drum


def test_note_and_voice_validation():
    with pytest.raises(ValueError, match="pitch must be an integer in"):
        Note(0, 128)
    with pytest.raises(ValueError, match="duration > 0"):
        Note(0, 60, duration=0)
    with pytest.raises(ValueError, match="unknown TTS engine"):
        Voice("sam", "x")
    with pytest.raises(ValueError, match="pitch is an espeak-ng setting"):
        Voice("flite", "slt", pitch=40)
    with pytest.raises(ValueError, match="durations must be > 0"):
        render_clips([[Note(0, 60)]], [0.0])
    with pytest.raises(ValueError, match="starts at or after the end of its clip"):
        render_clips([[Note(0, 60, onset=1.0)]], [1.0])
    with pytest.raises(ValueError, match="non-empty text"):
        speak("  ", Voice("espeak-ng", "en-us"))


def test_random_notes_are_seeded():
    a = sounds.random_notes(np.random.default_rng(3), 20, programs=[0, 40], pitches=(50, 60))
    assert a == sounds.random_notes(np.random.default_rng(3), 20, programs=[0, 40], pitches=(50, 60))
    assert {n.program for n in a} <= {0, 40} and all(50 <= n.pitch <= 60 for n in a)


def test_every_tts_engine_speaks():
    voices = sounds.speech_voices()
    engines = {v.engine for v in voices}
    assert engines == {"espeak-ng", "flite", "festival"}
    assert len(voices) == 8 * 102 + 6 + 1 and len({v.id for v in voices}) == len(voices)
    for voice in (Voice("espeak-ng", "en-us+f3", speed=1.2, pitch=70), Voice("flite", "slt", speed=0.9),
                  Voice("flite", "kal"), Voice("festival", voices[-1].name)):
        audio = speak("seven", voice)
        assert audio.dtype == np.float32 and 0.2 < len(audio) / 16000 < 3 and np.abs(audio).max() > 0.01, voice
    slow, fast = speak("one two three", Voice("espeak-ng", "en-us", speed=0.7)), \
        speak("one two three", Voice("espeak-ng", "en-us", speed=1.4))
    assert len(slow) > 1.5 * len(fast)
    assert np.array_equal(fast, speak("one two three", Voice("espeak-ng", "en-us", speed=1.4)))


def test_drum_hits():
    assert [drum_category(n) for n in ("Snare Jazz", "Closed HH", "BassDrum", "Tom Hi", "Crash Jazz", "17",
                                       "g#3 - hi-hat pedal", "Hand Clap")] == \
        ["snare", "hihat", "kick", "tom", "cymbal", None, "hihat", "clap"]
    kicks = drum_hits(["kick"])
    assert len(kicks) > 20 and all(h.category == "kick" and h.path.is_file() for h in kicks)
    audio = load_drum_hit(kicks[0], max_seconds=0.3)
    assert audio.dtype == np.float32 and 0 < len(audio) <= 4800 and np.abs(audio).max() > 0.05
    assert audio[-1] == 0.0 or len(audio) < 4800  # faded out where it was cut
    with pytest.raises(ValueError, match="unknown drum categories"):
        drum_hits(["cowbell"])


UNLISTED = {"installed_espeak_variants": "zz_unlisted", "installed_flite_voices": "unlisted",
            "installed_festival_voices": "cmu_us_slt_arctic_hts"}  # as if one more voice of each engine were installed


def with_unlisted_voices(monkeypatch) -> None:
    for function, extra in UNLISTED.items():
        installed = getattr(sounds, function)()
        monkeypatch.setattr(sounds, function, lambda installed=installed, extra=extra: installed + (extra,))


def kits_dir(tmp_path: Path, kits) -> Path:
    """A drum-kits folder holding (links to) these installed kits."""
    folder = tmp_path / "drumkits"
    folder.mkdir()
    for kit in kits:
        (folder / kit).symlink_to(sounds.DRUMKITS_DIR / kit)
    return folder


def test_sources_are_the_pinned_ones_whatever_else_is_installed(monkeypatch, tmp_path):
    voices = sounds.speech_voices()
    with_unlisted_voices(monkeypatch)
    assert sounds.speech_voices() == voices
    folder = kits_dir(tmp_path, sounds.DRUM_KITS.names)
    (folder / "UnlistedKit").symlink_to(sounds.DRUMKITS_DIR / sounds.DRUM_KITS.names[0])
    relative = lambda hits, root: [(h.kit, h.instrument, h.category, h.path.relative_to(root)) for h in hits]
    assert relative(sounds.all_drum_hits(folder), folder) == relative(sounds.all_drum_hits(), sounds.DRUMKITS_DIR)


@pytest.mark.parametrize("function, pinned, package", [
    ("installed_espeak_variants", sounds.ESPEAK_VARIANTS, "espeak-ng-data"),
    ("installed_flite_voices", sounds.FLITE_VOICES, "flite"),
    ("installed_festival_voices", sounds.FESTIVAL_VOICES, "festvox-kallpc16k")])
def test_a_missing_voice_names_its_package(monkeypatch, function, pinned, package):
    """One PINNED voice missing (whatever else the machine has installed, e.g. other festival voices) is an
    error naming it and its Debian package."""
    installed = getattr(sounds, function)() + (UNLISTED[function],)
    gone = pinned.names[0]
    monkeypatch.setattr(sounds, function, lambda: tuple(v for v in installed if v != gone))
    with pytest.raises(RuntimeError, match=rf"\['{gone}'\] not installed: .*apt-get install {package}"):
        sounds.speech_voices()


def test_a_missing_drum_kit_names_its_package(tmp_path):
    folder = kits_dir(tmp_path, sounds.DRUM_KITS.names[1:])
    with pytest.raises(RuntimeError, match=r"Hydrogen drum kits \['Audiophob'\] not installed: .*hydrogen-drumkits"):
        sounds.all_drum_hits(folder)


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.main(["--out", str(out), "--tiny"])
    return out


def test_tiny_tasks_are_valid_hear_tasks(tiny_tasks):
    tasks = {p.name: read_task(p) for p in sorted(tiny_tasks.iterdir())}
    assert sorted(tasks) == ["synth_drum_events-v1-tiny", "synth_pitch-v1-tiny", "synth_speaker_count-v1-tiny",
                             "synth_words-v1-tiny"]
    assert {(t.embedding_type, t.split_mode) for t in tasks.values()} == {
        ("scene", "trainvaltest"), ("scene", "new_split_kfold"), ("event", "trainvaltest")}
    for task in tasks.values():
        for split in task.splits:
            for path in task.audio_paths(split):
                info = soundfile.info(str(path))
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert info.frames == round(task.sample_duration * 16000), path
    assert tasks["synth_pitch-v1-tiny"].labels == ["60", "61", "62", "63", "64", "65"]
    assert tasks["synth_pitch-v1-tiny"].primary_metric == "pitch_acc"
    assert tasks["synth_drum_events-v1-tiny"].labels == ["hihat", "kick", "snare"]


def metadata(task: Path) -> dict:
    return json.loads((task / "task_metadata.json").read_text())


def test_generation_is_deterministic(tiny_tasks, tmp_path):
    synthetic.generate(tmp_path, tiny=True)
    ours = sorted(p.relative_to(tiny_tasks) for p in tiny_tasks.rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for relative in ours:
        assert (tiny_tasks / relative).read_bytes() == (tmp_path / relative).read_bytes(), relative
    digests = {task.name: metadata(task)["digest"] for task in tiny_tasks.iterdir()}
    assert digests == {task.name: metadata(task)["digest"] for task in tmp_path.iterdir()}
    assert len(set(digests.values())) == 4 and all(re.fullmatch("sha256:[0-9a-f]{64}", d) for d in digests.values())
    # the digest of what was written (eval.tasks.task_digest; what it depends on: tests/test_eval_tasks.py)
    assert digests == {task.name: task_digest(task, metadata(task)["splits"]) for task in tiny_tasks.iterdir()}
    other_seed = synthetic.generate(tmp_path / "seed1", tiny=True, seed=1, tasks=["synth_pitch"])[0]
    assert metadata(other_seed)["digest"] != digests["synth_pitch-v1-tiny"]


def test_an_unlisted_voice_changes_no_task(tiny_tasks, tmp_path, monkeypatch):
    with_unlisted_voices(monkeypatch)
    for task in synthetic.generate(tmp_path, tiny=True, tasks=["synth_words", "synth_speaker_count"]):
        assert metadata(task) == metadata(tiny_tasks / task.name)  # the digest, and the sources recorded


def test_metadata_says_what_the_task_is_made_from(tiny_tasks):
    words = metadata(tiny_tasks / "synth_words-v1-tiny")["made_from"]
    assert (words["generator"], words["generator_version"], words["seed"]) == ("eval.synthetic", "v1", 0)
    assert words["sources"] == {"speech": {"espeak-ng dialects": list(sounds.ESPEAK_DIALECTS),
                                           "espeak-ng voice variants": list(sounds.ESPEAK_VARIANTS.names),
                                           "flite voices": list(sounds.FLITE_VOICES.names),
                                           "festival voices": ["kal_diphone"]}}
    assert set(words["debian_packages"]) == set(sounds.SOUND_PACKAGES["speech"])
    assert all(words["debian_packages"].values())  # every one installed, with its version
    assert set(words["python_packages"]) == {"numpy", "scipy", "soundfile", "libsndfile"}
    drums = metadata(tiny_tasks / "synth_drum_events-v1-tiny")["made_from"]
    assert drums["sources"] == {"drums": {"Hydrogen drum kits": list(sounds.DRUM_KITS.names)}}
    assert metadata(tiny_tasks / "synth_pitch-v1-tiny")["made_from"]["sources"] == {
        "notes": {"soundfont": ["/usr/share/sounds/sf2/FluidR3_GM.sf2"]}}


def test_held_out_instruments_and_voices(tiny_tasks):
    pitch = read_task(tiny_tasks / "synth_pitch-v1-tiny")
    programs = {s: {re.match(r"gm(\d+)_", f).group(1) for f in pitch.files(s)} for s in pitch.splits}
    assert not (programs["train"] & programs["valid"] or programs["train"] & programs["test"]
                or programs["valid"] & programs["test"])
    for f, labels in pitch.scene_labels("test").items():
        assert labels == [re.search(r"_p(\d+)_", f).group(1)]
    words = read_task(tiny_tasks / "synth_words-v1-tiny")
    voices = {s: {f.rsplit("_", 1)[0] for f in words.files(s)} for s in words.splits}
    assert all(len(v) == 2 for v in voices.values())
    assert len(set.union(*voices.values())) == 2 * len(words.splits)  # no voice in two folds
    assert all(labels[0] in f for f, labels in words.scene_labels("fold01").items())


def test_speaker_count_level_does_not_give_the_count_away(tiny_tasks):
    task = read_task(tiny_tasks / "synth_speaker_count-v1-tiny")
    low, high = synthetic.COUNT_LEVEL * 10 ** (-6 / 20), synthetic.COUNT_LEVEL * 10 ** (6 / 20)
    counts = set()
    for split in task.splits:
        for f, labels in task.scene_labels(split).items():
            audio, _ = soundfile.read(str(task.audio_dir(split) / f), dtype="float32")
            level = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
            assert 0.97 * low < level < 1.03 * high, (f, level)  # mixture level drawn independently of the count
            counts.add(labels[0])
    assert counts == {"1", "2"}


def test_drum_events_start_at_hits(tiny_tasks):
    task = read_task(tiny_tasks / "synth_drum_events-v1-tiny")
    n_events = 0
    for split in task.splits:
        for f, events in task.events(split).items():
            audio, _ = soundfile.read(str(task.audio_dir(split) / f), dtype="float32")
            assert 3 <= len(events) + 1 and all(0 <= e["start"] < e["end"] <= 2000 for e in events)
            for e in events:
                onset = round(e["start"] * 16)
                before = np.sqrt(np.mean(audio[max(0, onset - 480):onset] ** 2))
                assert np.abs(audio[onset:onset + 480]).max() > 3 * before, (f, e)
                n_events += 1
    assert n_events >= 3 * 8 - 8  # at least 2 events per clip on average
    raw = json.loads((task.path / "train.json").read_text())
    first = next(iter(raw.values()))[0]
    assert list(first) == ["label", "start", "end"]  # hear-preprocess's record layout
