"""A noise-control test bench: settings with real receivers, an injected clock, the policy,
and a dispatcher running against the test SMTP and HTTP servers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from consumers.config.settings import Settings
from consumers.dispatch.dispatcher import Dispatcher
from consumers.model.alerts import Alert
from consumers.model.events import RunStatusEvent
from consumers.noise.policy import NoisePolicy
from consumers.outbox.recorder import recording
from consumers.store import Store
from consumers.store.outbox import Notification, Outbox
from consumers.telemetry.metrics import Metrics
from tests.servers import HttpServer, SmtpServer

# Five seconds into a minute, half an hour ago: storm windows are whole UTC minutes.
START = (datetime.now(UTC) - timedelta(minutes=30)).replace(second=5, microsecond=0)
HOOKS = ("ok", "team-a", "pager")


class Clock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Bench:
    def __init__(
        self,
        store: Store,
        noise: dict[str, Any],
        *,
        http: HttpServer | None = None,
        smtp: SmtpServer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or Clock()
        receivers: dict[str, Any] = {"mail": {"email": {"to": ["oncall@example.com"]}}}
        for name in HOOKS:
            url = http.url(f"/{name}") if http else f"http://127.0.0.1:9/{name}"
            receivers[name] = {"webhook": {"url": url, "timeout_s": 2}}
        self.settings = Settings.model_validate(
            {
                "smtp": {"host": "127.0.0.1", "port": smtp.port if smtp else 25},
                "receivers": receivers,
                "notify": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5},
                "run_url_template": "https://ml.example.com/runs/{RunId}",
                "noise": noise,
            }
        )
        self.metrics = Metrics(CollectorRegistry())
        self.policy = NoisePolicy(
            self.settings.noise, self.metrics.suppressed, unknown_owners=self.metrics.unknown_owners
        )
        self.policy.check_receivers(set(self.settings.receivers))
        self.kinds = {name: r.kind for name, r in self.settings.receivers.items()}
        self.dispatcher = Dispatcher(store, self.settings, self.metrics, clock=self.clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def alert(
        self,
        run: str,
        *receivers: str,
        workspace: str = "ws-a",
        status: str = "Failed",
        rule: str = "run-failed",
        severity: int = 2,
        labels: dict[str, str] | None = None,
        user: str | None = None,
        offset_s: float = 0.0,
    ) -> Alert:
        event = RunStatusEvent.model_validate(
            {
                "TimeGenerated": self.clock() + timedelta(seconds=offset_s),
                "RunId": run,
                "Status": status,
                "ExperimentName": "train",
                "WorkspaceName": workspace,
                "TriggeringUserName": user,
                "Message": f"{run} broke",
            }
        )
        return Alert(
            rule=rule,
            severity=severity,
            labels=labels or {},
            receivers=receivers or ("mail",),
            throttle_key=f"RunId={run}|Status={status}",
            throttle_s=0.0,
            event=event,
        )

    def write(self, *alerts: Alert) -> int:
        events = list({id(a.event): a.event for a in alerts}.values())
        result = self.store.write_batch(
            events,
            record=recording(alerts, self.kinds, self.policy),
            now=self.clock(),
        )
        return result.notifications

    def rows(self) -> list[Notification]:
        return sorted(
            Outbox(self.store).list(limit=1000), key=lambda n: (n.run_id, n.receiver, n.event_time)
        )

    def states(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        return {(n.run_id, n.receiver): (n.state, n.reason) for n in self.rows() if n.run_id}

    def suppressed(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "runwatch_notifications_suppressed_total", {"reason": reason}
        )
        return value or 0.0

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.dispatcher.wake()

    def __enter__(self) -> Bench:
        self._thread = self.dispatcher.start(self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
        assert not self._thread.is_alive()


def body(hit: Any) -> Any:
    return orjson.loads(hit.body)
