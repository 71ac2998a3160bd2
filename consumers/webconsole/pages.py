"""What each page shows, as a template name and its values: synchronous (store reads), run
on the console's worker threads, and free of HTTP so they read as plain functions.

A page function takes an `Ask` (the query, the path's values, the form, who asks) and
returns a Page to render or a Redirect (after every successful POST: reloading a page never
submits a form again)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from consumers.model.causes import CauseTable
from consumers.model.durations import parse_duration
from consumers.model.notifications import Notification, NotificationState
from consumers.store.engine import Store
from consumers.store.outbox import Outbox
from consumers.store.queries import get_run
from consumers.store.silences import add_silence, expire_silence, list_silences
from consumers.webconsole import reads
from consumers.webconsole.causes import FailureCauses
from consumers.webconsole.fate import fate
from consumers.webconsole.timeline import chart

MESSAGE_SHOWN = 20_000  # characters of a run's message on its page
NOTIFICATIONS_SHOWN = 100


@dataclass(frozen=True)
class Ask:
    query: Mapping[str, str]
    path: Mapping[str, str]
    form: Mapping[str, str]
    user: str
    matches: tuple[str, ...] = ()  # the repeated ?match= of the silences page


@dataclass(frozen=True)
class Page:
    template: str
    context: dict[str, Any]
    status: int = 200


@dataclass(frozen=True)
class Redirect:
    location: str


Answer = Page | Redirect


def message(status: int, heading: str, text: str) -> Page:
    return Page("message.html", {"heading": heading, "text": text}, status)


def safe_back(value: str | None, default: str) -> str:
    """A redirect target from a form: a console path only (no open redirect)."""
    if value and value.startswith("/console/") and "//" not in value and "\\" not in value:
        return value
    return default


@dataclass
class Pages:
    store: Store
    causes: CauseTable
    wake: Callable[[], None]
    failures_shown: int = 200
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.failure_causes = FailureCauses(self.causes, size=4 * self.failures_shown)

    # -- reading -------------------------------------------------------------------------

    def failures(self, ask: Ask) -> Answer:
        failures = reads.recent_failures(self.store, self.failure_causes, self.failures_shown)
        return Page(
            "failures.html",
            {
                "nav": "failures",
                "groups": reads.group_failures(failures, self.causes),
                "runs": len(failures),
                "oldest": failures[-1].time if failures else None,
            },
        )

    def run(self, ask: Ask) -> Answer:
        run_id = ask.path["run_id"]
        detail = get_run(self.store, run_id, now=self.now())
        if detail is None:
            return message(404, "No such run", f"No run {run_id!r} is stored.")
        cause = reads.run_failure(self.store, self.failure_causes, run_id)
        text = detail.run["message"] or ""
        if len(text) > MESSAGE_SHOWN:
            text = f"{text[: MESSAGE_SHOWN // 4]}\n...\n{text[-MESSAGE_SHOWN * 3 // 4 :]}"
        items = reads.notifications(self.store, run_id=run_id, limit=NOTIFICATIONS_SHOWN)
        return Page(
            "run.html",
            {
                "nav": "failures",
                "run": detail.run,
                "message": text,
                "cause": cause,
                "cause_description": self.causes.describe(cause.name) if cause else None,
                "chart": chart(detail.timeline),
                "timeline": detail.timeline,
                "children": detail.children,
                "items": _fated(items),
                "back": f"/console/runs/{_segment(run_id)}",
            },
        )

    def notifications(self, ask: Ask) -> Answer:
        state: NotificationState | None = None
        if ask.query.get("state"):
            try:
                state = NotificationState(ask.query["state"])
            except ValueError:
                return message(
                    400, "Unknown state", f"No notification state {ask.query['state']!r}."
                )
        before: tuple[datetime, str] | None = None
        if ask.query.get("before"):
            try:
                at = datetime.fromisoformat(ask.query["before"])
            except ValueError:
                return message(400, "Bad time", "?before= takes an ISO time.")
            before = (at if at.tzinfo else at.replace(tzinfo=UTC), ask.query.get("after_id", ""))
        items = reads.notifications(
            self.store, state=state, before=before, limit=NOTIFICATIONS_SHOWN
        )
        older = None
        if len(items) == NOTIFICATIONS_SHOWN:
            params = {"before": items[-1].created_at.isoformat(), "after_id": items[-1].id}
            if state is not None:
                params["state"] = state.value
            older = urlencode(params)
        counts = reads.state_counts(self.store)
        back = "/console/notifications" + (f"?state={state.value}" if state else "")
        return Page(
            "notifications.html",
            {
                "nav": "notifications",
                "state": state.value if state else None,
                "counts": [
                    (s.value, counts[s.value]) for s in NotificationState if counts.get(s.value)
                ],
                "items": _fated(items),
                "older": older,
                "retried": ask.query.get("retried"),
                "back": back,
            },
        )

    def silences(self, ask: Ask, *, error: str | None = None, status: int = 200) -> Answer:
        expired = ask.query.get("expired") == "1"
        flash = None
        if ask.query.get("created"):
            flash = f"Silence {ask.query['created']} created."
        elif ask.query.get("expired_id"):
            flash = f"Silence {ask.query['expired_id']} expired."
        form = ask.form
        return Page(
            "silences.html",
            {
                "nav": "silences",
                "silences": list_silences(self.store, self.now(), include_expired=expired),
                "expired": expired,
                "now": self.now(),
                "flash": flash,
                "error": error,
                "form_matchers": form.get("matchers", "\n".join(ask.matches)),
                "form_duration": form.get("duration", "2h"),
                "form_comment": form.get("comment", ""),
                "form_created_by": form.get("created_by", ask.user),
            },
            status,
        )

    # -- writing (POST, CSRF checked before these run) ------------------------------------

    def create_silence(self, ask: Ask) -> Answer:
        matchers = [line.strip() for line in ask.form.get("matchers", "").splitlines()]
        matchers = [m for m in matchers if m]
        try:
            duration = parse_duration(ask.form.get("duration", "").strip())
            silence = add_silence(
                self.store,
                matchers,
                duration_s=duration,
                comment=ask.form.get("comment", "").strip(),
                now=self.now(),
                created_by=ask.form.get("created_by", "").strip()[:200] or ask.user,
            )
        except ValueError as exc:
            return self.silences(ask, error=str(exc), status=400)
        return Redirect(f"/console/silences?created={silence.id}")

    def expire(self, ask: Ask) -> Answer:
        silence_id = ask.path["silence_id"]
        if not expire_silence(self.store, silence_id, self.now()):
            return message(409, "Not expired", f"No active silence {silence_id!r}.")
        return Redirect(f"/console/silences?expired_id={silence_id}")

    def retry(self, ask: Ask) -> Answer:
        """`runwatch notifications retry`'s path: due again now, attempts counted afresh."""
        notification_id = ask.path["notification_id"]
        row = reads.notification(self.store, notification_id)
        if row is None or row.state is not NotificationState.DEAD:
            return message(
                409, "Not retried", f"Notification {notification_id!r} is not a dead one."
            )
        if not Outbox(self.store).retry(notification_id, self.now()):
            return message(
                409, "Not retried", f"Notification {notification_id!r} changed meanwhile."
            )
        self.wake()
        back = safe_back(ask.form.get("back"), "/console/notifications")
        sep = "&" if "?" in back else "?"
        return Redirect(f"{back}{sep}retried={notification_id}")


def _fated(items: list[Notification]) -> list[dict[str, Any]]:
    return [{"n": item, "fate": fate(item)} for item in items]


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
