"""From a batch of waveforms to frame, scene and timestamp embeddings, for every family.

One clip's path: waveform (B, S) -> front end (B, F, T) -> normalised -> cut into units of the
model's input width (W frames) -> every unit of every clip through the encoder in bounded batches
-> per unit and layer (n, prefix + gf * cols, D) tokens -> one embedding per patch column, its gf
frequency patches concatenated (gf * D) or averaged (D) -> columns of all units in time order.

The token grid and the encoder contract (grid.py) are all the engine knows of a model: column c
covers frames [c * st, c * st + pt) (st = pt for side-by-side patches, less where they overlap, as in
AST), a unit holds K = (W - pt) // st + 1 columns, and unit u starts at frame u * K * st, so the
columns of consecutive units continue the same grid.

Two modes:
  "default"   fixed normalisation statistics, so a clip's embedding does not depend on its
              batch-mates; every column that covers the clip, a partial last one completed with
              padding frames; the last unit only as wide as the columns it needs (the position table
              cut to that width), unless the option pad_last_unit pads it to the full width, as
              Audio-MAE's and AST's dataloaders pad every clip to their fixed input length.
  "reference" what the family's own code computes for the clip (family.ReferenceRecipe), one embedding
              per patch column: MSM-MAE's HEAR wrapper (the whole batch normalised by its own mean and
              std, the last unit padded, frame-start timestamps i * duration / n), M2D's portable
              runtime (as the default mode, frame-start timestamps), Audio-MAE's and AST's
              dataloaders (the clip padded or cut to one unit), BEATs' extract_features (the whole clip
              in one unit, frames after its last whole column dropped), Dasheng's forward (frames after
              the last whole column dropped, a dB front end's top_db floor from the whole batch), WavLM's,
              HuBERT's and wav2vec 2.0's (the whole clip in one unit, its samples after the last whole
              frame kept in it: the Base models' GroupNorm sees them, `trailing_frames`); or a
              family's own wrapper over these pieces (family.ReferenceWrapper: CED's HEAR wrapper).

Timestamp embeddings at a hop h finer than the column step st: the features are encoded st / h
times, each copy shifted by one more hop, and the columns interleaved, so embedding i covers frames
[i * h - lead, i * h - lead + pt): real finer resolution, not repeated frames. A timestamp is the
centre of the frames its embedding covers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .family import Checkpoint, Family
from .frontend import build_frontend
from .grid import Encoder, resolve_layers
from .precision import DTYPES


@dataclass
class EmbedderOptions:
    mode: str = "default"  # "default" or "reference" (see the module docstring)
    norm_mean: Optional[float] = None  # fixed statistics for the default mode; None: the checkpoint's,
    norm_std: Optional[float] = None  # or the family's defaults for checkpoints that store none
    timestamp_hop_ms: Optional[float] = None  # a whole number of frames dividing the column step;
    #                                           None: the family's default (the column step in "reference")
    dtype: str = "auto"  # encoder weights and compute: "auto" (fast_dtype: bfloat16 or float16 where the hardware
    #                      is fast at it), "float32", "bfloat16", "float16"; the front end and outputs are float32
    batch_tokens: int = 4160  # encoder work per call, in tokens (64 MSM-MAE 80x208 units); at least one unit
    pad_last_unit: bool = False  # pad the last unit to the full width (with the family's padding frames), as
    #                              Audio-MAE's and AST's dataloaders pad every clip; False: only the columns it needs
    freq_pool: Optional[str] = None  # a column's frequency patches "concat"-enated or "mean"-ed; None: the family's
    layers: Union[None, str, Sequence[int]] = None  # encoder layers of the embedding: None (the final output),
    #                                                 indices (0 = embedded input, -1 = final) or "all" (1..depth)
    layer_pool: str = "concat"  # several layers: "concat" or "mean"
    scene: str = "frames"  # "frames": the mean of the frame embeddings; "pooled": the model's own clip output
    unit_frames: Optional[int] = None  # input width in frames, for families where it is free (AST, BEATs)

    def __post_init__(self):
        if self.mode not in ("default", "reference"):
            raise ValueError(f"mode must be 'default' or 'reference', got {self.mode!r}")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be one of {['auto', *DTYPES]}, got {self.dtype!r}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("give both norm_mean and norm_std, or neither")
        if self.norm_std is not None and not self.norm_std > 0:
            raise ValueError(f"norm_std must be positive, got {self.norm_std}")
        if int(self.batch_tokens) < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {self.batch_tokens}")
        if self.freq_pool not in (None, "concat", "mean"):
            raise ValueError(f"freq_pool must be 'concat' or 'mean', got {self.freq_pool!r}")
        if self.layer_pool not in ("concat", "mean"):
            raise ValueError(f"layer_pool must be 'concat' or 'mean', got {self.layer_pool!r}")
        if self.scene not in ("frames", "pooled"):
            raise ValueError(f"scene must be 'frames' or 'pooled', got {self.scene!r}")
        if isinstance(self.layers, str) and self.layers != "all" or \
                isinstance(self.layers, (list, tuple)) and (not self.layers or
                                                             not all(isinstance(k, int) for k in self.layers)):
            raise ValueError(f"layers must be a non-empty list of layer indices or 'all', got {self.layers!r}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EmbedderOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown model option(s) {unknown}; known: {sorted(known)} and 'device'")
        return cls(**kwargs)


class Embedder(nn.Module):
    """The model object of the HEAR API: front end + encoder + token grid + embedding options."""

    def __init__(self, encoder: Encoder, checkpoint: Checkpoint, options: EmbedderOptions):
        super().__init__()
        family: Family = checkpoint.family
        self.family, self.grid, self.options = family, checkpoint.grid, options
        grid = checkpoint.grid
        self.frontend = build_frontend(checkpoint.frontend)
        self.encoder = encoder
        self.sample_rate = self.frontend.sample_rate
        self.frame_ms = self.frontend.hop_length * 1000 / self.sample_rate
        reference = options.mode == "reference"
        recipe = checkpoint.reference or family.reference
        if reference and recipe is None:
            raise ValueError(f"{family.title} has no reference HEAR wrapper to reproduce; use mode='default'")
        self.reference = recipe if reference else None
        self.batch_stats = reference and recipe.batch_norm_stats
        self.pad_last_unit = recipe.pad_last_unit if reference else options.pad_last_unit
        if options.norm_mean is not None:
            self.norm_stats = (float(options.norm_mean), float(options.norm_std))
        else:
            self.norm_stats = checkpoint.norm_stats or family.default_norm_stats
        self.norm_scale = family.norm_scale
        mean, std = self.norm_stats
        self.pad_value = 0.0 if family.pad_raw is None or self.batch_stats else \
            (family.pad_raw - mean) / (self.norm_scale * std)

        self.layers = resolve_layers(list(range(1, encoder.depth + 1)) if options.layers == "all" else
                                     options.layers, encoder.depth)
        self.freq_pool = options.freq_pool or family.freq_pool
        if options.scene == "pooled" and encoder.pool is None:
            raise ValueError(f"this {family.title} checkpoint has no clip-level output (scene='pooled' needs "
                             "a fine-tuned Audio-MAE or an AST); use scene='frames'")
        per_layer = grid.embed_dim * (grid.freq_patches if self.freq_pool == "concat" else 1)
        self.timestamp_embedding_size = per_layer * (len(self.layers) if options.layer_pool == "concat" else 1)
        self.scene_embedding_size = grid.embed_dim if options.scene == "pooled" else self.timestamp_embedding_size
        if reference and recipe.wrapper is not None:  # its own outputs (and the options it honours)
            self.timestamp_embedding_size, self.scene_embedding_size = recipe.wrapper.embedding_sizes(self)

        step_ms = grid.column_stride * self.frame_ms
        own_ms = reference and recipe.timestamp_hop_ms or step_ms  # the reference's own hop
        hop_ms = options.timestamp_hop_ms
        if hop_ms is None:
            hop_ms = own_ms if reference else family.timestamp_hop_ms
        if reference and hop_ms != own_ms:
            raise ValueError(f"mode='reference' reproduces the family's own output, one embedding every {own_ms:g} ms; "
                             f"for timestamp_hop_ms={hop_ms:g} use mode='default'")
        hop_frames = hop_ms / self.frame_ms
        if hop_frames != int(hop_frames) or hop_frames < 1 or not reference and grid.column_stride % int(hop_frames):
            raise ValueError(f"timestamp_hop_ms must be a multiple of {self.frame_ms:g} ms that divides the "
                             f"{step_ms:g} ms step between patch columns, got {hop_ms}")
        self.hop_frames = int(hop_frames)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The encoder's dtype (set by load_model from the dtype option)."""
        return next(self.encoder.parameters()).dtype

    @property
    def timestamp_hop_ms(self) -> float:
        """The hop of the timestamp embeddings."""
        return self.hop_frames * self.frame_ms

    @property
    def native_hop_ms(self) -> float:
        """The step between patch columns: the hop of one embedding per column."""
        return self.grid.column_stride * self.frame_ms

    # -- waveform -> normalised features ------------------------------------------------------------

    def normalised_features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, F, T), normalised by fixed or per-batch statistics (see the mode)."""
        x = self.frontend(audio, batch_floor=True) if self.reference is not None and self.reference.batch_top_db \
            else self.frontend(audio)
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, F, T) normalised in place, by the batch's own statistics or fixed ones: floats, or one
        per feature bin, (F, 1) tensors (a BatchNorm's running statistics)."""
        if self.batch_stats:
            mean, std = x.mean(), x.std()
        else:
            mean, std = self.norm_stats
            if torch.is_tensor(mean):
                mean, std = mean.to(x.device), std.to(x.device)
        return x.sub_(mean).div_(self.norm_scale * std)

    # -- normalised features -> column embeddings ---------------------------------------------------

    def encode_units(self, units: torch.Tensor) -> torch.Tensor:
        """(n, 1, F, w) units -> (n, cols, E) column embeddings in float32."""
        g = self.grid
        outputs = self.encoder.encode(units.to(self.compute_dtype), self.layers)  # [(n, prefix + gf * cols, D)]
        columns = []
        for tokens in outputs:
            n = tokens.shape[0]
            patches = tokens[:, g.num_prefix_tokens:].float().reshape(n, g.freq_patches, -1, g.embed_dim)
            if self.freq_pool == "mean":
                columns.append(patches.mean(dim=1))  # (n, cols, D)
            else:  # (n, gf, cols, D) -> (n, cols, gf * D), frequency patches side by side
                columns.append(patches.permute(0, 2, 1, 3).reshape(n, patches.shape[2], -1))
        if len(columns) == 1:
            return columns[0]
        return torch.cat(columns, dim=-1) if self.options.layer_pool == "concat" else torch.stack(columns).mean(0)

    def column_count(self, frames: int) -> int:
        """The patch columns embedded for `frames` frames: every column covering them (a partial last one
        completed with padding frames); in the reference mode as the family's own code does."""
        g, reference = self.grid, self.reference
        if reference is not None and reference.whole_columns_only:
            if frames < g.patch_frames:
                raise ValueError(f"a clip of {frames} frames is shorter than one patch column ({g.patch_frames} "
                                 f"frames), which {self.family.title}'s own code cannot embed; mode='default' pads it")
            columns = (frames - g.patch_frames) // g.column_stride + 1
        else:
            columns = g.columns_for(frames)
        return min(columns, g.unit_columns) if reference is not None and reference.first_unit_only else columns

    def units(self, n_columns: int, frames: int = 0) -> Iterator[Tuple[int, int, int]]:
        """(first column, columns, width in frames) of each unit covering columns 0 .. n_columns - 1 of `frames`."""
        g = self.grid
        if self.reference is not None and self.reference.whole_clip:
            yield 0, n_columns, max(g.frames_for(n_columns), frames if self.reference.trailing_frames else 0)
            return
        for first in range(0, n_columns, g.unit_columns):
            columns = min(g.unit_columns, n_columns - first)
            width = g.unit_frames if columns == g.unit_columns or self.pad_last_unit else g.frames_for(columns)
            yield first, columns, width

    def unit_batches(self, x: torch.Tensor, n_columns: int) -> Iterator[Tuple[slice, int, torch.Tensor]]:
        """Cut normalised (B, F, T) into units for columns 0 .. n_columns - 1 and batch them for the
        encoder: yield (clips, first column, units (b * k, 1, F, w)), k consecutive units per clip.

        Full units of all clips share encoder calls, at most `batch_tokens` tokens (at least one unit) per
        call; the features are padded at the end (pad_value) to the frames the units need."""
        g = self.grid
        n_clips, n_bins, _ = x.shape
        unit_hop = g.unit_columns * g.column_stride  # frames between consecutive unit starts
        units = list(self.units(n_columns, x.shape[-1]))
        end = max(first * g.column_stride + width for first, _, width in units)
        x = nn.functional.pad(x, (0, max(0, end - x.shape[-1])), value=self.pad_value)
        batch = max(1, self.options.batch_tokens // self.grid.unit_tokens(g.unit_columns))  # full units per call
        full = [u for u in units if u[2] == g.unit_frames]
        clips_per_call = min(n_clips, batch)
        for c0 in range(0, n_clips, clips_per_call):
            clips = slice(c0, min(c0 + clips_per_call, n_clips))
            units_per_clip = max(1, batch // (clips.stop - c0))
            for u0 in range(0, len(full), units_per_clip):
                k = min(units_per_clip, len(full) - u0)
                start = u0 * unit_hop
                # (b, F, k, W) views of overlapping or adjacent windows -> (b * k, 1, F, W)
                windows = x[clips, :, start:start + (k - 1) * unit_hop + g.unit_frames].unfold(-1, g.unit_frames,
                                                                                              unit_hop)
                yield clips, u0 * g.unit_columns, windows.transpose(1, 2).reshape(-1, 1, n_bins, g.unit_frames)
        for first, columns, width in units[len(full):]:  # the short last unit
            start = first * g.column_stride
            rest = x[:, :, start:start + width].unsqueeze(1)  # (B, 1, F, w)
            clips_per_call = max(1, self.options.batch_tokens // self.grid.unit_tokens(columns))
            for c0 in range(0, n_clips, clips_per_call):
                clips = slice(c0, min(c0 + clips_per_call, n_clips))
                yield clips, first, rest[clips]

    def column_chunks(self, x: torch.Tensor, n_columns: int) -> Iterator[Tuple[slice, int, torch.Tensor]]:
        """Yield (clips, first column, (b, cols, E)) covering columns 0 .. n_columns - 1 of normalised (B, F, T)."""
        for clips, first, units in self.unit_batches(x, n_columns):
            b = clips.stop - clips.start
            yield clips, first, self.encode_units(units).reshape(b, -1, self.timestamp_embedding_size)

    # -- embeddings ---------------------------------------------------------------------------------

    def fill_columns(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the first out.shape[1] column embeddings of normalised (B, F, T) into out (B, n, E).

        The features are encoded whole (every column covering them), however few columns are kept, so
        a column's embedding never depends on how many are asked for."""
        n_columns = max(self.column_count(x.shape[-1]), out.shape[1])
        for clips, first, emb in self.column_chunks(x, n_columns):
            take = min(emb.shape[1], out.shape[1] - first)
            out[clips, first:first + take] = emb[:, :take]
        return out

    def frame_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, F, T) -> native frame embeddings (B, columns, E), one per patch column."""
        n = self.column_count(x.shape[-1])
        return self.fill_columns(x, x.new_empty(x.shape[0], n, self.timestamp_embedding_size))

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, E): the mean of the native frame embeddings (accumulated chunk by chunk), or with
        scene="pooled" the mean over units of the model's own clip-level output."""
        if self.reference is not None and self.reference.wrapper is not None:
            return self.reference.wrapper.scene_embeddings(self, audio)
        x = self.normalised_features(audio)
        n = self.column_count(x.shape[-1])
        total = x.new_zeros(x.shape[0], self.scene_embedding_size)
        if self.options.scene == "pooled":
            counts = x.new_zeros(x.shape[0], 1)
            for clips, _, units in self.unit_batches(x, n):
                b = clips.stop - clips.start
                tokens = self.encoder.encode(units.to(self.compute_dtype))[0]
                pooled = self.encoder.pooled(tokens).float().reshape(b, -1, self.scene_embedding_size)
                total[clips] += pooled.sum(dim=1)
                counts[clips] += pooled.shape[1]
            return total / counts
        for clips, first, emb in self.column_chunks(x, n):
            total[clips] += emb[:, :n - first].sum(dim=1)
        return total / n

    def lead_frames(self) -> int:
        """Padding frames put before the features for timestamp embeddings: the fewest hops that bring the
        first centre within one hop of the start."""
        first_centre_ms = (self.grid.patch_frames - 1) / 2 * self.frame_ms + self.frontend.frame_offset_ms
        hop_ms = self.hop_frames * self.frame_ms
        return self.hop_frames * max(0, math.ceil((first_centre_ms - hop_ms) / hop_ms))

    def timestamps(self, num_samples: int) -> torch.Tensor:
        """Centres (ms) of the columns starting every hop from -lead frames: (n,), inside the audio."""
        duration_ms = num_samples * 1000 / self.sample_rate
        hop_ms = self.hop_frames * self.frame_ms
        first_ms = ((self.grid.patch_frames - 1) / 2 - self.lead_frames()) * self.frame_ms + \
            self.frontend.frame_offset_ms
        frames = self.frontend.num_frames(num_samples) + self.lead_frames()
        n = min(math.floor((duration_ms - first_ms) / hop_ms) + 1, math.ceil(frames / self.hop_frames))
        if n < 1:  # shorter than the first centre: one embedding, centred on the clip
            return torch.tensor([duration_ms / 2], dtype=torch.float64)
        return torch.arange(n, dtype=torch.float64) * hop_ms + first_ms

    def timestamp_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> ((B, n, E), (B, n) ms)."""
        if self.options.mode == "reference":
            return self.reference_timestamp_embeddings(audio)
        times = self.timestamps(audio.shape[-1])
        lead = self.lead_frames()
        x = nn.functional.pad(self.normalised_features(audio), (lead, 0), value=self.pad_value)
        shifts = self.grid.column_stride // self.hop_frames
        out = x.new_empty(x.shape[0], len(times), self.timestamp_embedding_size)
        for shift in range(min(shifts, len(times))):
            self.fill_columns(x[:, :, shift * self.hop_frames:], out[:, shift::shifts])
        stamps = times.to(torch.float32).to(audio.device).repeat(audio.shape[0], 1)
        return out, stamps

    def reference_timestamp_embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The family's own output: native frames at the centres of their columns, or at the starts
        i * duration / n that MSM-MAE's and M2D's wrappers give."""
        if self.reference.wrapper is not None:
            return self.reference.wrapper.timestamp_embeddings(self, audio)
        frames = self.frame_embeddings(self.normalised_features(audio))
        n = frames.shape[1]
        if self.reference.timestamps == "starts":
            step_s = audio.shape[-1] / self.sample_rate / n
            stamps = torch.tensor([i * step_s * 1000 for i in range(n)], dtype=torch.float32)
        else:
            first_ms = (self.grid.patch_frames - 1) / 2 * self.frame_ms + self.frontend.frame_offset_ms
            stamps = (torch.arange(n, dtype=torch.float64) * self.native_hop_ms + first_ms).float()
        return frames, stamps.to(audio.device).repeat(audio.shape[0], 1)
