"""The front end: torchaudio's slaney mel spectrogram, computed chunk by chunk for long clips."""
import torch
import torchaudio

from hear_msm_mae.frontend import LOG_EPS, LogMelSpectrogram, num_frames


def test_chunked_equals_torchaudio_in_one_piece():
    audio = torch.randn(2, 2 * 16000 + 123, generator=torch.Generator().manual_seed(0)) * 0.1
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=400, win_length=400, hop_length=160, n_mels=80, f_min=50, f_max=8000,
        power=2.0, norm="slaney", mel_scale="slaney")(audio)
    reference = torch.log(reference + LOG_EPS)
    for chunk_frames in (7, 64, 100_000):
        lms = LogMelSpectrogram(chunk_frames=chunk_frames)(audio)
        assert lms.shape == (2, 80, num_frames(audio.shape[1]))
        torch.testing.assert_close(lms, reference, rtol=0, atol=1e-4)
