"""The ATST authors' own embedding code (mode="reference" of families/atst.py), over the engine's pieces
(front end and normalisation, encoder, batch bound): what github.com/Audio-WestlakeU/audiossl computes.

ATST-Frame, their HEAR wrapper (methods/atstframe/embedding.py): the whole clip's features are cut into
chunks of 1001 frames, [1001 k, 1001 (k + 1)), each encoded alone (positions restart) after dropping
its frames beyond whole 4-frame columns: 1001 = 4 x 250 + 1, so every full chunk drops a frame and the
tokens of chunk k lie 10 k ms after the 40-ms grid. A frame embedding is the normed outputs of the last
12 blocks (all blocks of a shallower model) concatenated; its timestamp is 40 i ms (the start of a
column, not its centre, and not shifted with the chunks). The scene embedding is the mean over chunks,
with EQUAL weights, of each chunk's token sum / (tokens + 1e-6): a last chunk of 75 tokens weighs as
much as one of 250, and one of 1-3 frames (no token) adds a zero vector.

ATST-Clip, their linear evaluation (methods/atst/downstream: FreezingTransform and AST's
get_intermediate_layers_chunks): the clip's central 12 s (a shorter clip whole) through the front end,
chunks of int(train_len * 100 + 1) frames (601), and per chunk and each of the last 12 normed blocks
the [CLS] token and the token sum divided by (frames remaining in the CLIP // 4 + 1e-6), not in the
chunk: chunk 0 of a 12-s clip sums 150 tokens and divides by 300. Chunk 0 weighs 1, a later chunk 1 if
more than half a chunk remains, else 0; the output is [CLS of each block | mean of each block], the
chunks' weighted means. ATST-Frame's own linear evaluation is the same recipe without [CLS], over 1001-
frame chunks, dividing by the chunk's frames (`divisor="chunk"`). ATST-Clip's frame-level use
(methods/atstframe/downstream/comparison_models/clip_atst_module.py): the central 10 s in one pass, the
last block's normed tokens without [CLS]; it gives no timestamps: here the centres of the tokens' frames.

The embedding sizes are the true ones: embedding.py declares scene 2 x 12 x D and timestamp 12 x D
whatever the depth, and its outputs are min(12, depth) x D.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, List, Sequence, Tuple

import torch

N_BLOCKS = 12  # the last blocks every recipe reads
OWN_OPTIONS = ("layers", "layer_pool", "scene", "unit_frames", "pad_last_unit")  # the recipes decide these


def last_blocks(depth: int, n: int = N_BLOCKS) -> List[int]:
    """The last n blocks' layer indices, ascending (all blocks when fewer)."""
    return list(range(max(1, depth - n + 1), depth + 1))


def check_options(model: Any) -> None:
    """Refuse options that would change what the authors' code computes."""
    given = {f.name: getattr(model.options, f.name) for f in dataclasses.fields(model.options)
             if f.name in OWN_OPTIONS and getattr(model.options, f.name) != f.default}
    if given:
        raise ValueError(f"mode='reference' computes the ATST authors' own embeddings; {given} apply to "
                         "mode='default'")


def central_crop(model: Any, audio: torch.Tensor, seconds: float) -> Tuple[torch.Tensor, int]:
    """(B, S) -> normalised features (B, F, T) of the central `seconds` (a shorter clip whole, as the
    authors' CentralCrop(pad=False)), and the first sample they start at."""
    samples = int(seconds * model.sample_rate)
    start = max(0, (audio.shape[-1] - samples) // 2)
    return model.normalised_features(audio[:, start:start + samples]), start


def encode_chunk(model: Any, x: torch.Tensor, start: int, stop: int, layers: Sequence[int]) -> List[torch.Tensor]:
    """Frames [start, stop) of normalised (B, F, T), cut to whole columns and encoded alone (at least one
    column), in calls of at most batch_tokens tokens -> per layer (B, prefix + columns, D) float32."""
    g = model.grid
    columns = (stop - start) // g.patch_frames
    unit = x[:, None, :, start:start + columns * g.patch_frames]  # (B, 1, F, 4 * columns)
    per_call = max(1, model.options.batch_tokens // g.unit_tokens(columns))
    calls = [model.encoder.encode(unit[i:i + per_call].to(model.compute_dtype), layers)
             for i in range(0, unit.shape[0], per_call)]
    return [torch.cat([outputs[k] for outputs in calls]).float() for k in range(len(layers))]


@dataclass(frozen=True)
class FrameWrapper:
    """ATST-Frame's HEAR wrapper (embedding.py)."""
    chunk_frames: int = 1001

    def embedding_sizes(self, model: Any) -> Tuple[int, int]:
        check_options(model)
        size = len(last_blocks(model.encoder.depth)) * model.grid.embed_dim
        return size, size

    def chunks(self, model: Any, audio: torch.Tensor) -> Iterator[torch.Tensor]:
        """(B, S) -> each chunk's frame embeddings (B, tokens, E), tokens 0 for a chunk under one column."""
        x = model.normalised_features(audio)
        layers, total = last_blocks(model.encoder.depth), x.shape[-1]
        for start in range(0, total, self.chunk_frames):
            stop = min(start + self.chunk_frames, total)
            if stop - start < model.grid.patch_frames:
                yield x.new_zeros(x.shape[0], 0, model.timestamp_embedding_size)
            else:
                yield torch.cat(encode_chunk(model, x, start, stop, layers), dim=-1)

    def timestamp_embeddings(self, model: Any, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        frames = torch.cat(list(self.chunks(model, audio)), dim=1)
        stamps = torch.arange(frames.shape[1], device=audio.device) * float(model.native_hop_ms)
        return frames, stamps.repeat(audio.shape[0], 1)

    def scene_embeddings(self, model: Any, audio: torch.Tensor) -> torch.Tensor:
        means = [frames.sum(dim=1) / (frames.shape[1] + 1e-6) for frames in self.chunks(model, audio)]
        return torch.stack(means).mean(dim=0)


@dataclass(frozen=True)
class LinearEvaluation:
    """ATST's linear-evaluation clip feature: (B, S) -> (B, E), E = ([CLS] + mean) x blocks x D."""
    chunk_frames: int  # ATST-Clip: int(train_len * 100 + 1); ATST-Frame: 1001
    divisor: str = "remaining"  # a chunk's token sum over the frames remaining in the "remaining" clip or the "chunk"
    crop_seconds: float = 12.0

    def size(self, model: Any) -> int:
        return (1 + model.grid.num_prefix_tokens) * len(last_blocks(model.encoder.depth)) * model.grid.embed_dim

    def __call__(self, model: Any, audio: torch.Tensor) -> torch.Tensor:
        x, _ = central_crop(model, audio, self.crop_seconds)
        layers, total, prefix = last_blocks(model.encoder.depth), x.shape[-1], model.grid.num_prefix_tokens
        features = []  # one (B, E) per chunk of weight 1
        for start in range(0, total, self.chunk_frames):
            remaining = total - start
            if start and remaining <= self.chunk_frames // 2:
                continue  # weight 0
            stop = min(start + self.chunk_frames, total)
            tokens = encode_chunk(model, x, start, stop, layers)
            divisor = (remaining if self.divisor == "remaining" else stop - start) // model.grid.patch_frames
            cls = [t[:, 0] for t in tokens] if prefix else []
            features.append(torch.cat(cls + [t[:, prefix:].sum(dim=1) / (divisor + 1e-6) for t in tokens], dim=-1))
        return torch.stack(features).mean(dim=0)


@dataclass(frozen=True)
class ClipWrapper:
    """ATST-Clip: scene embeddings from its linear evaluation, frame embeddings from its frame-level module."""
    linear_evaluation: LinearEvaluation
    frame_crop_seconds: float = 10.0

    def embedding_sizes(self, model: Any) -> Tuple[int, int]:
        check_options(model)
        return model.grid.embed_dim, self.linear_evaluation.size(model)

    def scene_embeddings(self, model: Any, audio: torch.Tensor) -> torch.Tensor:
        return self.linear_evaluation(model, audio)

    def timestamp_embeddings(self, model: Any, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x, first_sample = central_crop(model, audio, self.frame_crop_seconds)
        (tokens,) = encode_chunk(model, x, 0, x.shape[-1], [model.encoder.depth])
        frames = tokens[:, model.grid.num_prefix_tokens:]  # (B, n, D)
        g = model.grid
        centres = torch.arange(frames.shape[1], device=audio.device) * g.column_stride + (g.patch_frames - 1) / 2
        stamps = first_sample * 1000 / model.sample_rate + centres * model.frame_ms
        return frames, stamps.float().repeat(audio.shape[0], 1)
