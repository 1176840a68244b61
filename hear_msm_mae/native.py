"""The package's C kernels (hear_msm_mae/kernels/): compiled at first use by the system's C compiler, kept in the
cache folder under the source's hash, loaded with ctypes.

Only CPUs with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake and later) run them; elsewhere, or where no
compiler is found or the build fails, `kernels()` is None and the callers use torch's operations (a warning
says why, once). HEAR_MSM_MAE_NATIVE=0 switches them off (measured only on AVX512-BF16 without AMX; on CPUs
with AMX oneDNN's own kernels may be the faster choice).

The kernels are OpenMP code: loaded after torch, their libgomp.so.1 is the one torch's wheels already loaded,
so they run on torch's threads (a pool of their own would contend with torch's spinning threads: 4% slower
whole calls, measured).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from .download import cache_dir

SOURCE = Path(__file__).with_name("kernels") / "attention.c"
FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"]
SWITCH = "HEAR_MSM_MAE_NATIVE"

_lock = threading.Lock()
_loaded: Optional[ctypes.CDLL] = None
_tried = False


def cpu_may_support() -> bool:
    """Whether this CPU has AVX-512 as torch sees it (AVX512-BF16 itself is asked of the built library)."""
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() == "AVX512"


def compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(source: Path = SOURCE, folder: Optional[Path] = None) -> Path:
    """The shared library of `source`, compiled into `folder` (default: the cache's kernels/) unless already
    there under the source's hash; written atomically, so concurrent builds and killed ones leave no broken file."""
    code = source.read_bytes()
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang; or $CC) found")
    digest = hashlib.sha256(code + " ".join(FLAGS).encode()).hexdigest()[:16]
    folder = Path(folder or cache_dir() / "kernels")
    target = folder / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, "-o", tmp, str(source)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed on {source.name}:\n{done.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.hear_attention_supported.restype = ctypes.c_int
    p = ctypes.c_void_p
    lib.hear_attention.argtypes = [p, p, p, p, p, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                   p, ctypes.c_float, ctypes.c_int]
    lib.hear_attention.restype = ctypes.c_int
    return lib


def kernels() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None where they cannot run (see the module's docstring)."""
    global _loaded, _tried
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            if os.environ.get(SWITCH, "1") != "0" and cpu_may_support():
                try:
                    lib = load(build())
                    _loaded = lib if lib.hear_attention_supported() else None
                except (OSError, RuntimeError) as e:
                    warnings.warn(f"hear_msm_mae's C kernels are not available ({e}); using torch's operations")
            _tried = True
    return _loaded
