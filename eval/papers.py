"""Published results this harness reproduces (eval.reproduce): per paper its checkpoints, model options and
tasks; the numbers it published are in hear2021_leaderboard.csv beside this file (eval.report reads them).

MSM-MAE (Niizumi et al., "Masked Spectrogram Modeling using Masked Autoencoders for Learning General-purpose
Audio Representation", HEAR 2021 NeurIPS Competition, PMLR 166:1-24, 2022; arXiv:2204.12260):

- checkpoint: 80x512p16x16_paper/checkpoint-100.pth, "the pre-trained weight used to calculate the numbers in
  the paper" (nttcslab/msm-mae README, section 5), in the authors' wrapper's normalisation (each batch by its
  own statistics, hear_msm_mae's `mode="reference"`), embedded and scored with hear-eval-kit's protocol;
- tasks: the abstract says the models were evaluated on 15 of HEAR 2021's 19 tasks. Which 15 is not in the
  abstract, and the paper's results table could not be read here: we take the 15 scene-embedding tasks without
  Beehive and NSynth Pitch 50h (i.e. the 19 without the two timestamp-embedding tasks, DCASE 2016 and MAESTRO,
  and the two longest to embed) — our reading, to be checked against the paper's table;
- published numbers: only the abstract's two, 73.4% on CREMA-D and 85.8% on LibriCount (accuracy, the tasks'
  primary score), could be found (the PMLR page and arXiv abstract); the leaderboard CSV's row
  `report.PAPER_MODEL` holds them, and no other task has a published number to compare with here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple


@dataclass(frozen=True)
class Paper:
    name: str  # the command's name for it, e.g. "msm-mae-paper"
    title: str
    module: str  # the HEAR module
    checkpoint: str  # an official checkpoint name (hear_msm_mae.releases)
    tasks: Tuple[str, ...]  # HEAR 2021 task folders (eval.tasks.HEAR2021_TASKS)
    model_options: Dict[str, object] = field(default_factory=dict)


PAPERS: Dict[str, Paper] = {paper.name: paper for paper in (
    Paper("msm-mae-paper", "MSM-MAE (Niizumi et al., HEAR 2021, PMLR 166)", "hear_msm_mae",
          "80x512p16x16_paper/checkpoint-100.pth",
          ("beijing_opera-v1.0-hear2021-full", "tfds_crema_d-1.0.0-full", "esc50-v2.0.0-full", "fsd50k-v1.0-full",
           "tfds_gtzan-1.0.0-full", "tfds_gtzan_music_speech-1.0.0-full", "gunshot_triangulation-v1.0-full",
           "libricount-v1.0.0-hear2021-full", "mridangam_stroke-v1.5-full", "mridangam_tonic-v1.5-full",
           "nsynth_pitch-v2.2.3-5h", "speech_commands-v0.0.2-5h", "speech_commands-v0.0.2-full",
           "vocal_imitation-v1.1.3-full", "vox_lingua_top10-hear2021-full"),
          {"mode": "reference"}),
)}
