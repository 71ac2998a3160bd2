"""Email over aiosmtplib: safe headers, stable Message-IDs, threading, a connection pool.

Run names, experiments and tags are user-controlled and end up in the subject: every control
character (CR and LF above all) is collapsed to a space before a header is set, so no value
can start a header of its own; the stdlib encodes non-ASCII as RFC 2047 encoded words.

Messages are written directly as the bytes the stdlib's compat32 classes (MIMEMultipart of
two MIMEText parts) would flatten to, headers folded by the same policy: EmailMessage parses
every header it is given back into a token tree (590 us per mail), and even compat32's
Message re-parses its Content-Type on every parameter read and its generator compiles a
regular expression per mail to search the text for a random boundary (see build_message).
Headers need no parsing: every value was sanitised above, and addresses come from the config.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.policy import Compat32
from email.utils import format_datetime, formataddr, parseaddr

import aiosmtplib

from consumers.config.receivers import SmtpSettings
from consumers.model.errors import ConfigError, SendError

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def header_text(value: str, limit: int = 200) -> str:
    return _CONTROL.sub(" ", value).strip()[:limit]


def _subject(value: str) -> str | Header:
    """ASCII as is; anything else as RFC 2047 encoded words, folded by the generator."""
    text = header_text(value)
    return text if text.isascii() else Header(text, "utf-8", header_name="Subject")


def _addresses(values: Sequence[str]) -> str:
    """Display names may be non-ASCII; only they are encoded, never the address itself."""
    return ", ".join(formataddr(parseaddr(header_text(value)), charset="utf-8") for value in values)


class _Policy(Compat32):
    """compat32 with CRLF, and a short ASCII header written as is: the stdlib folds every
    header through email.header.Header (~20 us each), for lines that need no folding."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if isinstance(value, str) and value.isascii() and len(name) + len(value) < 76:
            return f"{name}: {value}\r\n".encode("ascii")
        return super().fold_binary(name, value)


_POLICY = _Policy(linesep="\r\n")


@functools.lru_cache(maxsize=1024)
def _bare(address: str) -> str:
    """The envelope address of a configured `Name <addr>`."""
    return parseaddr(header_text(address))[1]


@dataclass(frozen=True, slots=True)
class Mail:
    """What goes over SMTP: the envelope and the message as bytes, made once (not again on a
    retry), without aiosmtplib re-parsing the addresses out of the headers."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


_NOT_BCHARS = re.compile(r"[^0-9A-Za-z]")
_PART_HEADERS = {
    subtype: b"".join(
        _POLICY.fold_binary(name, value)
        for name, value in (
            ("Content-Type", f'text/{subtype}; charset="utf-8"'),
            ("MIME-Version", "1.0"),
            ("Content-Transfer-Encoding", "base64"),
        )
    )
    for subtype in ("plain", "html")
}


def _boundary(notification_id: str) -> str:
    """Both parts are base64, whose lines hold only [A-Za-z0-9+/=], and their headers
    start with a letter: no line of them can begin with "--=_", so this boundary needs no
    search of the text (the stdlib generator's random one compiles a regular expression
    per mail to search it: 0.3-1 ms, the largest single cost of a burst)."""
    return f"=_runwatch_{_NOT_BCHARS.sub('', notification_id)[:40]}"


@functools.lru_cache(maxsize=256)
def _configured(addresses: tuple[str, ...]) -> str:
    """Addresses from the config, parsed and encoded once, not per mail."""
    return _addresses(addresses)


def _part(subtype: str, text: str) -> bytes:
    """A text part as the stdlib writes MIMEText(text, subtype, "utf-8"): base64 in lines of
    76 characters."""
    body = base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")
    return _PART_HEADERS[subtype] + b"\r\n" + body


def build_message(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    notification_id: str,
    fingerprint: str,
    followup: bool,
    domain: str,
) -> Mail:
    """The first mail of an alert takes the alert's own Message-ID; follow-ups reply to it,
    so mail clients thread them under the first.

    Written directly, byte for byte what the stdlib's MIMEMultipart("alternative") of two
    utf-8 MIMEText parts flattens to with the policy above (tests/test_email_message.py holds
    it to that): the stdlib's Message parses its own Content-Type back on every read of a
    parameter, and its generator searches the text for its boundary, ~0.3 ms a mail where
    this takes ~0.05."""
    boundary = _boundary(notification_id)
    thread = f"<alert-{fingerprint}@{domain}>"
    headers: list[tuple[str, str | Header]] = [
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
        ("MIME-Version", "1.0"),
        ("From", _configured((sender,))),
        ("To", _configured(tuple(to))),
    ]
    if cc:
        headers.append(("Cc", _configured(tuple(cc))))
    headers += [
        ("Subject", _subject(rendered.subject)),
        ("Date", format_datetime(datetime.now(UTC))),
    ]
    if followup:
        headers += [
            ("Message-ID", f"<{notification_id}@{domain}>"),
            ("In-Reply-To", thread),
            ("References", thread),
        ]
    else:
        headers.append(("Message-ID", thread))
    headers += [
        ("X-Runwatch-Notification-Id", notification_id),
        ("Auto-Submitted", "auto-generated"),
    ]
    delimiter = f"--{boundary}\r\n".encode("ascii")
    data = b"".join(
        (
            *(_POLICY.fold_binary(name, value) for name, value in headers),  # type: ignore[arg-type]
            b"\r\n",
            delimiter,
            _part("plain", rendered.text),
            b"\r\n",
            delimiter,
            _part("html", rendered.html),
            b"\r\n",
            f"--{boundary}--\r\n".encode("ascii"),
        )
    )
    return Mail(_bare(sender), tuple(_bare(r) for r in (*to, *cc)), data)


def _classify(exc: Exception) -> SendError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        code = min(codes) if codes else 550
        return SendError(f"smtp_{code // 100}xx", str(exc), retriable=code < 500)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPServerDisconnected
    ):
        code = exc.code
        if 400 <= code < 500:
            return SendError("smtp_4xx", f"{code} {exc.message}", retriable=True)
        if code >= 500:
            return SendError("smtp_5xx", f"{code} {exc.message}", retriable=False)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return SendError("timeout", str(exc) or "SMTP timeout", retriable=True)
    return SendError("connection", f"{type(exc).__name__}: {exc}", retriable=True)


def _tls_failure(exc: BaseException, smtp: SmtpSettings) -> SendError | None:
    """A connect error that is about TLS (aiosmtplib wraps the ssl error it met): said as
    such, so the notification's reason tells what to fix."""
    where = f"{smtp.host}:{smtp.port}"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            if isinstance(seen, ssl.SSLCertVerificationError):
                detail = f"certificate verify failed: {seen.verify_message}"
            else:
                detail = seen.reason or str(seen)
            hint = "" if smtp.ca_file else " (a private CA: set smtp.ca_file)"
            return SendError("tls", f"TLS with {where} failed: {detail}{hint}", retriable=True)
        seen = seen.__cause__ or seen.__context__
    if smtp.tls_mode == "starttls-required" and "STARTTLS" in str(exc).upper():
        return SendError(
            "tls",
            f"{where} does not offer STARTTLS and smtp.tls_mode is starttls-required: "
            "nothing was sent",
            retriable=True,
        )
    return None


def tls_context(smtp: SmtpSettings) -> ssl.SSLContext:
    """Verification on by default: the system's CAs, or `ca_file` (a private CA or a
    self-signed server). `validate_certs: false` is the explicit, logged way out."""
    try:
        context = ssl.create_default_context(
            cafile=str(smtp.ca_file) if smtp.ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("smtp.ca_file", f"cannot load {smtp.ca_file}: {exc}") from None
    if not smtp.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class EmailSender:
    """Up to `smtp.connections` SMTP connections, reused between mails (a new connection per
    mail measured ~25% slower) and replaced when a server drops them."""

    def __init__(self, smtp: SmtpSettings) -> None:
        self._smtp = smtp
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(smtp.connections)
        self._context: ssl.SSLContext | None = None  # made on first use (reads ca_file)
        if not smtp.validate_certs and smtp.tls_mode != "none":
            log.warning(
                "smtp.validate_certs is false: the SMTP server's certificate is not checked"
            )

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self._smtp
        mode = smtp.tls_mode
        # start_tls None: aiosmtplib upgrades when the server offers STARTTLS (opportunistic)
        start_tls = {"starttls-required": True, "starttls-opportunistic": None}.get(mode, False)
        if self._context is None and mode != "none":
            try:
                self._context = tls_context(smtp)
            except ConfigError as exc:  # ca_file gone or broken since start-up
                raise SendError("tls", str(exc), retriable=True) from exc
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            use_tls=mode == "implicit",
            start_tls=start_tls,
            validate_certs=smtp.validate_certs,
            tls_context=self._context,
            timeout=smtp.timeout_s,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            failure = _tls_failure(exc, smtp)
            if failure is not None:
                raise failure from exc
            raise
        if smtp.username:
            encrypted = client.get_transport_info("ssl_object") is not None
            if not encrypted and not smtp.allow_plaintext_auth:
                # QUIT, and wait for it: a bare close() leaves the transport to be finished
                # by the loop, which may be gone by then (an unclosed-transport warning)
                await _close(client)
                raise SendError(
                    "plaintext_auth",
                    f"{smtp.host}:{smtp.port} offers no TLS (smtp.tls_mode {mode}), so the "
                    "password was not sent: use a server with STARTTLS or implicit TLS, or "
                    "set smtp.allow_plaintext_auth: true",
                    retriable=True,
                )
            try:
                password = smtp.secret()
            except ConfigError as exc:
                await _close(client)
                raise SendError("config", str(exc), retriable=True) from exc
            if password is not None:
                await client.login(smtp.username, password)
        return client

    async def send(self, mail: Mail) -> None:
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            for fresh in (False, True):
                try:
                    if client is None or fresh or not client.is_connected:
                        await _close(client)
                        client = await self._connect()
                    await client.sendmail(mail.sender, mail.recipients, mail.data)
                    self._idle.append(client)
                    return
                except aiosmtplib.SMTPServerDisconnected as exc:
                    if fresh:  # a new connection dropped too: the server is going away
                        await _close(client)
                        raise _classify(exc) from exc
                    # a pooled connection the server had closed: try once on a new one
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    await _close(client)
                    raise _classify(exc) from exc

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client)


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is None or not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()
