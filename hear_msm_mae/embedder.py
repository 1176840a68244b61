"""From a batch of waveforms to MSM-MAE frame, scene and timestamp embeddings.

One clip's path: waveform (B, S) -> log-mel (B, 80, T) -> normalised -> cut into units of the
model's input width (W frames) -> every unit of every clip through the encoder in bounded batches
-> per unit (n, [1 +] gf * cols, D) -> one embedding per patch column, the gf frequency patches
concatenated (cols, gf * D) -> columns of all units in time order (B, ceil(T / pt), gf * D).

Two modes:
  "default"   fixed normalisation statistics, so a clip's embedding does not depend on its
              batch-mates; the last unit is only as wide as the columns it needs, with the
              positional embedding cut to that width.
  "reference" the original MSM-MAE HEAR wrapper: the whole batch normalised by its own mean and
              std, the last unit zero-padded to the full width, padded columns dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from .frontend import HOP_LENGTH, SAMPLE_RATE, LogMelSpectrogram
from .model import MaskedAutoencoder

# Log-mel statistics of AudioSet for this front end (as in NTT's M2D runtime), for checkpoints
# that store none.
AUDIOSET_NORM_STATS = (-7.1, 4.2)
FRAME_MS = HOP_LENGTH * 1000 / SAMPLE_RATE  # 10 ms
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EmbedderOptions:
    mode: str = "default"  # "default" or "reference" (see the module docstring)
    norm_mean: Optional[float] = None  # fixed statistics for the default mode; None: the checkpoint's,
    norm_std: Optional[float] = None  # or AudioSet's for checkpoints that store none
    timestamp_hop_ms: float = 40.0  # a whole number of 10 ms frames dividing the patch width
    dtype: str = "auto"  # encoder weights and compute: "auto" (bfloat16 where the hardware is fast at it),
    #                      "float32", "bfloat16", "float16"; the front end and the outputs are float32
    batch_units: int = 64  # encoder work per call, in full input units

    def __post_init__(self):
        if self.mode not in ("default", "reference"):
            raise ValueError(f"mode must be 'default' or 'reference', got {self.mode!r}")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be one of {['auto', *DTYPES]}, got {self.dtype!r}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("give both norm_mean and norm_std, or neither")
        if self.norm_std is not None and not self.norm_std > 0:
            raise ValueError(f"norm_std must be positive, got {self.norm_std}")
        if int(self.batch_units) < 1:
            raise ValueError(f"batch_units must be at least 1, got {self.batch_units}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EmbedderOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown model option(s) {unknown}; known: {sorted(known)} and 'device'")
        return cls(**kwargs)


@lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are much faster than float32 here (AMX / avx512_bf16, sm80+)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and _cpu_has_fast_bf16()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return DTYPES[name]


class Embedder(nn.Module):
    """The model object of the HEAR API: front end + MSM-MAE encoder + embedding options."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: MaskedAutoencoder, options: EmbedderOptions,
                 norm_stats: Optional[Tuple[float, float]] = None):
        super().__init__()
        self.frontend = LogMelSpectrogram()
        self.encoder = encoder
        self.options = options
        config = encoder.config
        self.patch_frames = config.patch_size[1]
        self.unit_frames = config.input_size[1]
        self.freq_patches = config.grid_size[0]
        if options.norm_mean is not None:
            self.norm_stats = (float(options.norm_mean), float(options.norm_std))
        else:
            self.norm_stats = norm_stats or AUDIOSET_NORM_STATS
        hop_frames = options.timestamp_hop_ms / FRAME_MS
        if hop_frames != int(hop_frames) or hop_frames < 1 or self.patch_frames % int(hop_frames):
            raise ValueError(f"timestamp_hop_ms must be a multiple of {FRAME_MS:g} ms that divides the "
                             f"{self.patch_frames * FRAME_MS:g} ms patch width, got {options.timestamp_hop_ms}")
        self.hop_frames = int(hop_frames)
        self.scene_embedding_size = int(config.frame_embedding_size)
        self.timestamp_embedding_size = int(config.frame_embedding_size)

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The encoder's dtype (set by load_model from the dtype option)."""
        return self.encoder.pos_embed.dtype

    # -- waveform -> normalised log-mel -------------------------------------------------------------

    def normalised_log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, 80, T), normalised by fixed or per-batch statistics (see the mode)."""
        lms = self.frontend(audio)
        if self.options.mode == "reference":
            mean, std = lms.mean(), lms.std()
        else:
            mean, std = self.norm_stats
        return lms.sub_(mean).div_(std)

    # -- normalised log-mel -> column embeddings ---------------------------------------------------

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        """(n, 1, F, w) with w a multiple of the patch width -> (n, w / pt, gf * D) in float32."""
        tokens = self.encoder.forward_encoder(units.to(self.compute_dtype))  # (n, [1 +] gf * cols, D)
        tokens = tokens[:, int(self.encoder.config.use_cls_token):].float()
        n, cols = units.shape[0], units.shape[-1] // self.patch_frames
        # (n, gf * cols, D) frequency-major -> (n, cols, gf * D)
        return tokens.reshape(n, self.freq_patches, cols, -1).permute(0, 2, 1, 3).reshape(n, cols, -1)

    def column_chunks(self, lms: torch.Tensor) -> Iterator[Tuple[slice, int, torch.Tensor]]:
        """Encode (B, F, T) in bounded batches; yield (clips, first column, (b, cols, gf * D)).

        Together the chunks cover columns 0 .. ceil(T / pt) - 1 of every clip (possibly more: the
        caller keeps what it needs). Full units of all clips share encoder calls; the last unit is
        zero-padded to the full width in the reference mode, to the next patch otherwise.
        """
        n_clips, n_mels, total = lms.shape
        unit, pt = self.unit_frames, self.patch_frames
        cols = unit // pt  # patch columns per full unit
        batch = self.options.batch_units  # full units per encoder call
        full_units, rest = divmod(total, unit)

        clips_per_call = min(n_clips, batch)
        for c0 in range(0, n_clips, clips_per_call):
            clips = slice(c0, min(c0 + clips_per_call, n_clips))
            units_per_clip = max(1, batch // (clips.stop - c0))
            for u0 in range(0, full_units, units_per_clip):
                u1 = min(u0 + units_per_clip, full_units)
                x = lms[clips, :, u0 * unit:u1 * unit]  # (b, F, k * W)
                b, k = x.shape[0], u1 - u0
                x = x.reshape(b, n_mels, k, unit).transpose(1, 2).reshape(b * k, 1, n_mels, unit)
                yield clips, u0 * cols, self.encode_units(x).reshape(b, k * cols, -1)
        if rest:
            width = unit if self.options.mode == "reference" else math.ceil(rest / pt) * pt
            x = nn.functional.pad(lms[:, :, full_units * unit:], (0, width - rest)).unsqueeze(1)  # (B, 1, F, w)
            clips_per_call = max(1, batch * unit // width)
            for c0 in range(0, n_clips, clips_per_call):
                clips = slice(c0, min(c0 + clips_per_call, n_clips))
                yield clips, full_units * cols, self.encode_units(x[clips])

    # -- embeddings ---------------------------------------------------------------------------------

    def fill_columns(self, lms: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the first out.shape[1] column embeddings of normalised (B, F, T) into out (B, n, E)."""
        for clips, col, emb in self.column_chunks(lms):
            take = min(emb.shape[1], out.shape[1] - col)
            if take > 0:
                out[clips, col:col + take] = emb[:, :take]
        return out

    def frame_embeddings(self, lms: torch.Tensor) -> torch.Tensor:
        """Normalised (B, F, T) -> native frame embeddings (B, ceil(T / pt), gf * D), one per column."""
        n_cols = math.ceil(lms.shape[-1] / self.patch_frames)
        return self.fill_columns(lms, lms.new_empty(lms.shape[0], n_cols, self.timestamp_embedding_size))

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, gf * D): the mean of the native frame embeddings, accumulated chunk by chunk."""
        lms = self.normalised_log_mel(audio)
        n_cols = math.ceil(lms.shape[-1] / self.patch_frames)
        total = lms.new_zeros(lms.shape[0], self.scene_embedding_size)
        for clips, col, emb in self.column_chunks(lms):
            total[clips] += emb[:, :n_cols - col].sum(dim=1)
        return total / n_cols

    def lead_frames(self) -> int:
        """Zero frames put before the spectrogram for timestamp embeddings: the fewest hops that bring
        the first centre within one hop of the start (a column starting at frame 0 is centred at 75 ms)."""
        first_centre = (self.patch_frames - 1) / 2
        return self.hop_frames * max(0, math.ceil((first_centre - self.hop_frames) / self.hop_frames))

    def timestamps(self, num_samples: int) -> torch.Tensor:
        """Centres (ms) of the patch columns starting every hop from -lead frames: (n,), in the audio."""
        duration_ms = num_samples * 1000 / SAMPLE_RATE
        hop_ms = self.hop_frames * FRAME_MS
        first_ms = ((self.patch_frames - 1) / 2 - self.lead_frames()) * FRAME_MS
        total = num_samples // HOP_LENGTH + 1 + self.lead_frames()
        n = min(math.floor((duration_ms - first_ms) / hop_ms) + 1, math.ceil(total / self.hop_frames))
        if n < 1:  # shorter than the first centre: one embedding, centred on the clip
            return torch.tensor([duration_ms / 2], dtype=torch.float64)
        return torch.arange(n, dtype=torch.float64) * hop_ms + first_ms

    def timestamp_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> ((B, n, gf * D), (B, n) ms): columns starting every hop, finer than the patch width.

        The spectrogram, led by lead_frames() zero (mean) frames, is encoded pt / hop times, each copy
        shifted by one more hop; embedding i is column i // shifts of copy i % shifts and covers
        frames [i * hop - lead, i * hop - lead + pt).
        """
        times = self.timestamps(audio.shape[-1])
        lms = nn.functional.pad(self.normalised_log_mel(audio), (self.lead_frames(), 0))
        shifts = self.patch_frames // self.hop_frames
        out = lms.new_empty(lms.shape[0], len(times), self.timestamp_embedding_size)
        for shift in range(min(shifts, len(times))):
            self.fill_columns(lms[:, :, shift * self.hop_frames:], out[:, shift::shifts])
        stamps = times.to(torch.float32).to(audio.device).repeat(audio.shape[0], 1)
        return out, stamps
