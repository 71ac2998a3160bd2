"""Issue 16 item 1 end to end: failed runs on the real broker are classified at ingest, the
cause is stored with the event and the run, rules and silences match it as the label
`cause`, every mail and webhook body shows it, `runs list --cause oom` finds it, a metric
counts it, and a broken cause table on reload leaves the old one in force.

Issue 15 item 3 remainder: the ARM resource ID of verbatim Azure samples (resource log,
Event Grid, CloudEvents, Log Analytics export) is stored with the event and becomes the
azure-common body's alertTargetIDs, valid against tests/samples/schemas.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from sqlalchemy import select

from consumers.config.settings import Settings
from consumers.ingest.decoding import EventFormat
from consumers.ingest.encoding import encode
from consumers.model.events import RunStatusEvent
from consumers.store import open_store
from consumers.store.schema import events, notifications, runs
from consumers.store.silences import add_silence
from tests.conftest import RUNWATCH, RunningService, Topics, wait_for
from tests.servers import HttpServer, SmtpServer

SAMPLES = Path(__file__).resolve().parent / "samples"
HOOKS = ("native", "alertmanager", "azure-common", "slack", "teams", "pagerduty")
RULES = """
rules:
  - name: oom-to-infra
    when: {status: [Failed], cause: "*oom"}
    severity: 1
    notify: [infra]
  - name: run-failed
    when: {status: [Failed]}
    severity: 2
    notify: [ml-oncall, hook-native, hook-alertmanager, hook-azure-common, hook-slack,
             hook-teams, hook-pagerduty]
"""
# Real messages from tests/samples/failure_messages (their sources are in cases.yaml).
CUDA_OOM = (SAMPLES / "failure_messages/01-pytorch-cuda-oom.txt").read_text()
TRACEBACK = (SAMPLES / "failure_messages/28-python-zerodivision.txt").read_text()


@pytest.fixture(autouse=True)
def _routing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PD_KEY", "R0UTINGKEY0000000000000000000000")


def settings(
    topics: Topics,
    store_url: str,
    rules_dir: Path,
    smtp: SmtpServer,
    http: HttpServer,
    hooks: tuple[str, ...] = HOOKS,
) -> Settings:
    def hook(fmt: str) -> dict[str, Any]:
        extra = {"routing_key_env": "TEST_PD_KEY"} if fmt == "pagerduty" else {}
        return {"webhook": {"url": http.url(f"/{fmt}"), "format": fmt, **extra}}

    return Settings.model_validate(
        {
            "kafka": topics.kafka_settings().model_dump(),
            "store": {"url": store_url},
            "metrics": {"listen": "127.0.0.1:0"},
            "rules_dir": str(rules_dir),
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "from": "rw@example.com"},
            "receivers": {
                "ml-oncall": {"email": {"to": ["oncall@example.com"]}},
                "infra": {"email": {"to": ["infra@example.com"]}},
                **{f"hook-{fmt}": hook(fmt) for fmt in hooks},
            },
            "notify": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
            "evaluation": {"replay_horizon_s": None},  # the Azure samples are from 2024
        }
    )


def failed(run_id: str, message: str, minutes_ago: float = 1) -> RunStatusEvent:
    return RunStatusEvent(
        TimeGenerated=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        RunId=run_id,
        Status="Failed",
        ExperimentName="bert-finetune",
        WorkspaceName="ml-prod",
        Message=message,
    )


def rows(store_url: str, table: Any) -> list[Any]:
    store = open_store(store_url)
    try:
        with store.engine.connect() as conn:
            return list(conn.execute(select(table)))
    finally:
        store.dispose()


def body(mail: Any, kind: str) -> str:
    part = mail.message.get_body((kind,))
    assert part is not None
    text: str = part.get_content()
    return text


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(RULES)
    return folder


def test_a_failed_run_is_classified_stored_routed_by_cause_and_shown_in_every_body(
    topics: Topics, store_url: str, rules_dir: Path, smtp: SmtpServer, http: HttpServer
) -> None:
    # A silence on the cause, before anything is sent: user_code failures go nowhere.
    store = open_store(store_url, migrate=True)
    try:
        add_silence(store, ["cause=user_code"], duration_s=3600, comment="", now=datetime.now(UTC))
    finally:
        store.dispose()
    # An input's own `cause` is never believed: runwatch says why a run failed.
    forged = failed("oom-1", CUDA_OOM).model_copy(update={"cause": "preempted"})
    topics.produce(
        [
            encode(forged, EventFormat.NATIVE),
            encode(failed("tb-1", TRACEBACK), EventFormat.NATIVE),
            encode(
                RunStatusEvent.model_validate(
                    {**failed("ok-1", "").model_dump(), "Status": "Completed", "cause": "x"}
                ),
                EventFormat.NATIVE,
            ),
        ]
    )
    with RunningService(settings(topics, store_url, rules_dir, smtp, http)) as running:
        wait_for(lambda: len(smtp.mails) == 2 and all(http.on(f"/{f}") for f in HOOKS))
        wait_for(
            lambda: (
                running.metric("runwatch_notifications_suppressed_total", reason="silenced") == 7
            )
        )
        metric = "runwatch_run_failures_by_cause_total"
        assert running.metric(metric, cause="cuda_oom") == 1
        assert running.metric(metric, cause="user_code") == 1
        # every cause of the table has its series from the start, at zero
        assert running.service.registry.get_sample_value(metric, {"cause": "host_oom"}) == 0
        assert running.service.registry.get_sample_value(metric, {"cause": "unknown"}) == 0

    stored = {row.RunId: row for row in rows(store_url, events)}
    assert stored["oom-1"].cause == "cuda_oom" and stored["oom-1"].cause_detail is None
    assert stored["tb-1"].cause == "user_code"
    assert stored["tb-1"].cause_detail == "ZeroDivisionError at /tmp/ws/src/metrics.py:2"
    assert stored["ok-1"].cause is None
    assert {r.RunId: r.cause for r in rows(store_url, runs)} == {
        "oom-1": "cuda_oom",
        "tb-1": "user_code",
        "ok-1": None,
    }

    # the OOM went to infra (rule on the cause) and to on-call; the traceback was silenced
    by_to = {tuple(m.envelope_to): m for m in smtp.mails}
    assert set(by_to) == {("infra@example.com",), ("oncall@example.com",)}
    for mail in smtp.mails:
        assert "oom-1" in str(mail.message["Subject"])
        assert "Cause        cuda_oom" in body(mail, "plain")
        assert "<b>cuda_oom</b>" in body(mail, "html")
    silenced = [n for n in rows(store_url, notifications) if n.run_id == "tb-1"]
    assert len(silenced) == 7 and {n.state for n in silenced} == {"silenced"}

    hits = {fmt: orjson.loads(http.on(f"/{fmt}")[0].body) for fmt in HOOKS}
    assert all(len(http.on(f"/{fmt}")) == 1 for fmt in HOOKS)
    assert hits["native"]["event"]["cause"] == "cuda_oom"
    assert hits["alertmanager"]["alerts"][0]["labels"]["cause"] == "cuda_oom"
    essentials = hits["azure-common"]["data"]
    assert {"name": "cause", "value": "cuda_oom"} in essentials["alertContext"]["Dimensions"]
    assert essentials["customProperties"]["cause"] == "cuda_oom"
    assert "Cause\ncuda_oom" in [f["text"] for f in hits["slack"]["blocks"][2]["fields"]]
    card = hits["teams"]["attachments"][0]["content"]["body"]
    texts = [i["text"] for block in card for i in block.get("inlines", [])]
    assert "Cause: " in texts and "cuda_oom" in texts
    assert hits["pagerduty"]["payload"]["custom_details"]["cause"] == "cuda_oom"

    listed = subprocess.run(
        [RUNWATCH, "runs", "list", "--store", store_url, "--cause", "oom", "-o", "json"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert [r["runId"] for r in orjson.loads(listed.stdout)] == ["oom-1"]
    table = subprocess.run(
        [RUNWATCH, "runs", "list", "--store", store_url, "--cause", "user_code"],
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    ).stdout.splitlines()
    assert "CAUSE" in table[0] and len(table) == 2 and "user_code" in table[1]


def test_a_user_cause_table_beside_the_rules_is_reloaded_and_a_broken_one_keeps_the_old(
    topics: Topics, store_url: str, rules_dir: Path, smtp: SmtpServer, http: HttpServer
) -> None:
    user = rules_dir / "causes.yaml"
    user.write_text(
        "causes:\n"
        "  - name: dataloader_oom\n"
        "    description: A DataLoader worker was killed for memory.\n"
        "    match:\n"
        "      message: ['DataLoader worker \\(pid \\d+\\) is killed']\n"
    )
    config = settings(topics, store_url, rules_dir, smtp, http, hooks=())
    worker = "RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed."
    with RunningService(config) as running:
        reloads = "runwatch_rules_reload_total"
        assert running.service.rules.causes.names[0] == "dataloader_oom"
        # A broken edit: logged and counted, and the table in force stays.
        user.write_text("causes:\n  - name: Bad Name\n    description: d\n")
        wait_for(lambda: running.metric(reloads, result="error") == 1, timeout=30)
        topics.produce([encode(failed("dl-1", worker), EventFormat.NATIVE)])
        wait_for(lambda: len([m for m in smtp.mails if "dl-1" in str(m.message["Subject"])]) == 2)
        assert "Cause        dataloader_oom" in body(smtp.mails[-1], "plain")
    stored = {row.RunId: row.cause for row in rows(store_url, events)}
    assert stored["dl-1"] == "dataloader_oom"  # the user's cause, tried before host_oom's


def test_rules_check_names_the_file_and_line_of_a_bad_cause(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "causes.yaml").write_text(
        "causes:\n  - name: gpu_oom\n    description: d\n    match:\n      message: ['(a+)+']\n"
    )
    done = subprocess.run(
        [RUNWATCH, "rules", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"{tmp_path / 'causes.yaml'}:5" in done.stderr and "nested quantifier" in done.stderr
    shipped_only = subprocess.run(
        [RUNWATCH, "rules", "check"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "failure cause(s) OK" in shipped_only.stdout


# --- issue 15: the event's ARM resource ID ---------------------------------------------------


def azure_samples() -> dict[str, tuple[bytes, str, str]]:
    """name -> (message, failed run id, the ARM ID the sample carries)."""

    def raw(relative: str) -> bytes:
        return (SAMPLES / relative).read_bytes()

    grid = json.loads(raw("eventgrid/runstatuschanged.eventgrid-schema.json"))
    cloud = json.loads(raw("eventgrid/runstatuschanged.cloudevents-schema.json"))
    resource_log = json.loads(raw("azure/resource-log.amlrunstatuschangedevent.eventhub.json"))
    export = json.loads(raw("azure/workspace-data-export.eventhub.json"))
    cloud_event = cloud[0]  # a batch of one, as the docs show it
    record = resource_log["records"][0]
    failure = next(r for r in export["records"] if r["Status"] == "Failed")
    return {
        "event-grid": (
            raw("eventgrid/runstatuschanged.eventgrid-schema.json"),
            grid[0]["data"]["runId"],
            grid[0]["topic"],
        ),
        "cloudevents": (
            raw("eventgrid/runstatuschanged.cloudevents-schema.json"),
            cloud_event["data"]["runId"],
            cloud_event["source"],
        ),
        "resource-log": (
            raw("azure/resource-log.amlrunstatuschangedevent.eventhub.json"),
            record["properties"]["RunId"],
            record["resourceId"],
        ),
        "log-analytics": (
            raw("azure/workspace-data-export.eventhub.json"),
            failure["RunId"],
            failure["_ResourceId"],
        ),
    }


@pytest.fixture
def azure_schema() -> Iterator[jsonschema.protocols.Validator]:
    schema = json.loads((SAMPLES / "schemas/azure-common-alert.schema.json").read_text())
    yield jsonschema.validators.validator_for(schema)(schema)


@pytest.mark.parametrize("name", ["event-grid", "cloudevents", "resource-log", "log-analytics"])
def test_the_arm_id_of_verbatim_azure_samples_is_stored_and_is_the_alert_target(
    name: str,
    topics: Topics,
    store_url: str,
    tmp_path: Path,
    smtp: SmtpServer,
    http: HttpServer,
    azure_schema: jsonschema.protocols.Validator,
) -> None:
    """One sample per service (the Event Grid and CloudEvents samples are one event, and so
    are the resource log and the export's failure: stored together they would be one row)."""
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(
        "rules:\n  - name: run-failed\n    when: {status: [Failed]}\n"
        "    notify: [hook-azure-common]\n"
    )
    message, run_id, resource_id = azure_samples()[name]
    # the template is the fallback for sources without an ARM ID: not used for these
    config = settings(topics, store_url, folder, smtp, http, hooks=("azure-common",))
    fallback = (
        "/subscriptions/x/resourceGroups/y/providers/Microsoft.MachineLearningServices"
        "/workspaces/NOT-USED"
    )
    config = config.model_copy(update={"azure_resource_id_template": fallback})
    topics.produce([message])
    with RunningService(config):
        wait_for(lambda: len(http.on("/azure-common")) == 1, timeout=60)
    stored = {row.RunId: row.ResourceId for row in rows(store_url, events)}
    assert stored[run_id] == resource_id
    sent = orjson.loads(http.on("/azure-common")[0].body)
    assert sent["data"]["alertContext"]["AffectedConfigurationItems"] == [run_id]
    assert sent["data"]["essentials"]["alertTargetIDs"] == [resource_id]
    assert [e.message for e in azure_schema.iter_errors(sent)] == []
    sources = sent["data"]["alertContext"]["SearchResults"]["dataSources"]
    assert sources == [{"resourceId": resource_id, "tables": ["AmlRunStatusChangedEvent"]}]


def test_without_an_arm_id_the_template_is_the_fallback(
    topics: Topics, store_url: str, tmp_path: Path, smtp: SmtpServer, http: HttpServer
) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(
        "rules:\n  - name: run-failed\n    when: {status: [Failed]}\n"
        "    notify: [hook-azure-common]\n"
    )
    template = (
        "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.MachineLearningServices"
        "/workspaces/{WorkspaceName}"
    )
    config = settings(topics, store_url, folder, smtp, http, hooks=("azure-common",))
    config = config.model_copy(update={"azure_resource_id_template": template})
    topics.produce([encode(failed("native-1", "boom"), EventFormat.NATIVE)])
    with RunningService(config):
        wait_for(lambda: len(http.on("/azure-common")) == 1)
    sent = orjson.loads(http.on("/azure-common")[0].body)
    filled = template.replace("{WorkspaceName}", "ml-prod")
    assert sent["data"]["essentials"]["alertTargetIDs"] == [filled]
    assert {row.RunId: row.ResourceId for row in rows(store_url, events)} == {"native-1": None}
