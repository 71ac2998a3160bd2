"""SMTP transport security against a real aiosmtpd with a self-signed certificate, in every
`smtp.tls_mode`: the mail and the password travel encrypted when they should, AUTH is never
sent in cleartext unless allowed, certificates are verified (and trusted through ca_file)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumers.config.receivers import SmtpSettings
from consumers.config.settings import Settings, load_settings
from consumers.dispatch.dispatcher import Dispatcher
from consumers.model.errors import ConfigError, SendError
from consumers.notify.email import EmailSender, Mail
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.outbox import Outbox
from consumers.telemetry.metrics import Metrics
from tests.conftest import wait_for
from tests.test_dispatcher import alert, event
from tests.tls_smtp import Certificate, TlsSmtpServer, make_certificate

PASSWORD = "smtp-pass-Zq81"
MAIL = Mail("runwatch@example.com", ("oncall@example.com",), b"Subject: hi\r\n\r\nbody\r\n")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls-other"), "other")


def smtp_settings(server: TlsSmtpServer, **values: Any) -> SmtpSettings:
    return SmtpSettings.model_validate(
        {"host": "127.0.0.1", "port": server.port, "timeout_s": 5, **values}
    )


def send(settings: SmtpSettings) -> None:
    async def go() -> None:
        sender = EmailSender(settings)
        try:
            await sender.send(MAIL)
        finally:
            await sender.close()

    asyncio.run(go())


def refused(settings: SmtpSettings) -> SendError:
    with pytest.raises(SendError) as caught:
        send(settings)
    return caught.value


def test_the_reproduced_case_auth_goes_over_starttls_when_the_server_offers_it(
    cert: Certificate,
) -> None:
    """Only keys that existed before: username set, the server advertises STARTTLS. Before,
    runwatch sent AUTH PLAIN and the mail in cleartext."""
    with TlsSmtpServer(cert, "starttls") as server:
        send(smtp_settings(server, username="runwatch", password=PASSWORD, validate_certs=False))
        assert [login.encrypted for login in server.logins] == [True]
        assert [mail.encrypted for mail in server.mails] == [True]


def test_opportunistic_is_the_default_and_verifies_the_certificate(
    cert: Certificate, other_cert: Certificate
) -> None:
    with TlsSmtpServer(cert, "starttls") as server:
        trusted = smtp_settings(server, username="runwatch", password=PASSWORD, ca_file=cert.cert)
        assert trusted.tls_mode == "starttls-opportunistic"
        send(trusted)
        assert server.logins[0].encrypted and server.logins[0].password == PASSWORD
        assert server.mails[0].encrypted
        # offered STARTTLS with a certificate nobody vouches for: no fallback to cleartext
        error = refused(smtp_settings(server, username="runwatch", password=PASSWORD))
        assert error.reason == "tls" and error.retriable
        assert "certificate verify failed" in error.detail and "ca_file" in error.detail
        error = refused(smtp_settings(server, ca_file=other_cert.cert))
        assert error.reason == "tls"
        assert len(server.logins) == 1 and len(server.mails) == 1


def test_opportunistic_without_starttls_sends_plain_mail_but_never_the_password() -> None:
    with TlsSmtpServer(None, "plain") as server:
        send(smtp_settings(server))  # no credentials: plaintext is what was asked for
        assert [mail.encrypted for mail in server.mails] == [False]
        error = refused(smtp_settings(server, username="runwatch", password=PASSWORD))
        assert error.reason == "plaintext_auth" and error.retriable
        assert "allow_plaintext_auth" in error.detail and PASSWORD not in error.detail
        assert server.logins == [] and len(server.mails) == 1


def test_starttls_required(cert: Certificate) -> None:
    with TlsSmtpServer(None, "plain") as plain:
        error = refused(smtp_settings(plain, tls_mode="starttls-required", ca_file=cert.cert))
        assert error.reason == "tls" and "does not offer STARTTLS" in error.detail
        assert plain.mails == [] and plain.logins == []
    with TlsSmtpServer(cert, "starttls") as server:
        error = refused(smtp_settings(server, tls_mode="starttls-required"))
        assert error.reason == "tls" and "certificate verify failed" in error.detail
        required = smtp_settings(
            server,
            tls_mode="starttls-required",
            ca_file=cert.cert,
            username="runwatch",
            password=PASSWORD,
        )
        send(required)
        assert [m.encrypted for m in server.mails] == [True]
        assert [x.encrypted for x in server.logins] == [True]


def test_implicit_tls(cert: Certificate) -> None:
    with TlsSmtpServer(cert, "implicit") as server:
        error = refused(smtp_settings(server, tls_mode="implicit"))
        assert error.reason == "tls" and "certificate verify failed" in error.detail
        send(
            smtp_settings(
                server,
                tls_mode="implicit",
                ca_file=cert.cert,
                username="runwatch",
                password=PASSWORD,
            )
        )
        assert [m.encrypted for m in server.mails] == [True]
        assert [x.encrypted for x in server.logins] == [True]
    with TlsSmtpServer(None, "plain") as plain:  # implicit TLS against a cleartext server
        assert refused(smtp_settings(plain, tls_mode="implicit")).retriable
        assert plain.mails == []


def test_none_never_upgrades_and_auth_needs_the_explicit_allowance(cert: Certificate) -> None:
    with TlsSmtpServer(cert, "starttls") as server:
        error = refused(
            smtp_settings(server, tls_mode="none", username="runwatch", password=PASSWORD)
        )
        assert error.reason == "plaintext_auth" and server.logins == []
        allowed = smtp_settings(
            server,
            tls_mode="none",
            username="runwatch",
            password=PASSWORD,
            allow_plaintext_auth=True,
        )
        send(allowed)
        assert [x.encrypted for x in server.logins] == [False]
        assert [m.encrypted for m in server.mails] == [False]


def test_the_old_keys_are_refused_naming_the_new_one(tmp_path: Path) -> None:
    for old, new in (("starttls", "starttls-required"), ("tls", "implicit")):
        config = tmp_path / f"{old}.yaml"
        config.write_text(f"smtp:\n  host: mail\n  {old}: true\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config)
        assert caught.value.key == f"smtp.{old}"
        assert "smtp.tls_mode" in str(caught.value) and new in str(caught.value)
    with pytest.raises(ConfigError, match=r"smtp\.tls_mode"):
        SmtpSettings.model_validate({"starttls": False})
    config = tmp_path / "bad.yaml"
    config.write_text("smtp:\n  tls_mode: starttls\n")
    with pytest.raises(ConfigError, match=r"smtp\.tls_mode"):
        load_settings(config)


def test_a_notification_that_would_send_the_password_in_cleartext_says_why(
    store: Store,
) -> None:
    """Through the dispatcher: the row is retried (the server may start offering TLS) with
    a reason and an error that name the problem, and the password never left."""
    with TlsSmtpServer(None, "plain") as server:
        settings = Settings.model_validate(
            {
                "smtp": {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "username": "runwatch",
                    "password": PASSWORD,
                },
                "receivers": {"mail": {"email": {"to": ["oncall@example.com"]}}},
                "notify": {"backoff_initial_s": 30, "max_age_s": 600},
            }
        )
        ev = event("tls-run")
        store.write_batch([ev], record=recording([alert(ev, "mail")], {"mail": "email"}))
        dispatcher = Dispatcher(store, settings, Metrics(CollectorRegistry()))
        stop = threading.Event()
        thread = dispatcher.start(stop)
        try:
            wait_for(lambda: Outbox(store).list(limit=5)[0].attempts >= 1, timeout=30)
        finally:
            stop.set()
            thread.join(timeout=30)
        row = Outbox(store).list(limit=5)[0]
        assert row.state == "pending" and row.reason == "plaintext_auth"
        assert row.last_error is not None and "allow_plaintext_auth" in row.last_error
        assert server.logins == [] and server.mails == []


def test_a_missing_ca_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "runwatch.yaml"
    config.write_text(f"smtp:\n  ca_file: {tmp_path / 'absent.pem'}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.key == "smtp.ca_file" and "absent.pem" in str(caught.value)
