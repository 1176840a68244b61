"""End to end with the official HEAR 2021 tools, run as a user would from another directory."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import golden_checkpoint

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", ["80x208p16x16_tiny", "80x512p16x16_tinycls"])
def test_hear_validator_looks_good(name, tmp_path):
    validator = BIN / "hear-validator"
    if not validator.exists():
        pytest.skip("hear-validator is not installed (pip install --no-deps -r requirements/hear-tools.txt)")
    result = subprocess.run([str(validator), "hear_msm_mae", "--model", str(golden_checkpoint(name)),
                             "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Looks good!" in output
    warnings = [line for line in output.splitlines() if "UserWarning" in line]
    # The validator always prints one reminder about rounding drift; nothing else may warn.
    assert all("IMPORTANT: A common bug" in line for line in warnings), warnings
    assert "Min timestamp 35.0ms" in output and "Max interval between timestamps is 40.0ms" in output
