"""docs/metrics.md is the metrics contract: its table must say exactly what the registry holds."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from consumers.service.app import new_registry
from consumers.telemetry.metrics import Metrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(runwatch_[a-z_]+)` \| (\w+) \| ([^|]*) \| (.*) \|$")


def documented() -> dict[str, tuple[str, tuple[str, ...], str]]:
    rows: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, kind, labels, meaning = match.groups()
            assert name not in rows, f"{name} documented twice"
            rows[name] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)), meaning.strip())
    return rows


def registered() -> dict[str, tuple[str, tuple[str, ...], str]]:
    metrics = Metrics(CollectorRegistry())
    out: dict[str, tuple[str, tuple[str, ...], str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            kind = value._type
            name = value._name + ("_total" if kind == "counter" else "")
            out[name] = (kind, tuple(value._labelnames), value._documentation)
    return out


def test_every_metric_is_documented_with_its_type_labels_and_help() -> None:
    doc, code = documented(), registered()
    assert len(code) >= 20
    assert sorted(doc) == sorted(code), (
        "docs/metrics.md and consumers/telemetry/metrics.py disagree"
    )
    for name, (kind, labels, meaning) in code.items():
        assert doc[name] == (kind, labels, meaning), f"{name}: doc {doc[name]} != code"


def test_names_follow_prometheus_conventions_and_no_label_is_a_run_id() -> None:
    for name, (kind, labels, _) in registered().items():
        assert name.startswith("runwatch_")
        assert (kind == "counter") == name.endswith("_total"), name
        if kind == "histogram" and any(w in name for w in ("latency", "delay", "write")):
            assert name.endswith("_seconds"), name
        assert not {"run_id", "RunId", "run", "notification_id"} & set(labels), name


def test_service_registry_exposes_process_and_python_collectors() -> None:
    registry = new_registry()
    Metrics(registry)
    names = {family.name for family in registry.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    assert any(name.startswith("python_gc_") for name in names)
    text = DOC.read_text()
    for name in ("process_cpu_seconds_total", "python_info", "python_gc_"):
        assert name in text
