"""hear-eval-kit's predictions code (heareval 2021.1.3) in a pinned environment beside this one: test machinery.

heareval's predictions runner needs pytorch-lightning 1.8.6, which needs numpy < 2 and imports neither
beside this environment's pins. Its environment is a venv whose own site-packages hold only what that
code pins or needs and current versions break; a .pth file appends this environment's site-packages,
so torch, scikit-learn, scipy, sed_eval, dcase_util and heareval itself are shared:

    python tests/heareval_env.py DIR        build it (the Makefile's test set-up builds .venv-heareval)

It runs with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1: Lightning 1.8 reloads its own checkpoints with torch.load,
which now defaults to weights_only. The tests (hear-eval-kit's own code as the reference: heareval_reference.py)
and benchmarks/eval_fidelity.py run their hear-eval-kit side with `run`.
"""
from __future__ import annotations

import argparse
import os
import site
import subprocess
import sys
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ENV = REPO / ".venv-heareval"
PINS = ["numpy<2", "pytorch-lightning==1.8.6", "torchmetrics<1", "setuptools<82", "torchinfo", "pandas",
        "more_itertools", "click"]
READY_FILE = ".installed"


def environment_python(env: Path = DEFAULT_ENV) -> Path:
    """The environment's python; FileNotFoundError saying how to build it when it is not complete."""
    python = Path(env) / "bin" / "python"
    if not (Path(env) / READY_FILE).exists():
        raise FileNotFoundError(f"hear-eval-kit's environment not found at {env}: build it with "
                                f"`{sys.executable} {Path(__file__).resolve()} {env}` (make test does)")
    return python


def build(env: Path = DEFAULT_ENV) -> Path:
    """Build the environment at `env` (nothing to do when complete); returns its python."""
    env = Path(env)
    if (env / READY_FILE).exists():
        return environment_python(env)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (env / "lib" / version / "site-packages" / "zz_base.pth").write_text(site.getsitepackages()[0] + "\n")
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    probe = subprocess.run([str(python), "-c", "import heareval"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-requires-python",
                        "heareval==2021.1.3"], check=True)
    check = subprocess.run([str(python), "-c", "import heareval.predictions.task_predictions"],
                           env=environment_variables(), capture_output=True, text=True)
    if check.returncode:
        raise RuntimeError(f"{env}: heareval.predictions does not import:\n{check.stderr[-3000:]}")
    (env / READY_FILE).touch()
    return python


def environment_variables() -> dict:
    return {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}


def run(args: List[str], env: Path = DEFAULT_ENV, **kwargs) -> subprocess.CompletedProcess:
    """`python ARGS` in hear-eval-kit's environment, with subprocess.run's keyword arguments; RuntimeError
    with the end of its output when it fails."""
    done = subprocess.run([str(environment_python(env)), *args], env=environment_variables(), text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"hear-eval-kit's environment: {' '.join(args)} exited with {done.returncode}:\n"
                           f"{((done.stdout or '') + (done.stderr or ''))[-4000:]}")
    return done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python tests/heareval_env.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("env", type=Path, nargs="?", default=DEFAULT_ENV, help=f"where (default {DEFAULT_ENV})")
    print(build(parser.parse_args(argv).env))


if __name__ == "__main__":
    main()
