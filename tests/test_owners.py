"""Owner routing: a producer chooses the run's TriggeringUserName, never a recipient. Only the
mapped (`owners.addresses`) and allowed (`owners.allow` / `owners.allow_file`) user names are
mailed; the others go to `owners.fallback` (or are dead, `unknown_owner`) and are counted;
no `%`, `!`, quote, `@`, whitespace or look-alike letter reaches an address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from consumers.config.noise import NoiseSettings, OwnerSettings
from consumers.config.settings import load_settings
from consumers.model.errors import ConfigError
from consumers.model.receivers import is_address, owner_address, owner_receiver
from consumers.noise.owners import resolve
from consumers.noise.policy import NoisePolicy
from consumers.store import Store
from consumers.store.schema import notifications
from tests.conftest import wait_for
from tests.noise_harness import Bench
from tests.servers import SmtpServer

CYRILLIC_A = "\u0430"  # looks like "a"
HOSTILE = (
    "all-staff",
    "a%b",
    "a%b@evil",
    '"x"@y',
    "bob\r\nBcc: z@evil.example",
    "bob\n",
    " bob",
    "bob ",
    "b!ob",
    "bob@corp.example",
    f"{CYRILLIC_A}lice",
    "\uff41lice",  # fullwidth a
    "alice\u200b",  # zero-width space
    ".bob",
    "bo..b",
    "x" * 65,
    "",
)


def owners(**values: Any) -> OwnerSettings:
    return OwnerSettings.model_validate(values)


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("alice@lab.example", True),
        ("first.last+ml@corp.example", True),
        ("a_b-c@sub.corp.example", True),
        ("a%b@evil.example", False),
        ('"x"@y.example', False),
        ("a!b@corp.example", False),
        ("a@b@corp.example", False),
        ("a b@corp.example", False),
        ("bob\n@corp.example", False),
        ("bob@corp.example\n", False),
        (f"{CYRILLIC_A}lice@corp.example", False),
        ("alice@corp", False),
        ("alice@-corp.example", False),
        (".alice@corp.example", False),
        ("al..ice@corp.example", False),
        ("x" * 65 + "@corp.example", False),
    ],
)
def test_only_plain_addresses_are_addresses(address: str, ok: bool) -> None:
    assert is_address(address) is ok
    assert (owner_address(f"owner:{address}") == address) is ok  # a stored row, read back
    assert owner_receiver(address) == (f"owner:{address}" if ok else "owner")


def test_mapped_and_allowed_names_are_mailed_the_rest_are_unknown() -> None:
    config = owners(
        addresses={"Carol Smith": "carol@lab.example"},
        domain="corp.example",
        allow="[a-z]+",
        fallback="ml-oncall",
    )
    assert resolve(config, "Carol Smith").receiver == "owner:carol@lab.example"
    assert resolve(config, "bob").receiver == "owner:bob@corp.example"
    assert not resolve(config, "bob").unknown
    for user in (*HOSTILE, None):
        route = resolve(config, user)
        assert (route.receiver, route.unknown) == ("ml-oncall", True), repr(user)


def test_an_allow_everything_regex_still_never_makes_a_hostile_address() -> None:
    config = owners(domain="corp.example", allow=".*")
    assert resolve(config, "all-staff").receiver == "owner:all-staff@corp.example"  # allowed
    for user in HOSTILE[1:]:
        route = resolve(config, user)
        assert (route.receiver, route.unknown) == ("owner", True), repr(user)


def test_the_allow_file(tmp_path: Path) -> None:
    listed = tmp_path / "owners.txt"
    listed.write_text("# people who may be mailed\nbob\n\n  dave  \nfirst.last\n")
    config = owners(domain="corp.example", allow_file=str(listed))
    assert resolve(config, "bob").receiver == "owner:bob@corp.example"
    assert resolve(config, "dave").receiver == "owner:dave@corp.example"
    assert resolve(config, "first.last").receiver == "owner:first.last@corp.example"
    assert resolve(config, "all-staff") == resolve(config, "eve")
    assert resolve(config, "eve").receiver == "owner"
    both = owners(domain="corp.example", allow_file=str(listed), allow="svc-[a-z]+")
    assert resolve(both, "svc-train").receiver == "owner:svc-train@corp.example"
    assert resolve(both, "bob").receiver == "owner:bob@corp.example"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"domain": "corp.example"}, "owners.allow or owners.allow_file"),
        ({"allow": "[a-z]+"}, "need owners.domain"),
        ({"domain": "corp.example", "allow": "[a-z"}, "not a regular expression"),
        ({"domain": "corp example", "allow": "x"}, "not a mail domain"),
        ({"domain": "corp.example\n", "allow": "x"}, "not a mail domain"),
        ({"addresses": {"x": "a%b@evil.example"}}, "not a plain email address"),
        ({"addresses": {"x": '"x"@y.example'}}, "not a plain email address"),
        ({"fallback": "owner"}, "fallback"),
        ({"domain": "corp.example", "allow_file": "/nonexistent/owners.txt"}, "cannot read"),
    ],
)
def test_owner_config_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        owners(**values)


def test_a_bad_line_in_the_allow_file_is_named(tmp_path: Path) -> None:
    listed = tmp_path / "owners.txt"
    listed.write_text("bob\na%b\n")
    with pytest.raises(ValidationError, match=r"owners.txt:2: not a plain user name: 'a%b'"):
        owners(domain="corp.example", allow_file=str(listed))


def test_the_old_domain_only_config_is_refused_at_start_up(tmp_path: Path) -> None:
    """`domain` alone mailed any user name at that domain: `all-staff` -> all-staff@corp."""
    path = tmp_path / "runwatch.yaml"
    path.write_text("noise:\n  owners: {domain: corp.example}\n")
    with pytest.raises(ConfigError, match=r"noise.owners"):
        load_settings(path)


def test_the_fallback_must_be_a_configured_receiver() -> None:
    policy = NoisePolicy(NoiseSettings.model_validate({"owners": {"fallback": "nobody"}}))
    with pytest.raises(ConfigError, match=r"noise\.owners\.fallback"):
        policy.check_receivers({"mail"})
    policy.check_receivers({"mail", "nobody"})


# -- against the real dispatcher and SMTP server ----------------------------------------------


def unknown_owners(bench: Bench, outcome: str) -> float:
    value = bench.metrics.registry.get_sample_value(
        "runwatch_owner_unknown_total", {"outcome": outcome}
    )
    return value or 0.0


def test_hostile_user_names_reach_the_fallback_never_an_address(
    store: Store, smtp: SmtpServer, tmp_path: Path
) -> None:
    listed = tmp_path / "owners.txt"
    listed.write_text("bob\n")
    noise = {
        "owners": {
            "addresses": {"alice": "alice@lab.example"},
            "domain": "corp.example",
            "allow_file": str(listed),
            "fallback": "mail",
        }
    }
    bench = Bench(store, noise, smtp=smtp)
    users = ("alice", "bob", *HOSTILE)
    bench.write(*(bench.alert(f"r{i}", "owner", user=user) for i, user in enumerate(users)))
    states = bench.states()
    assert states[("r0", "owner:alice@lab.example")] == ("pending", None)
    assert states[("r1", "owner:bob@corp.example")] == ("pending", None)
    for i in range(2, len(users)):
        assert states[(f"r{i}", "mail")] == ("pending", None), repr(users[i])
    assert len(states) == len(users)
    assert unknown_owners(bench, "fallback") == len(HOSTILE)
    with bench:
        wait_for(lambda: len(smtp.mails) == len(users), timeout=20)
    recipients = sorted({to for mail in smtp.mails for to in mail.envelope_to})
    assert recipients == ["alice@lab.example", "bob@corp.example", "oncall@example.com"]
    for mail in smtp.mails:
        assert mail.message["Bcc"] is None
        assert mail.message["To"] in recipients


def test_without_a_fallback_an_unknown_owner_is_dead_and_counted(store: Store) -> None:
    noise = {"owners": {"domain": "corp.example", "allow": "[a-z]+"}}
    bench = Bench(store, noise)
    bench.write(bench.alert("r1", "owner", user="all-staff"), bench.alert("r2", "owner"))
    assert bench.states() == {
        ("r1", "owner"): ("dead", "unknown_owner"),
        ("r2", "owner"): ("dead", "unknown_owner"),
    }
    assert unknown_owners(bench, "dead") == 2
    bench.write(bench.alert("r1", "owner", user="all-staff"))  # a replay: nothing new, no count
    assert unknown_owners(bench, "dead") == 2


def test_a_stored_owner_row_with_a_hostile_address_is_not_sent(
    store: Store, smtp: SmtpServer
) -> None:
    """Rows are checked again at send time (a row written by an older version)."""
    noise = {"owners": {"addresses": {"alice": "alice@lab.example"}}}
    bench = Bench(store, noise, smtp=smtp)
    bench.write(bench.alert("r1", "owner", user="alice"))
    with store.engine.begin() as conn:
        n = notifications
        conn.execute(update(n).values(receiver="owner:a%b@evil.example"))
    with bench:
        wait_for(lambda: bench.rows()[0].state == "dead", timeout=15)
    assert bench.rows()[0].reason == "unknown_receiver"
    assert smtp.mails == []
