"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright
against a live `runwatch serve` with a real SMTP server behind it. What an on-call user
does: finds a failure under its cause, silences its experiment from the page (and the next
such failure mails nobody), retries a dead notification from the page (and it is sent).

Playwright cannot download a browser here; it drives CHROMIUM (Debian's `chromium`
package; .ci/run installs it). Without it these tests are skipped, saying so. With
RUNWATCH_CONSOLE_SCREENSHOTS=DIR they also save the pages' screenshots there (docs/images/
holds the ones docs/console.md shows)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.demo.broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.console_kit import PASSWORD, USER, LiveConsole, fresh_topics, live_console, run_events

CHROMIUM = os.environ.get("RUNWATCH_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("RUNWATCH_CONSOLE_SCREENSHOTS")

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does): the console's "
        "browser tests need a real browser",
        allow_module_level=True,
    )

Page = playwright_api.Page


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def live(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[LiveConsole]:
    with live_console(fresh_topics(broker.bootstrap), tmp_path) as running:
        yield running


@pytest.fixture
def page(browser: object, live: LiveConsole) -> Iterator[Page]:
    context = browser.new_context(  # type: ignore[attr-defined]
        http_credentials={"username": USER, "password": PASSWORD},
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(30_000)
    opened = context.new_page()
    yield opened
    context.close()


def _shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


def _until_shown(page: Page, url: str, text: str, timeout: float = 60) -> None:
    def shown() -> bool:
        page.goto(url)
        return text in page.content()

    wait_for(shown, timeout=timeout, interval=0.5)


def test_a_failure_appears_with_its_cause_and_leads_to_its_notification(
    live: LiveConsole, page: Page
) -> None:
    live.publish(*run_events("run-oom-7", tags={"team": "vision"}, ago_s=900))
    live.publish(
        *run_events(
            "run-quota-2",
            experiment="llm-pretrain",
            message="Execution failed. AzureMLCompute job failed.\nQuotaExceeded: Not enough "
            "quota available for Standard_ND96asr_v4 in westeurope",
        )
    )
    _until_shown(page, live.url, "run-quota-2")
    oom = page.locator("section#cause-cuda_oom")
    assert "bert-large" in oom.inner_text() and "run-oom-7" in oom.inner_text()
    assert "cuda_oom" in oom.locator("h2").inner_text()
    wait_for(lambda: len(live.smtp.server.mails) >= 2, timeout=60)
    _shot(page, "failures")

    oom.get_by_role("link", name="run-oom-7").click()
    assert page.locator("#cause").inner_text() == "cuda_oom"
    assert page.locator("svg rect").count() >= 3  # the timeline chart: Queued, Running, Failed
    assert "vision" in page.locator("dl.tags").inner_text()
    wait_for(lambda: "sent at" in (page.reload() and page.content()), timeout=60)
    assert "ml-oncall" in page.locator("table.notifications").inner_text()
    _shot(page, "run")


def test_a_silence_created_in_the_page_stops_the_next_matching_mail(
    live: LiveConsole, page: Page
) -> None:
    live.publish(*run_events("run-a1", experiment="exp-noisy"))
    wait_for(lambda: len(live.smtp.server.mails) == 1, timeout=60)
    _until_shown(page, live.url, "run-a1")

    row = page.locator("tr", has_text="exp-noisy")
    row.get_by_role("link", name="silence this experiment").click()
    assert page.locator("#matchers").input_value() == "experiment=exp-noisy"
    page.fill("#comment", "known flaky data loader")
    page.get_by_role("button", name="Create silence").click()
    assert "created" in page.locator("p.flash").inner_text()
    silence_row = page.locator("tr", has_text="experiment=exp-noisy")
    assert "known flaky data loader" in silence_row.inner_text()
    _shot(page, "silences")

    live.publish(*run_events("run-a2", experiment="exp-noisy"))
    live.publish(*run_events("run-b1", experiment="exp-quiet"))
    wait_for(lambda: len(live.smtp.server.mails) == 2, timeout=60)  # exp-quiet's mail
    _until_shown(page, f"{live.url}notifications?state=silenced", "run-a2")
    fate = page.locator("tr", has_text="run-a2").locator("td.fate")
    assert "silenced by" in fate.inner_text()
    fate.get_by_role("link").click()  # to the silence that held it back
    assert "experiment=exp-noisy" in page.content()
    bodies = [m.raw.decode(errors="replace") for m in live.smtp.server.mails]
    assert not any("run-a2" in body for body in bodies), "a silenced failure was mailed"
    assert any("run-b1" in body for body in bodies)

    page.goto(f"{live.url}silences")
    page.locator("tr", has_text="experiment=exp-noisy").get_by_role("button", name="Expire").click()
    assert "expired" in page.locator("p.flash").inner_text()
    assert "experiment=exp-noisy" not in page.locator("main").inner_text().split("New silence")[0]
    live.publish(*run_events("run-a3", experiment="exp-noisy"))  # mailed again
    wait_for(lambda: any("run-a3" in m.raw.decode() for m in live.smtp.server.mails), timeout=60)


def test_a_dead_notification_retried_from_the_page_is_sent(live: LiveConsole, page: Page) -> None:
    live.smtp.refuse = True
    live.publish(*run_events("run-dead-1", experiment="exp-mail"))
    _until_shown(page, f"{live.url}notifications?state=dead", "run-dead-1")
    row = page.locator("tr", has_text="run-dead-1")
    assert "550" in row.locator("td.fate").inner_text()  # dead, and why
    assert live.smtp.server.mails == []
    _shot(page, "notifications")

    live.smtp.refuse = False
    row.get_by_role("button", name="Retry").click()
    assert "is due again" in page.locator("p.flash").inner_text()
    wait_for(lambda: len(live.smtp.server.mails) == 1, timeout=60)
    assert "run-dead-1" in live.smtp.server.mails[0].raw.decode(errors="replace")
    _until_shown(page, f"{live.url}runs/run-dead-1", "sent at")
