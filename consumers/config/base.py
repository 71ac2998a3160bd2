"""What every section of the config shares: frozen, unknown keys refused, and secrets read
inline or from a file that only runwatch may read (registered for redaction either way)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
)

from consumers.model import redact
from consumers.model.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_private(file: Path, key: str) -> None:
    """A secret file must not be readable by others: refused when world-readable, and when
    group-readable unless the group is runwatch's own (Kubernetes with fsGroup, which turns
    a Secret volume's defaultMode 0400 into 0440 for that group, runAsGroup here)."""
    try:
        info = file.stat()  # follows symlinks: a Kubernetes mount is a link to the data
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {file}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    own_group = hasattr(os, "getegid") and info.st_gid in {os.getegid(), *os.getgroups()}
    if mode & stat.S_IROTH or (mode & stat.S_IRGRP and not own_group):
        who = "everyone" if mode & stat.S_IROTH else f"group {info.st_gid}"
        raise ConfigError(
            key,
            f"secret file {file} is readable by {who} (mode {mode:04o}): "
            f"chmod 600 {file} (in Kubernetes: defaultMode: 0400 on the Secret volume)",
        )


def read_secret(value: SecretStr | None, file: Path | None, key: str) -> str | None:
    """A secret given inline (usually through the environment) or as a file (Kubernetes
    Secret mounts); the file wins so that rotating it needs no restart of the config.
    Every value read is registered for redaction, so it never reaches a log line."""
    if file is not None:
        check_private(file, key)
        try:
            secret = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {file}: {exc.strerror}") from None
        redact.register(secret)
        return secret
    return value.get_secret_value() if value is not None else None
