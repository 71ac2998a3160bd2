"""build_message writes a mail directly; it must be byte for byte what the stdlib's
MIMEMultipart("alternative") of two utf-8 MIMEText parts flattens to (the reference below),
for every subject, body, address list and threading case, and parse back to the same text."""

from __future__ import annotations

import email
import email.policy
import io
import re
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.notify import email as mail_module
from consumers.notify.email import RenderedEmail, build_message

_DATE = re.compile(rb"^Date: [^\r]*\r\n", re.MULTILINE)


def reference(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: list[str],
    cc: list[str],
    notification_id: str,
    fingerprint: str,
    followup: bool,
    domain: str,
) -> bytes:
    boundary = mail_module._boundary(notification_id)
    message = MIMEMultipart("alternative", boundary=boundary)
    message["From"] = mail_module._addresses([sender])
    message["To"] = mail_module._addresses(to)
    if cc:
        message["Cc"] = mail_module._addresses(cc)
    message["Subject"] = mail_module._subject(rendered.subject)  # type: ignore[assignment]
    message["Date"] = "x"
    thread = f"<alert-{fingerprint}@{domain}>"
    if followup:
        message["Message-ID"] = f"<{notification_id}@{domain}>"
        message["In-Reply-To"] = thread
        message["References"] = thread
    else:
        message["Message-ID"] = thread
    message["X-Runwatch-Notification-Id"] = notification_id
    message["Auto-Submitted"] = "auto-generated"
    message.attach(MIMEText(rendered.text, "plain", "utf-8"))
    message.attach(MIMEText(rendered.html, "html", "utf-8"))
    with io.BytesIO() as out:
        BytesGenerator(out, policy=mail_module._POLICY).flatten(message)
        return out.getvalue()


def without_date(data: bytes) -> bytes:
    return _DATE.sub(b"Date: x\r\n", data, count=1)


CASES = [
    ("[runwatch] Failed: run-1", "text\n", "<p>html</p>", [], False),
    ("", "", "", [], True),
    ("Échec: entraînement «ü» " * 8, "ligne ü\n-- x\n" * 50, "<b>é</b>" * 400, [], False),
    ("a" * 300, "x" * 10_000, "y", ["Ops Team <ops@example.com>", "b@example.com"], True),
    ("tab\tand\r\nnewline", "\r\n\n\r", "--=_runwatch_abc\n", ["Zoë <z@example.com>"], False),
]


@pytest.mark.parametrize(("subject", "text", "html", "cc", "followup"), CASES)
def test_the_direct_writer_matches_the_stdlib_byte_for_byte(
    subject: str, text: str, html: str, cc: list[str], followup: bool
) -> None:
    args = {
        "sender": "runwatch <runwatch@localhost>",
        "to": ["Ünïcode Oncall <oncall@example.com>", "second@example.com"],
        "cc": cc,
        "notification_id": "0f3c-9a1b_42",
        "fingerprint": "ab12",
        "followup": followup,
        "domain": "runwatch.local",
    }
    rendered = RenderedEmail(subject, text, html)
    mail = build_message(rendered, **args)  # type: ignore[arg-type]
    assert without_date(mail.data) == reference(rendered, **args)  # type: ignore[arg-type]
    parsed = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    plain, rich = parsed.iter_parts()
    assert isinstance(plain, EmailMessage) and isinstance(rich, EmailMessage)
    assert (plain.get_content(), rich.get_content()) == (text, html)
    assert mail.recipients == (
        "oncall@example.com",
        "second@example.com",
        *[email.utils.parseaddr(c)[1] for c in cc],
    )


@settings(max_examples=60, deadline=None)
@given(
    subject=st.text(max_size=300),
    text=st.text(max_size=2000),
    html=st.text(max_size=500),
    notification_id=st.text(alphabet="0123456789abcdef-", min_size=1, max_size=40),
)
def test_any_text_writes_the_same_bytes_as_the_stdlib(
    subject: str, text: str, html: str, notification_id: str
) -> None:
    args = {
        "sender": "runwatch <runwatch@localhost>",
        "to": ["oncall@example.com"],
        "cc": [],
        "notification_id": notification_id,
        "fingerprint": "ff",
        "followup": True,
        "domain": "d.example",
    }
    rendered = RenderedEmail(subject, text, html)
    mail = build_message(rendered, **args)  # type: ignore[arg-type]
    assert without_date(mail.data) == reference(rendered, **args)  # type: ignore[arg-type]
