"""Every model family this package reads, and finding a file's family.

Each family file (msm_mae.py, m2d.py, audiomae.py, ast.py, beats.py, dasheng.py, ced.py) defines FAMILY
(audio_transformer.py is what Dasheng and CED share; atst.py defines two, ATST-Frame's FRAME and
ATST-Clip's CLIP; wav2vec2.py, hubert.py and wavlm.py define theirs with waveform.py, what the three share);
detection asks every one of them whether a file is theirs, so the order here means
nothing: a file that no family, or more than one, claims is refused with an error naming them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..family import Family
from . import ast, atst, audiomae, beats, ced, dasheng, hubert, m2d, msm_mae, wav2vec2, wavlm

FAMILIES: Dict[str, Family] = {f.name: f for f in (msm_mae.FAMILY, m2d.FAMILY, audiomae.FAMILY, ast.FAMILY,
                                                   beats.FAMILY, dasheng.FAMILY, ced.FAMILY, atst.FRAME, atst.CLIP,
                                                   wav2vec2.FAMILY, hubert.FAMILY, wavlm.FAMILY)}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def detect_family(path: Path, contents: Dict[str, Any]) -> Family:
    """The one family whose files look like `contents` (the unpickled file at `path`)."""
    claims = [family for family in FAMILIES.values() if family.looks_like(contents)]
    if len(claims) == 1:
        return claims[0]
    if not claims:
        keys = sorted(map(str, contents))[:6]
        raise ValueError(f"{path}: not a checkpoint of any family this package knows "
                         f"({', '.join(f.title for f in FAMILIES.values())}); its top-level keys start with {keys}")
    names = " and ".join(f"{f.title} (family={f.name!r})" for f in claims)
    raise ValueError(f"{path}: this file looks like a checkpoint of {names}; say which with the family's module "
                     f"({', '.join(f.module for f in claims)}) or load_model(..., family=...)")
