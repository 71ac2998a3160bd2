"""What `runwatch serve` sets in its interpreter once loaded (consumers.service.app
.tune_interpreter): checked in a fresh process, since both settings are process-wide."""

from __future__ import annotations

import subprocess
import sys

from consumers.service.app import SWITCH_INTERVAL_S


def test_serve_shortens_the_gil_switch_interval_and_spaces_young_collections() -> None:
    code = (
        "import gc, sys\n"
        "from consumers.service.app import tune_interpreter\n"
        "before = sys.getswitchinterval()\n"
        "tune_interpreter()\n"
        "print(before, sys.getswitchinterval(), *gc.get_threshold(), gc.get_freeze_count() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert float(out[0]) == 0.005  # Python's default, for the record
    assert float(out[1]) == SWITCH_INTERVAL_S < 0.005
    assert out[2:] == ["50000", "20", "100", "True"]
