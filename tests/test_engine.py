"""The engine's rules (embedder.py, api.py), each tested once, on every family's token grid.

MSM-MAE and M2D: side-by-side 16x16 patches of 80-bin log-mels, 208-frame units; Audio-MAE: 128-bin
Kaldi fbank, 1024-frame units; AST: OVERLAPPING patches (a column every 10 frames), 1016-frame units, two
prefix tokens; BEATs: no position table, 1008-frame units; WavLM, HuBERT, wav2vec 2.0: the waveform itself (one bin,
a frame per sample), a 400-sample column every 320 samples, 20-s units. Rules that do not depend on the grid run on
every official layout (FAMILY_CHECKPOINTS), the others on one layout per family (FAMILIES).
"""
import copy
import math

import numpy as np
import pytest
import torch

from hear_msm_mae.api import get_scene_embeddings, get_timestamp_embeddings

from conftest import FAMILIES, FAMILY_CHECKPOINTS, model

LAYOUTS = sorted(FAMILY_CHECKPOINTS)
SR = 16000
# every legal timestamp hop: a whole number of 10 ms frames dividing the step between patch columns
HOPS = {family: [10, 20, 50, 100] if family == "ast" else [10, 20, 40, 80, 160] for family in FAMILIES}
HOPS["dasheng"] = [10, 20, 40]  # 64x4 patches: a column every 40 ms
HOPS["atst_frame"] = HOPS["atst_clip"] = [10, 20, 40]  # 64x4 patches too
HOPS["wavlm_large"] = HOPS["hubert"] = HOPS["wav2vec2"] = [5, 10, 20]  # a frame per sample, a column every 20 ms


def clips(n, seconds, seed=0):
    """n tones in noise, different in pitch."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tones = torch.sin(2 * math.pi * (200 + 300 * torch.rand(n, 1, generator=g)) * t)
    return 0.3 * tones + 0.05 * torch.randn(n, len(t), generator=g)


def native_frames(m, audio):
    """One embedding per patch column (B, columns, E)."""
    with torch.inference_mode():
        return m.frame_embeddings(m.normalised_features(audio))


def encoder_inputs(m, audio, embed=get_scene_embeddings):
    """The shapes of the units of every encoder call while embedding `audio`."""
    shapes, encode = [], m.encoder.encode
    m.encoder.encode = lambda x, *args, **kwargs: shapes.append(tuple(x.shape)) or encode(x, *args, **kwargs)
    try:
        embed(audio, m)
    finally:
        del m.encoder.encode
    return shapes


# -- the HEAR contract -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_hear_contract(name):
    m = model(name)
    assert not m.training and type(m.sample_rate) is int and m.sample_rate == SR
    assert type(m.scene_embedding_size) is int and type(m.timestamp_embedding_size) is int
    assert m.native_hop_ms in (20.0, 40.0, 100.0, 160.0) and m.timestamp_hop_ms in (20.0, 40.0, 50.0)
    audio = clips(2, 1.3)
    scene = get_scene_embeddings(audio, m)
    frames, times = get_timestamp_embeddings(audio, m)
    assert scene.shape == (2, m.scene_embedding_size) and scene.dtype == torch.float32
    assert frames.shape[0] == 2 and frames.shape[2] == m.timestamp_embedding_size
    assert times.shape == frames.shape[:2] and frames.dtype == times.dtype == torch.float32
    assert scene.device == frames.device == times.device == audio.device
    assert torch.isfinite(scene).all() and torch.isfinite(frames).all()


@pytest.mark.parametrize("name", LAYOUTS)
def test_other_float_dtypes_are_converted(name):
    m, audio = model(name), clips(1, 1.0)
    torch.testing.assert_close(get_scene_embeddings(audio.double(), m), get_scene_embeddings(audio, m))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_model_loaded_under_inference_mode_is_the_same_model(name):
    """Weights made under torch.inference_mode() would be inference tensors (no version counter: the
    position convolution's cached spectra could not be keyed on it); load_model makes ordinary ones."""
    audio = clips(1, 1.3)
    with torch.inference_mode():
        m = model(name)
        scene = get_scene_embeddings(audio, m)
    assert not any(p.is_inference() for p in m.parameters())
    assert torch.equal(scene, get_scene_embeddings(audio, model(name)))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_loaded_model_follows_changes_of_its_weights(name):
    """The CPU layouts load_model prepares are caches of the weights: after load_state_dict (or any in-place
    change) a model that has run embeds with its new weights, as the float64 model (where no layout applies)."""
    audio = clips(1, 1.3)
    m = model(name)
    before = native_frames(m, audio)  # every layout made
    g = torch.Generator().manual_seed(1)
    changed = {k: v + 0.1 * v.std().nan_to_num() * torch.randn(v.shape, generator=g) if v.is_floating_point() and
               v.numel() > 1 else v for k, v in m.state_dict().items()}
    m.load_state_dict(changed)
    exact = model(name).to(torch.float64)
    exact.load_state_dict(changed)
    after, expected = native_frames(m, audio), native_frames(exact, audio.double())
    torch.testing.assert_close(after, expected.float(), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(after, before, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_model_that_has_run_can_be_copied(name):
    """copy.deepcopy of a model whose CPU layouts are made (oneDNN's opaque tensors, which cannot be copied):
    the copy remakes them, and embeds as the original."""
    audio = clips(1, 1.3)
    m = model(name, dtype="bfloat16")
    expected = get_scene_embeddings(audio, m)
    assert torch.equal(get_scene_embeddings(audio, copy.deepcopy(m)), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_reach_a_loaded_models_weights(name):
    """Fine-tuning a loaded model: with gradients recorded the encoder runs the operations autograd knows (the CPU
    layouts are for inference), and every weight's gradient is the float64 model's (where no layout applies)."""
    audio = clips(1, 1.3)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        m = model(name).to(dtype)
        m.frame_embeddings(m.normalised_features(audio.to(dtype))).square().mean().backward()
        grads[dtype] = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
    assert grads[torch.float32].keys() == grads[torch.float64].keys()
    assert any(".weight" in k for k in grads[torch.float32])
    for k, grad in grads[torch.float32].items():
        torch.testing.assert_close(grad, grads[torch.float64][k].float(), rtol=1e-3, atol=1e-6, msg=k)


BAD_AUDIO = [
    (torch.zeros(16000), ValueError, "unsqueeze"),
    (torch.zeros(1, 2, 16000), ValueError, "3-D"),
    (torch.zeros(0, 16000), ValueError, "empty"),
    (torch.zeros(2, 0), ValueError, "empty"),
    (torch.zeros(1, 16000, dtype=torch.int16), TypeError, "int16"),
    (torch.full((1, 16000), float("nan")), ValueError, "NaN"),
    (torch.tensor([[0.0] * 8000 + [float("inf")] * 8000]), ValueError, "Inf"),
    (torch.zeros(2, 16000).index_put_((torch.tensor([1]), torch.tensor([777])), torch.tensor(float("nan"))),
     ValueError, "NaN"),  # one sample of one clip
    (torch.zeros(2, 16000).index_put_((torch.tensor([0]), torch.tensor([15999])), torch.tensor(-float("inf"))),
     ValueError, "Inf"),
    (np.zeros((1, 16000), dtype=np.float32), TypeError, "ndarray"),
    (torch.zeros(1, 100), ValueError, "too short"),
    (torch.zeros(1, 16000, device="meta"), ValueError, "meta"),
]


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_audio_is_refused_with_what_is_wrong(name):
    m = model(name)
    for audio, error, message in BAD_AUDIO:
        for embed in (get_scene_embeddings, get_timestamp_embeddings):
            with pytest.raises(error, match=message):
                embed(audio, m)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("options, error, message", [
    (dict(mode="fast"), ValueError, "mode"),
    (dict(dtype="int8"), ValueError, "dtype"),
    (dict(timestamp_hop_ms=30), ValueError, "timestamp_hop_ms"),
    (dict(timestamp_hop_ms=15), ValueError, "timestamp_hop_ms"),
    (dict(norm_mean=-5.0), ValueError, "both"),
    (dict(norm_mean=-5.0, norm_std=0.0), ValueError, "positive"),
    (dict(batch_tokens=0), ValueError, "batch_tokens"),
    (dict(freq_pool="max"), ValueError, "freq_pool"),
    (dict(layer_pool="sum"), ValueError, "layer_pool"),
    (dict(layers=[]), ValueError, "layers"),
    (dict(layers=[99]), ValueError, "out of range"),
    (dict(scene="cls"), ValueError, "scene"),
    (dict(hop=40), TypeError, "unknown model option"),
])
def test_bad_options(name, options, error, message):
    with pytest.raises(error, match=message):
        model(name, **options)


@pytest.mark.parametrize("name, options, message", [
    *[(name, dict(scene="pooled"), "no clip-level output") for name in ("msm_mae", "m2d", "audiomae", "beats")],
    ("msm_mae", dict(unit_frames=400), "fixed at 208"),
    ("m2d", dict(unit_frames=400), "fixed at 208"),
    ("audiomae", dict(unit_frames=400), "fixed at 1024"),
    ("msm_mae", dict(mode="reference", timestamp_hop_ms=40), "mode='default'"),
    *[(name, dict(scene="pooled"), "no clip-level output") for name in ("dasheng", "ced")],
    ("dasheng", dict(unit_frames=400), "fixed at 1008"),
    ("ced", dict(unit_frames=400), "fixed at 1008"),
    ("ced", dict(mode="reference", timestamp_hop_ms=40), "mode='default'"),  # HEAR_CED's windows: every 50 ms
    ("atst_frame", dict(scene="pooled"), "no clip-level output"),
    *[(name, dict(unit_frames=frames), "multiple of 4 up to") for name in ("atst_frame", "atst_clip")
      for frames in (1004, 402)],
    *[(name, dict(mode="reference", **options), "mode='default'") for name in ("atst_frame", "atst_clip")
      for options in (dict(layers=[1]), dict(layer_pool="mean"), dict(timestamp_hop_ms=20))],  # the authors' recipes
    ("atst_clip", dict(mode="reference", scene="pooled"), "mode='default'"),
    *[(name, dict(scene="pooled"), "no clip-level output") for name in ("wavlm_large", "hubert", "wav2vec2")],
    *[(name, dict(unit_frames=frames), "400 \\+ a multiple of 320") for name in ("wavlm_large", "hubert", "wav2vec2")
      for frames in (399, 16000)],  # whole 20-ms frames of samples
    ("hubert", dict(mode="reference", timestamp_hop_ms=10), "mode='default'"),
])
def test_options_a_family_cannot_honour_are_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        model(name, **options)


# -- timestamps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hop_ms", [(name, hop) for name in FAMILIES for hop in HOPS[name]])
def test_timestamps_at_every_legal_hop(name, hop_ms):
    """Regular, inside the clip, from within one hop of its start to within one hop of its end, the same for
    every clip of a batch, one embedding per timestamp: on clips from one frame column to several units."""
    m = model(name, timestamp_hop_ms=hop_ms)
    assert m.timestamp_hop_ms == hop_ms
    for seconds in (0.05, 0.3, 1.07, 4.0, 13.0):
        audio = clips(2, seconds)
        frames, times = get_timestamp_embeddings(audio, m)
        assert frames.shape[:2] == times.shape and torch.equal(times[0], times[1])
        duration_ms = audio.shape[1] / SR * 1000
        assert 0 <= float(times.min()) and float(times.max()) <= duration_ms
        if times.shape[1] > 1:
            assert float((times[0].diff() - hop_ms).abs().max()) < 1e-3, seconds  # regular, no drift
            assert float(times[0, 0]) <= hop_ms and float(times[0, -1]) >= duration_ms - hop_ms, seconds


@pytest.mark.parametrize("name", FAMILIES)
def test_a_finer_hop_is_real_resolution_not_repetition(name):
    """At the default hop (a quarter or half of the column step; half of Dasheng's 40-ms step, its default) every
    step-th embedding is a native column embedding, and the ones between are encodings of shifted features: each
    differs from its neighbours."""
    m = model(name)
    if m.timestamp_hop_ms == m.native_hop_ms:
        m = model(name, timestamp_hop_ms=m.native_hop_ms / 2)
    audio = clips(1, 3.0)
    frames, _ = get_timestamp_embeddings(audio, m)
    shifts = round(m.native_hop_ms / m.timestamp_hop_ms)
    assert shifts > 1
    lead = m.lead_frames() // m.hop_frames  # embeddings before the first native column
    aligned = frames[0, lead::shifts]
    torch.testing.assert_close(aligned, native_frames(m, audio)[0, :aligned.shape[0]], rtol=1e-5, atol=1e-5)
    assert float((frames[0, 1:] - frames[0, :-1]).abs().amax(dim=1).min()) > 1e-4


@pytest.mark.parametrize("name", LAYOUTS)
def test_the_scene_is_the_mean_of_native_frames(name):
    m = model(name, timestamp_hop_ms=model(name).native_hop_ms)
    audio = clips(2, 4.0)
    frames, _ = get_timestamp_embeddings(audio, m)
    native = native_frames(m, audio)
    assert torch.equal(frames, native[:, :frames.shape[1]])
    torch.testing.assert_close(get_scene_embeddings(audio, m), native.mean(dim=1))


# -- units and batches -----------------------------------------------------------------------------------

def long_clips(m, n=3):
    """n clips of two and a half units: two full units and a short one each."""
    return clips(n, 2.5 * m.grid.unit_frames * m.frame_ms / 1000)


@pytest.mark.parametrize("name", FAMILIES)
def test_units_share_encoder_calls_and_no_compute_goes_to_padding(name):
    g = model(name).grid
    batch_tokens = 12 * g.unit_tokens(g.unit_columns)  # room for every unit of 4 clips in one call
    m = model(name, batch_tokens=batch_tokens)
    audio = long_clips(m, 4)
    short_columns = g.columns_for(m.frontend.num_frames(audio.shape[1])) - 2 * g.unit_columns
    (n_bins, _), short = m.normalised_features(audio[:1]).shape[1:], g.frames_for(short_columns)
    assert encoder_inputs(m, audio) == [(8, 1, n_bins, g.unit_frames), (4, 1, n_bins, short)]
    # padded to the full width (as Audio-MAE's and AST's dataloaders pad), the last units share the call
    padded = model(name, batch_tokens=batch_tokens, pad_last_unit=True)
    assert encoder_inputs(padded, audio) == [(12, 1, n_bins, g.unit_frames)]


@pytest.mark.parametrize("name, mode", [(name, mode) for name in FAMILIES for mode in ("default", "reference")
                                        if (name, mode) not in (("beats", "reference"), ("atst_clip", "reference"),
                                                                ("wavlm_large", "reference"), ("hubert", "reference"),
                                                                ("wav2vec2", "reference"))])
def test_bounded_batches_give_the_same_embeddings(name, mode):
    """(BEATs' and the waveform families' references are one unit, test_parity_waveform.py bounds their batches;
    ATST-Clip's crops to 12 s: test_parity_atst.py bounds its batches.)"""
    whole = model(name, mode=mode)
    audio = long_clips(whole)
    expected = get_scene_embeddings(audio, whole)
    per_clip = len(list(whole.units(whole.column_count(whole.frontend.num_frames(audio.shape[1])))))
    assert per_clip == (1 if mode == "reference" and name in ("audiomae", "ast") else 3)  # their dataloaders' cut
    for units in (1, 2, 5):
        m = model(name, mode=mode, batch_tokens=whole.grid.unit_tokens(whole.grid.unit_columns) * units)
        g, shapes = m.grid, encoder_inputs(m, audio)
        tokens = [n * g.unit_tokens((width - g.patch_frames) // g.column_stride + 1) for n, _, _, width in shapes]
        assert all(t <= m.options.batch_tokens or n == 1 for t, (n, *_) in zip(tokens, shapes)), shapes
        # every unit once, in no fewer calls than the tokens need (two short units may share one: Dasheng's
        # reference mode drops the partial column, leaving half a unit)
        assert sum(n for n, *_ in shapes) == 3 * per_clip and len(shapes) >= sum(tokens) / m.options.batch_tokens
        torch.testing.assert_close(get_scene_embeddings(audio, m), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("seconds", [0.9, 3.3])
def test_the_default_mode_is_batch_independent(name, seconds):
    m = model(name)
    audio = clips(4, seconds)
    alone = get_scene_embeddings(audio[2:3], m)
    frames_alone, stamps_alone = get_timestamp_embeddings(audio[2:3], m)
    for batch, index in ((audio, 2), (audio[1:4], 1), (torch.cat([audio[2:3], 10 * audio[:2]]), 0)):
        torch.testing.assert_close(get_scene_embeddings(batch, m)[index], alone[0], rtol=1e-5, atol=1e-5)
        frames, stamps = get_timestamp_embeddings(batch, m)
        torch.testing.assert_close(frames[index], frames_alone[0], rtol=1e-5, atol=1e-5)
        assert torch.equal(stamps[index], stamps_alone[0])


# -- precision and layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYOUTS)
def test_bfloat16_is_close_to_float32(name):
    audio = clips(2, 13.0)
    exact = get_scene_embeddings(audio, model(name))
    fast = model(name, dtype="bfloat16")
    assert fast.compute_dtype == torch.bfloat16 and all(b.dtype == torch.float32 for b in fast.frontend.buffers())
    scene = get_scene_embeddings(audio, fast)
    assert scene.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(scene, exact).min()) > 0.999


@pytest.mark.parametrize("name", FAMILIES)
def test_layers_select_and_pool_encoder_layers(name):
    """layers=[-1] is the default output; several layers are concatenated (or averaged) in the order given;
    "all" is blocks 1 .. depth."""
    audio = clips(1, 2.0)
    default = model(name)
    depth = default.encoder.depth
    frames = {key: get_timestamp_embeddings(audio, model(name, layers=layers))[0]
              for key, layers in (("final", [-1]), ("input", [0]), ("first", [1]))}
    torch.testing.assert_close(frames["final"], get_timestamp_embeddings(audio, default)[0], rtol=0, atol=0)
    both = get_timestamp_embeddings(audio, model(name, layers=[0, -1]))[0]
    torch.testing.assert_close(both, torch.cat([frames["input"], frames["final"]], dim=-1), rtol=1e-6, atol=1e-6)
    mean = get_timestamp_embeddings(audio, model(name, layers=[0, -1], layer_pool="mean"))[0]
    torch.testing.assert_close(mean, (frames["input"] + frames["final"]) / 2, rtol=1e-5, atol=1e-5)
    every = model(name, layers="all")
    assert every.timestamp_embedding_size == depth * default.timestamp_embedding_size
    first = get_timestamp_embeddings(audio, every)[0][..., :default.timestamp_embedding_size]
    torch.testing.assert_close(first, frames["first"], rtol=1e-6, atol=1e-6)
