"""The front ends: torchaudio's slaney mel spectrogram and Kaldi's fbank, computed chunk by chunk for long clips."""
import math

import numpy as np
import pytest
import torch
import torchaudio

from conftest import GOLDEN, GOLDEN_CASES
from hear_msm_mae.families.m2d import FRONTEND_32K
from hear_msm_mae.frontend import LOG_EPS, KaldiFbank, KaldiFbankConfig, LogMelConfig, LogMelSpectrogram

AUDIO_MAE_AST = KaldiFbankConfig(window_type="hanning", subtract_clip_mean=True)
BEATS = KaldiFbankConfig(window_type="povey", input_scale=2.0 ** 15)
CONFIGS = [AUDIO_MAE_AST, KaldiFbankConfig(window_type="hanning"), BEATS]


@pytest.mark.parametrize("config", [LogMelConfig(), FRONTEND_32K], ids=["16k", "m2d_32k"])
def test_chunked_equals_torchaudio_in_one_piece(config):
    audio = torch.randn(2, 2 * config.sample_rate + 123, generator=torch.Generator().manual_seed(0)) * 0.1
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate, n_fft=config.n_fft, win_length=config.n_fft, hop_length=config.hop_length,
        n_mels=80, f_min=50, f_max=config.sample_rate / 2, power=2.0, norm="slaney", mel_scale="slaney")(audio)
    reference = torch.log(reference + LOG_EPS)
    for chunk_frames in (7, 64, None, 100_000):  # in all: 3, 32, the default 1310 (16 kHz) or 655 per clip, one
        frontend = LogMelSpectrogram(config, chunk_frames=chunk_frames)
        lms = frontend(audio)
        assert lms.shape == (2, 80, audio.shape[1] // config.hop_length + 1) == (2, 80, frontend.num_frames(audio.shape[1]))
        assert frontend.hop_length * 1000 / frontend.sample_rate == 10.0  # 100 frames a second at either rate
        torch.testing.assert_close(lms, reference, rtol=0, atol=1e-4)


# -- Kaldi fbank -----------------------------------------------------------------------------------------

def kaldi_reference(audio: torch.Tensor, config: KaldiFbankConfig) -> torch.Tensor:
    """torchaudio's fbank clip by clip, as the reference dataloaders call it: (B, S) -> (B, bins, T)."""
    features = []
    for clip in audio:
        clip = clip[None]
        if config.subtract_clip_mean:
            clip = clip - clip.mean()
        features.append(torchaudio.compliance.kaldi.fbank(
            clip * config.input_scale, num_mel_bins=config.num_mel_bins, sample_frequency=config.sample_frequency,
            frame_length=config.frame_length_ms, frame_shift=config.frame_shift_ms, window_type=config.window_type,
            dither=0.0, htk_compat=True, use_energy=False).T)
    return torch.stack(features)


def signals(config: KaldiFbankConfig) -> dict:
    g = torch.Generator().manual_seed(1)
    t = torch.arange(3 * 16000 + 77) / 16000
    quiet = 3e-5 / config.input_scale  # mel energies straddle the float32-eps floor
    return {
        "noise": torch.randn(3, 3 * 16000 + 77, generator=g) * 0.1,
        "tones": torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.3 * torch.sin(2 * math.pi * 3000 * t) + 0.2]),
        "quiet": torch.randn(2, 16000 + 5, generator=g) * quiet,
        "one_frame": torch.randn(2, 400, generator=g),
        "odd_lengths": torch.randn(2, 559, generator=g),
    }


@pytest.mark.parametrize("config", CONFIGS, ids=["audiomae_ast", "hanning", "beats"])
def test_kaldi_fbank_equals_torchaudio(config):
    for chunk_frames in (37 * 3, 6000):  # 3 s = 298 frames: chunks of 37 or 55 frames per clip, or one
        frontend = KaldiFbank(config, chunk_frames=chunk_frames)
        for name, audio in signals(config).items():
            features = frontend(audio)
            reference = kaldi_reference(audio, config)
            assert features.shape == reference.shape == (len(audio), 128, frontend.num_frames(audio.shape[1])), name
            torch.testing.assert_close(features, reference, rtol=0, atol=1e-5, msg=name)
            if name == "quiet":
                floor = math.log(torch.finfo(torch.float32).eps)
                assert (reference == floor).any() and (reference > floor + 1).any()


def test_kaldi_fbank_batch_and_chunk_independent():
    audio = torch.randn(4, 2 * 16000 + 311, generator=torch.Generator().manual_seed(2)) * torch.tensor([[1e-3], [1.0],
                                                                                                         [0.1], [3.0]])
    for config in CONFIGS:
        batch = KaldiFbank(config)(audio)
        for i in range(len(audio)):
            torch.testing.assert_close(KaldiFbank(config)(audio[i:i + 1])[0], batch[i], rtol=0, atol=1e-5)
        for chunk_frames in (1, 7, 100):
            torch.testing.assert_close(KaldiFbank(config, chunk_frames=chunk_frames)(audio), batch, rtol=0, atol=1e-5)


def test_front_end_attributes():
    kaldi, log_mel = KaldiFbank(), LogMelSpectrogram()
    assert (kaldi.sample_rate, kaldi.hop_length, kaldi.n_bins, kaldi.min_samples) == (16000, 160, 128, 400)
    assert kaldi.n_fft == 512 and kaldi.frame_offset_ms == 12.5 and log_mel.frame_offset_ms == 0.0
    assert (log_mel.sample_rate, log_mel.hop_length, log_mel.n_bins, log_mel.min_samples) == (16000, 160, 80, 201)
    assert kaldi.state_dict() == {} and log_mel.state_dict() == {}
    for frontend in (kaldi, log_mel):
        for samples in (frontend.min_samples, frontend.min_samples + 159, frontend.min_samples + 160, 16000):
            features = frontend(torch.randn(2, samples, dtype=torch.float64))
            assert features.dtype == torch.float32
            assert features.shape == (2, frontend.n_bins, frontend.num_frames(samples))
        assert frontend.num_frames(frontend.min_samples) >= 1
        with pytest.raises(ValueError, match="empty batch"):
            frontend(torch.zeros(0, 16000))
        with pytest.raises(ValueError, match=f"at least {frontend.min_samples} samples"):
            frontend(torch.zeros(1, frontend.min_samples - 1))
        with pytest.raises(ValueError, match="batch, samples"):
            frontend(torch.zeros(16000))
    # frame 0 of the Kaldi front end covers samples [0, 400): a click at sample 200 peaks there
    click = torch.zeros(1, 1600)
    click[0, 200] = 1.0
    assert int(kaldi(click)[0].sum(0).argmax()) == 0 and kaldi.frame_offset_ms == 200 / 16
    with pytest.raises(ValueError, match="window_type"):
        KaldiFbankConfig(window_type="hamming")


def golden_arrays(name: str) -> dict:
    path = GOLDEN / name / "golden.npz"
    if not path.is_file():
        pytest.skip(f"golden data not found at {path}")
    return dict(np.load(path))


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_kaldi_fbank_golden_features(case):
    """Audio-MAE's and AST's dataloader features and BEATs.preprocess, from the golden audio."""
    audio = torch.from_numpy(golden_arrays("80x208p16x16_tiny")[f"{case}.audio"])  # (n, S) at 16 kHz
    fbank = KaldiFbank(AUDIO_MAE_AST)(audio).transpose(1, 2)  # (n, T, 128)
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, max(0, 1024 - fbank.shape[1])))[:, :1024]  # zeros or cut
    features = (fbank - (-4.2677393)) / (4.5689974 * 2)
    audiomae, ast = golden_arrays("audiomae_tiny")[f"{case}.features"], golden_arrays("ast_tiny")[f"{case}.features"]
    torch.testing.assert_close(features, torch.from_numpy(audiomae[:, 0]), rtol=0, atol=1e-4)
    torch.testing.assert_close(features, torch.from_numpy(ast), rtol=0, atol=1e-4)

    features = (KaldiFbank(BEATS)(audio).transpose(1, 2) - 15.41663) / (2 * 6.55582)  # (n, T, 128), not padded
    torch.testing.assert_close(features, torch.from_numpy(golden_arrays("beats_tiny")[f"{case}.features"]),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("config", [
    LogMelConfig(n_fft=1024, n_mels=64, f_min=60.0, f_max=7800.0, mel_scale="htk", log="db", top_db=80.0),  # ATST
    LogMelConfig(n_fft=512, n_mels=64, f_min=0.0, f_max=8000.0, mel_scale="htk", log="db", top_db=120.0),  # Dasheng
], ids=["atst", "dasheng_ced"])
def test_db_mel_equals_torchaudio_with_the_floor_per_clip_or_per_batch(config):
    """torchaudio's MelSpectrogram + AmplitudeToDB(top_db): on (B, 1, F, T) the floor is each clip's maximum
    - top_db, on (B, F, T) the whole batch's; a silent stretch beside a loud clip shows the difference."""
    reference = torch.nn.Sequential(
        torchaudio.transforms.MelSpectrogram(config.sample_rate, n_fft=config.n_fft, win_length=config.n_fft,
                                             hop_length=config.hop_length, f_min=config.f_min, f_max=config.f_max,
                                             n_mels=config.n_mels),
        torchaudio.transforms.AmplitudeToDB(top_db=config.top_db))
    audio = torch.randn(3, 50000, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1e-3], [1.0], [1e2]])
    audio[0, :20000] = 0.0
    ours = LogMelSpectrogram(config, chunk_frames=100)  # several chunks
    per_clip, per_batch = reference(audio.unsqueeze(1))[:, 0], reference(audio)
    assert float((per_clip - per_batch).abs().max()) > 10  # the case shows the difference
    assert float((ours(audio) - per_clip).abs().max()) < 1e-4
    assert float((ours(audio, batch_floor=True) - per_batch).abs().max()) < 1e-4
