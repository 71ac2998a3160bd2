"""The HTTP ingest: Event Grid pushes run-status events to `POST <http_ingest.path>`, runwatch
publishes them to the Kafka topic (Kafka stays the spine: the same consumer stores them) and
answers 200 only once the broker acknowledged every message (acks=all).

- Event Grid schema and CloudEvents 1.0, one event or a batch; CloudEvents HTTP binary mode
  too (published in Kafka binary mode). consumers.ingest.http_batch decides what to publish with the
  same `decode` ingest uses, so what is accepted here is what ingest accepts.
- Handshakes: Event Grid's SubscriptionValidationEvent (authenticated like any delivery)
  gets `{"validationResponse": code}`; the CloudEvents webhook abuse protection (OPTIONS
  with `WebHook-Request-Origin`) gets `WebHook-Allowed-Origin` and `WebHook-Allowed-Rate`
  for the configured origins.
- A shared secret, as Event Grid webhook subscriptions can send one: `?code=` (or
  `?access_token=`) in the endpoint URL, or `Authorization: Bearer` set as a delivery
  attribute; compared in constant time; never logged (no access log: it would print the
  query string). Missing: 401; wrong: 403; nothing is published either way.
- Bad input is a 4xx with the reason, never a 5xx: 400 (the dead-letter reason and detail),
  408 (body too slow), 413 (over `max_body_bytes`). A broker that does not acknowledge
  within `publish_timeout_s` is a 503, which Event Grid retries.
- Bounded: body size; request line and headers must arrive within `header_timeout_s` (the
  server's keep-alive timer closes a connection with no complete request), the body within
  `body_timeout_s`.

It runs an aiohttp server on its own thread and event loop; publishing (blocking
kafka-python calls) and decoding run on a small thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from kafka import KafkaProducer
from kafka.errors import KafkaError

from consumers.config.service import HttpIngestSettings, KafkaSettings
from consumers.ingest.http_batch import Batch, Message, Validation, plan
from consumers.ingest.producer import make_producer
from consumers.model.errors import BrokerError, ConfigError, DecodeError, RunwatchError
from consumers.model.limits import IngestLimits
from consumers.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["HttpIngest", "KafkaSink"]

_WORKERS = 4
_MAX_HEADERS = 64
_MAX_FIELD = 8190


class KafkaSink:
    """Publishes a batch and waits for the broker's acknowledgement of every message. The
    producer is made on first use (a broker down at start-up is a 503, not a crash) and
    reconnects quickly once the broker is back."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float) -> None:
        self._kafka = kafka
        self._timeout_s = timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def publish(self, messages: Sequence[Message]) -> None:
        """Raises BrokerError when any message is not acknowledged in time."""
        deadline = time.monotonic() + self._timeout_s
        producer = self._connected()
        try:
            futures = [
                producer.send(self._kafka.topic, key=m.key, value=m.value, headers=list(m.headers))
                for m in messages
            ]
            for future in futures:
                future.get(timeout=max(deadline - time.monotonic(), 0.001))
        except KafkaError as exc:
            # A producer can stay broken after its broker restarted (kafka-python keeps a
            # failed InitProducerId as fatal): the next request gets a new one.
            self._discard(producer)
            raise BrokerError(f"publishing to {self._kafka.topic} failed: {exc}") from exc

    def _connected(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                timeout_ms = int(self._timeout_s * 1000)
                self._producer = make_producer(
                    self._kafka,
                    max_block_ms=timeout_ms,
                    request_timeout_ms=timeout_ms,
                    delivery_timeout_ms=timeout_ms + 5000,
                    reconnect_backoff_max_ms=2000,
                )
            return self._producer

    def _discard(self, producer: KafkaProducer) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None
        producer.close(timeout=0)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


class HttpIngest:
    """`start()` binds and serves on a thread of its own; `stop()` closes it."""

    def __init__(
        self,
        settings: HttpIngestSettings,
        kafka: KafkaSettings,
        limits: IngestLimits,
        metrics: Metrics,
        *,
        sink: KafkaSink | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._max_message_bytes = kafka.max_message_bytes
        self._limits = limits
        self._metrics = metrics
        self._sink = sink or KafkaSink(kafka, settings.publish_timeout_s)
        self._clock = clock
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="http-ingest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.port: int | None = None
        self._secrets()  # a missing or empty secret stops start-up, not the first request

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> HttpIngest:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="http-ingest", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RunwatchError("http ingest did not start within 30 s")
        if self._failure is not None:
            host, port = self._settings.address
            raise ConfigError(
                "http_ingest.listen", f"cannot listen on {host}:{port}: {self._failure}"
            ) from self._failure
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sink.close()

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            self._app(),
            access_log=None,  # it would log the query string, which may hold the secret
            keepalive_timeout=self._settings.header_timeout_s,
            max_line_size=_MAX_FIELD,
            max_field_size=_MAX_FIELD,
            max_headers=_MAX_HEADERS,
            shutdown_timeout=5.0,
        )
        try:
            loop.run_until_complete(runner.setup())
            host, port = self._settings.address
            site = web.TCPSite(runner, host, port, ssl_context=self._tls(), backlog=128)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except Exception as exc:
            self._failure = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def _tls(self) -> ssl.SSLContext | None:
        settings = self._settings
        if settings.tls_certfile is None or settings.tls_keyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
        return context

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._settings.max_body_bytes)
        app.router.add_post(self._settings.path, self._post)
        app.router.add_route("OPTIONS", self._settings.path, self._options)
        return app

    # --- requests ---------------------------------------------------------------------------

    async def _post(self, request: web.Request) -> web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._answer(request, 413, "too_large", f"body over {limit} bytes")
        try:
            body = await asyncio.wait_for(request.read(), self._settings.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            return self._answer(request, 413, "too_large", f"body over {limit} bytes")
        except TimeoutError:
            detail = f"body not received within {self._settings.body_timeout_s:g} s"
            return self._answer(request, 408, "timeout", detail, close=True)
        loop = asyncio.get_running_loop()
        job = functools.partial(
            plan,
            body,
            dict(request.headers),
            bounds=self._limits.at(self._clock()),
            max_bytes=self._max_message_bytes,
        )
        try:
            outcome = await loop.run_in_executor(self._pool, job)
        except DecodeError as exc:
            return self._answer(request, 400, "bad_request", exc.detail, error=exc.reason)
        except Exception as exc:  # a bug met on this input: still the sender's 4xx, logged
            log.exception("http ingest: unexpected error on a %d-byte body", len(body))
            detail = f"{type(exc).__name__}: {exc}"[:500]
            return self._answer(request, 400, "bad_request", detail, error="internal")
        if isinstance(outcome, Validation):
            self._metrics.http_ingest_requests.labels(result="validation").inc()
            log.info("http ingest: answered an Event Grid subscription validation")
            return _json(200, {"validationResponse": outcome.code})
        return await self._publish(request, outcome)

    async def _publish(self, request: web.Request, batch: Batch) -> web.Response:
        if batch.messages:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._pool, self._sink.publish, batch.messages)
            except (BrokerError, KafkaError) as exc:
                detail = f"the broker did not acknowledge the batch: {exc}"
                return self._answer(request, 503, "unavailable", detail)
        self._metrics.http_ingest_requests.labels(result="accepted").inc()
        body = {"accepted": batch.events, "skipped": batch.skipped, "rejected": batch.rejected}
        return _json(200, body)

    async def _options(self, request: web.Request) -> web.Response:
        """CloudEvents webhook abuse protection (http-webhook.md section 4): consent is the
        WebHook-Allowed-Origin header, given to the allowed origins. No secret is asked for:
        the handshake protects the sender, it "doesn't aim to establish an authentication
        context" (Event Grid's docs), and a subscription authenticating by a delivery-attribute
        header need not send that header here. Deliveries are authenticated."""
        origin = request.headers.get("WebHook-Request-Origin")
        if not origin:
            return self._answer(request, 400, "bad_request", "no WebHook-Request-Origin header")
        allowed = {o.lower() for o in self._settings.allowed_origins}
        if "*" not in allowed and origin.lower() not in allowed:
            detail = f"origin {origin[:100]!r} is not in http_ingest.allowed_origins"
            return self._answer(request, 403, "forbidden", detail)
        rate = self._settings.allowed_rate
        headers = {
            "WebHook-Allowed-Origin": origin,
            "WebHook-Allowed-Rate": "*" if rate is None else str(rate),
            "Allow": "POST, OPTIONS",
        }
        self._metrics.http_ingest_requests.labels(result="handshake").inc()
        log.info("http ingest: webhook handshake answered for origin %s", origin[:100])
        return web.Response(status=200, headers=headers)

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """None when the request carries a configured secret; else the 401/403 to send."""
        token = _bearer(request.headers.get("Authorization"))
        if token is None:
            token = request.query.get("code") or request.query.get("access_token")
        if not token:
            response = self._answer(request, 401, "unauthorized", "no credentials")
            response.headers["WWW-Authenticate"] = 'Bearer realm="runwatch"'
            return response
        try:
            secrets = self._secrets()
        except ConfigError as exc:  # the secret file vanished: retried by Event Grid
            log.error("http ingest: %s", exc)
            return self._answer(request, 503, "unavailable", "the secret cannot be read")
        given = token.encode()
        matched = False
        for secret in secrets:  # every one compared: the time does not say which matched
            matched |= hmac.compare_digest(given, secret.encode())
        if not matched:
            return self._answer(request, 403, "forbidden", "wrong credentials")
        return None

    def _secrets(self) -> tuple[str, ...]:
        return self._settings.secrets()

    def _answer(
        self,
        request: web.Request,
        status: int,
        result: str,
        detail: str,
        *,
        error: str | None = None,
        close: bool = False,
    ) -> web.Response:
        """A refusal: counted, logged without the query string, the reason in the body."""
        self._metrics.http_ingest_requests.labels(result=result).inc()
        log.warning(
            "http ingest: %s %s from %s -> %d %s: %s",
            request.method,
            request.path,  # never the query string: it may hold the secret
            request.remote,
            status,
            error or result,
            detail[:300],
        )
        response = _json(status, {"error": error or result, "detail": detail})
        if close:
            response.force_close()
        return response


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
