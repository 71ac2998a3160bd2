"""Files that hold secrets or run data: the SQLite database and its WAL/SHM files are created
0600, and secret files that others can read are refused, naming the file and the key."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumers.config.receivers import SmtpSettings
from consumers.config.service import EndpointAuth
from consumers.config.settings import Settings, load_settings
from consumers.model.errors import ConfigError
from consumers.model.events import RunStatusEvent
from consumers.store import open_store
from tests.test_cli import runwatch


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default: files 0644 unless asked otherwise
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_database_and_its_wal_and_shm_files_are_private(
    tmp_path: Path, loose_umask: None
) -> None:
    db = tmp_path / "state" / "runwatch.db"
    store = open_store(f"sqlite:///{db}", migrate=True)
    try:
        event = RunStatusEvent.model_validate(
            {"TimeGenerated": datetime.now(UTC), "RunId": "r1", "Status": "Failed"}
        )
        store.write_batch([event])
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: oct(mode(p)) for p in (db, wal, shm)} == {
            p.name: "0o600" for p in (db, wal, shm)
        }
        assert mode(db.parent) == 0o700  # the folder runwatch created
    finally:
        store.dispose()


def test_an_existing_database_keeps_its_mode(tmp_path: Path, loose_umask: None) -> None:
    db = tmp_path / "shared.db"
    db.touch(mode=0o640)
    store = open_store(f"sqlite:///{db}", migrate=True)
    store.dispose()
    assert mode(db) == 0o640


def secret_file(folder: Path, name: str, value: str, file_mode: int) -> Path:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(file_mode)
    return path


@pytest.mark.parametrize("file_mode", [0o644, 0o604, 0o666, 0o444])
def test_a_world_readable_secret_file_is_refused(tmp_path: Path, file_mode: int) -> None:
    path = secret_file(tmp_path, "smtp-password", "hunter2-smtp", file_mode)
    smtp = SmtpSettings(username="runwatch", password_file=path)
    with pytest.raises(ConfigError) as caught:
        smtp.secret()
    assert caught.value.key == "smtp.password_file"
    assert str(path) in str(caught.value) and "readable by everyone" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_group_readable_is_refused_unless_the_group_is_runwatchs_own(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "token", "metrics-token-1", 0o640)
    auth = EndpointAuth(bearer_token_file=path)
    assert auth.secret() == "metrics-token-1"  # our own group (Kubernetes fsGroup)
    foreign = next(
        (gid for gid in range(1, 60000) if gid not in {os.getegid(), *os.getgroups()}), None
    )
    if foreign is None or os.geteuid() != 0:
        pytest.skip("changing a file's group to a foreign one needs root")
    os.chown(path, -1, foreign)
    with pytest.raises(ConfigError) as caught:
        auth.secret()
    assert caught.value.key == "metrics.auth.bearer_token_file"
    assert f"readable by group {foreign}" in str(caught.value)


def test_a_symlinked_mount_is_judged_by_its_target(tmp_path: Path) -> None:
    """A Kubernetes Secret volume: the file is a link into ..data/, whose mode counts."""
    data = tmp_path / "..data"
    data.mkdir()
    target = secret_file(data, "hook-secret", "whsec-abcdef", 0o644)
    link = tmp_path / "hook-secret"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="readable by everyone"):
        Settings.model_validate(
            {"receivers": {"chat": {"webhook": {"url": "http://h/x", "secret_file": str(link)}}}}
        ).secret_values()
    target.chmod(0o400)
    settings = Settings.model_validate(
        {"receivers": {"chat": {"webhook": {"url": "http://h/x", "secret_file": str(link)}}}}
    )
    assert "whsec-abcdef" in settings.secret_values()


def test_config_check_and_serve_refuse_a_readable_secret_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "kafka-password", "Endpoint=sb://x/;SharedAccessKey=k", 0o644)
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_username: $ConnectionString\n"
        f"  sasl_password_file: {path}\n"
    )
    result = runwatch("config", "check", str(config))
    assert result.returncode == 1, result
    assert "kafka.sasl_password_file" in result.stderr and str(path) in result.stderr
    assert "chmod 600" in result.stderr
    path.chmod(0o600)
    assert runwatch("config", "check", str(config)).returncode == 0
    assert load_settings(config).kafka.client_options()["sasl_plain_password"].startswith("End")
