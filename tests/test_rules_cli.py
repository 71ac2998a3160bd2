"""`runwatch rules check` as a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import RUNWATCH

GOOD = (
    "rules:\n  - name: run-failed\n    when:\n      status: [Failed]\n"
    "    notify: [ml-oncall, chat]\n"
)
BAD = "rules:\n  - name: broken\n    when:\n      status: [Exploded]\n    notify: [chat]\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNWATCH, *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_the_shipped_rules_check_clean() -> None:
    result = run("rules", "check", str(Path(__file__).parent.parent / "alert_rules"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_a_broken_file_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    result = run("rules", "check", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:4" in result.stderr
    assert "broken" in result.stderr and "status" in result.stderr
    assert "Traceback" not in result.stderr


def test_receivers_are_checked_against_a_config(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(GOOD)
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        yaml.safe_dump({"receivers": {"ml-oncall": {"email": {"to": ["a@example.com"]}}}})
    )
    result = run("rules", "check", str(tmp_path / "rules"), "--config", str(config))
    assert result.returncode == 1
    assert "chat" in result.stderr
