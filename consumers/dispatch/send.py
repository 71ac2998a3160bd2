"""Sending one notification: its context rendered for the receiver's kind and handed to the
email, webhook or Alertmanager sender. The I/O edge of delivery: whatever goes wrong here
raises, and the delivery stage (consumers.dispatch.delivery) turns it into an outcome.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from consumers.config.receivers import ReceiverSettings
from consumers.config.settings import Settings
from consumers.dispatch.digests import thread_key
from consumers.model.notifications import Notification
from consumers.notify.alertmanager import AlertmanagerSender, postable_alerts
from consumers.notify.email import EmailSender, build_message
from consumers.notify.templating import Renderer
from consumers.notify.webhook import WebhookSender


class Senders:
    """One sender per receiver kind, sharing one HTTP session; open for the dispatcher's
    loop (`open` inside it, `close` at its end)."""

    def __init__(self, settings: Settings, renderer: Renderer) -> None:
        self._settings = settings
        self._renderer = renderer
        self._email: EmailSender | None = None
        self._webhook: WebhookSender | None = None
        self._alertmanager: AlertmanagerSender | None = None

    def open(self, session: aiohttp.ClientSession) -> None:
        self._email = EmailSender(self._settings.smtp)
        self._webhook = WebhookSender(session)
        self._alertmanager = AlertmanagerSender(session)

    async def close(self) -> None:
        if self._email is not None:
            await self._email.close()

    async def send(
        self,
        notification: Notification,
        receiver: ReceiverSettings,
        context: dict[str, Any],
        variant: str,
    ) -> None:
        """`variant`: "" (one alert), "digest" or "storm" (consumers.dispatch.context)."""
        assert self._email is not None and self._webhook is not None
        assert self._alertmanager is not None
        if receiver.email is not None:
            rendered = self._renderer.render_email(context, variant)
            mail = build_message(
                rendered,
                sender=self._settings.smtp.sender,
                to=receiver.email.to,
                cc=receiver.email.cc,
                notification_id=notification.id,
                fingerprint=thread_key(notification),
                followup=notification.followup or bool(variant),
                domain=self._settings.notify.link_domain,
            )
            await self._email.send(mail)
        elif receiver.webhook is not None:
            body = self._renderer.render_webhook(receiver.webhook.format, context, variant)
            await self._webhook.send(receiver.webhook, body, notification_id=notification.id)
        elif receiver.alertmanager is not None:
            hold = receiver.alertmanager.hold_firing_s if receiver.send_resolved else None
            alerts = postable_alerts(context, variant, hold_firing_s=hold)
            await self._alertmanager.send(
                receiver.alertmanager, alerts, notification_id=notification.id
            )
