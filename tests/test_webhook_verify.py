"""The receiver-side verifier of webhook signatures: valid, tampered, replayed and malformed
headers. Whatever a sender puts in the header, `verify` answers True or False, never raises."""

from __future__ import annotations

import time

import pytest

from consumers.notify.webhook import sign, verify

SECRET = "whsec-test-secret"
BODY = b'{"alert":"run-failed","run":"r1"}'
NOW = 1_800_000_000


def header(timestamp: int = NOW, body: bytes = BODY, secret: str = SECRET) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def test_a_fresh_signature_over_the_same_body_verifies() -> None:
    assert verify(SECRET, header(), BODY, now=NOW)
    assert verify(SECRET, header(NOW - 299), BODY, now=NOW)
    assert verify(SECRET, header(NOW + 299), BODY, now=NOW)  # small clock skew
    live = int(time.time())
    assert verify(SECRET, header(live), BODY)  # the real clock by default


def test_tampered_body_signature_timestamp_or_secret_fail() -> None:
    good = header()
    assert not verify(SECRET, good, BODY + b" ", now=NOW)
    assert not verify(SECRET, good, BODY.replace(b"r1", b"r2"), now=NOW)
    assert not verify("another-secret", good, BODY, now=NOW)
    digest = sign(SECRET, NOW, BODY)
    flipped = ("0" if digest[0] != "0" else "1") + digest[1:]
    assert not verify(SECRET, f"t={NOW},v1={flipped}", BODY, now=NOW)
    assert not verify(SECRET, f"t={NOW},v1={digest.upper()}", BODY, now=NOW)
    # the timestamp is signed: moving it forward to look fresh breaks the signature
    assert not verify(SECRET, f"t={NOW + 1},v1={digest}", BODY, now=NOW + 1)


def test_a_replayed_request_with_an_old_timestamp_fails() -> None:
    old = header(NOW - 301)
    assert not verify(SECRET, old, BODY, now=NOW)
    assert verify(SECRET, old, BODY, now=NOW, tolerance_s=600)
    assert not verify(SECRET, header(NOW + 301), BODY, now=NOW)  # from the future


@pytest.mark.parametrize(
    "value",
    [
        "",
        ",",
        "=",
        "t=",
        f"t={NOW}",
        f"v1={sign(SECRET, NOW, BODY)}",
        f"t={NOW},v1=",
        f"t=,v1={sign(SECRET, NOW, BODY)}",
        f"t=abc,v1={sign(SECRET, NOW, BODY)}",
        f"t={NOW}.5,v1={sign(SECRET, NOW, BODY)}",
        f"t=1e9,v1={sign(SECRET, NOW, BODY)}",
        f"t={'9' * 5000},v1={sign(SECRET, NOW, BODY)}",
        f"t=-{NOW},v1={sign(SECRET, NOW, BODY)}",
        f"t={NOW},v1=ü{sign(SECRET, NOW, BODY)[1:]}",  # non-ASCII: TypeError before
        f"t={NOW},v1=\u0661\u0662",
        f"t=\u0661\u0662\u0663,v1={sign(SECRET, NOW, BODY)}",  # Arabic-Indic digits
        f"t={NOW},v1={sign(SECRET, NOW, BODY)}\x00",
        f"t={NOW} v1={sign(SECRET, NOW, BODY)}",
        f"t={NOW};v1={sign(SECRET, NOW, BODY)}",
        f"t={NOW},v0={sign(SECRET, NOW, BODY)}",  # wrong scheme
        f"t={NOW},v2={sign(SECRET, NOW, BODY)}",
        f"t={NOW},sha256={sign(SECRET, NOW, BODY)}",
        f"sha256={sign(SECRET, NOW, BODY)}",  # another service's format
        f"T={NOW},V1={sign(SECRET, NOW, BODY)}",
        "garbage",
        "t==,v1==",
    ],
)
def test_malformed_headers_are_false_never_an_exception(value: str) -> None:
    assert verify(SECRET, value, BODY, now=NOW) is False


def test_surrounding_spaces_and_extra_parts_are_tolerated() -> None:
    digest = sign(SECRET, NOW, BODY)
    assert verify(SECRET, f"t={NOW}, v1={digest}", BODY, now=NOW)
    assert verify(SECRET, f"t={NOW},v1={digest},v0=ignored", BODY, now=NOW)
    # several v1 values (a receiver rotating secrets): any one may match
    other = sign("old-secret", NOW, BODY)
    assert verify(SECRET, f"t={NOW},v1={other},v1={digest}", BODY, now=NOW)
    assert not verify(SECRET, f"t={NOW},v1={other},v1={other}", BODY, now=NOW)


def test_non_string_arguments_are_refused_cleanly() -> None:
    assert verify(SECRET, None, BODY, now=NOW) is False  # type: ignore[arg-type]
    assert verify(SECRET, header().encode(), BODY, now=NOW) is False  # type: ignore[arg-type]
