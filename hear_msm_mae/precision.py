"""Which dtype runs fast where: the `dtype` option of the HEAR models and the trainer's `precision`."""
from __future__ import annotations

from functools import lru_cache

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def fast_dtype(device: torch.device) -> torch.dtype:
    """The dtype whose matrix products are fast here: bfloat16 on GPUs sm80+ and on CPUs with AMX or
    avx512_bf16, float16 on GPUs whose tensor cores have no bfloat16 (sm70, sm75), else float32."""
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        return torch.bfloat16 if major >= 8 else torch.float16 if major >= 7 else torch.float32
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_fast_bf16() else torch.float32


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype option ("auto" or a name in DTYPES) on `device`."""
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"dtype must be one of {['auto', *DTYPES]}, got {name!r}")
    return fast_dtype(device) if name == "auto" else DTYPES[name]
