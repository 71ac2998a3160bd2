"""requirements.lock and requirements-dev.lock agree with pyproject.toml: every dependency is
pinned, within its declared range (so above the advisory floors), with hashes; and the dev lock
pins what the image ships. A failure here means `make lock` was not run after an edit."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", re.MULTILINE)


def pins(path: Path) -> dict[str, str]:
    """name -> version; every pin is followed by its hashes (pip then refuses anything else)."""
    text = path.read_text()
    assert "@ file:" not in text, f"{path.name} names a local path"
    matches = list(PIN.finditer(text))
    found = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        entry = text[match.end() : following.start() if following else len(text)]
        assert "--hash=sha256:" in entry, f"{path.name}: {match[1]} has no hash"
        found[canonicalize_name(match[1])] = match[2]
    return found


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def test_every_dependency_is_locked_within_its_range_with_hashes() -> None:
    runtime, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    meta = project()
    spec = meta["project"]
    build = meta["build-system"]
    assert isinstance(spec, dict) and isinstance(build, dict)
    declared = [Requirement(r) for r in [*spec["dependencies"], *build["requires"]]]
    dev_only = [Requirement(r) for r in spec["optional-dependencies"]["dev"]]
    for req, lock in [*((r, runtime) for r in declared), *((r, dev) for r in dev_only)]:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not in the lock: run `make lock`"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"{req.name}=={lock[name]} is outside {req.specifier}: run `make lock`"
        )
    # The tests run exactly the versions the image ships.
    assert {name: dev[name] for name in runtime} == runtime


def test_floors_exclude_the_releases_with_known_advisories() -> None:
    """The last affected release of each advisory in docs/development.md is refused."""
    runtime = pins(ROOT / "requirements.lock")
    spec = project()["project"]
    assert isinstance(spec, dict)
    floors = {canonicalize_name(Requirement(r).name): Requirement(r) for r in spec["dependencies"]}
    for name, minimum in {
        "jinja2": "3.1.5",
        "aiohttp": "3.14.3",
        "aiosmtplib": "5.1.2",
        "aiosmtpd": "1.4.5",
        "orjson": "3.11.5",
    }.items():
        assert not floors[name].specifier.contains(minimum), f"{name} floor admits {minimum}"
        assert floors[name].specifier.contains(runtime[name])
