"""`load_settings`: the YAML file users write, environment overrides, and errors that name
the key at fault without ever printing a secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumers.config.settings import load_settings
from consumers.model.errors import ConfigError

ISSUE_YAML = """\
kafka:
  bootstrap_servers: "127.0.0.1:9092"
  topic: runwatch.run-status
  dead_letter_topic: runwatch.dead-letter
  group_id: runwatch
store:
  url: "sqlite:///./runwatch.db"
metrics:
  listen: "127.0.0.1:9464"
"""

EVENT_HUBS_YAML = """\
kafka:
  bootstrap_servers: NAMESPACE.servicebus.windows.net:9093
  topic: aml-run-status
  security_protocol: SASL_SSL
  sasl_mechanism: PLAIN
  sasl_username: "$ConnectionString"
"""
PASSWORD = (
    "Endpoint=sb://namespace.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
    "SharedAccessKey=s3cr3tK3yZ0rRo+tAt1on="
)
SECRET_PART = "s3cr3tK3y"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own RUNWATCH_* variables must not leak into what is tested."""
    for name in list(os.environ):
        if name.startswith("RUNWATCH_"):
            monkeypatch.delenv(name)


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runwatch.yaml"
    path.write_text(text)
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value


def test_the_yaml_from_the_issue_works_as_written(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, ISSUE_YAML))
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.topic == "runwatch.run-status"
    assert settings.kafka.dead_letter_topic == "runwatch.dead-letter"
    assert settings.kafka.group_id == "runwatch"
    assert settings.store.url == "sqlite:///./runwatch.db"
    assert settings.metrics.listen == "127.0.0.1:9464"
    assert settings.metrics.address == ("127.0.0.1", 9464)
    assert settings.kafka.client_options() == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "client_id": "runwatch",
        "security_protocol": "PLAINTEXT",
    }


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path: Path) -> None:
    assert load_settings(None) == load_settings(config(tmp_path, ""))
    assert load_settings(None).kafka.topic == "runwatch.run-status"


def test_environment_wins_over_the_file_and_keeps_its_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(
        tmp_path,
        "kafka:\n  bootstrap_servers: broker-1:9092,broker-2:9092\n  topic: from-file\n"
        "  group_id: team-a\nstore:\n  url: sqlite:///./file.db\n  retention_days: 7\n",
    )
    monkeypatch.setenv("RUNWATCH_KAFKA__TOPIC", "from-env")
    monkeypatch.setenv("RUNWATCH_STORE__RETENTION_DAYS", "2.5")
    monkeypatch.setenv("RUNWATCH_METRICS__LISTEN", "0.0.0.0:9100")  # a section not in the file
    settings = load_settings(path)
    assert settings.kafka.topic == "from-env"
    # a partial nested override: the file's other keys in that section survive
    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.kafka.group_id == "team-a"
    assert settings.store.url == "sqlite:///./file.db"
    assert settings.store.retention_days == 2.5
    assert settings.metrics.listen == "0.0.0.0:9100"
    assert settings.kafka.client_options()["bootstrap_servers"] == [
        "broker-1:9092",
        "broker-2:9092",
    ]


def test_a_bad_environment_value_names_the_key_and_the_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNWATCH_KAFKA__MAX_POLL_RECORDS", "lots")
    error = config_error(config(tmp_path, ISSUE_YAML))
    assert error.key == "kafka.max_poll_records"
    assert "RUNWATCH_KAFKA__MAX_POLL_RECORDS" in str(error)


def test_an_unknown_key_is_an_error_naming_its_dotted_path(tmp_path: Path) -> None:
    path = config(tmp_path, ISSUE_YAML.replace("bootstrap_servers", "bootstrap_server"))
    error = config_error(path)
    assert error.key == "kafka.bootstrap_server"
    assert "kafka.bootstrap_server: unknown key" in str(error)
    assert str(path) in str(error)

    error = config_error(config(tmp_path, ISSUE_YAML + "alerting:\n  enabled: true\n"))
    assert error.key == "alerting"
    assert "unknown key" in str(error)


@pytest.mark.parametrize(
    ("yaml_text", "key", "words"),
    [
        ("kafka:\n  max_poll_records: lots\n", "kafka.max_poll_records", "valid integer"),
        ("kafka:\n  max_poll_records: 0\n", "kafka.max_poll_records", "greater than or equal"),
        ("kafka:\n  security_protocol: TLS\n", "kafka.security_protocol", "SASL_SSL"),
        ("kafka:\n  bootstrap_servers: localhost\n", "kafka.bootstrap_servers", "host:port"),
        ("metrics:\n  listen: nope\n", "metrics.listen", "expected host:port"),
        ("store:\n  url: mysql://db/runs\n", "store.url", "postgresql://"),
        ("store: sqlite:///x.db\n", "store", "valid dictionary"),
        ("logging:\n  level: LOUD\n", "logging.level", "DEBUG"),
        ("kafka:\n  heartbeat_interval_ms: 7000\n", "kafka", "heartbeat_interval_ms (7000)"),
        ("kafka:\n  group_instance_id: pod 0\n", "kafka.group_instance_id", "pattern"),
    ],
)
def test_a_wrong_value_or_type_names_the_key(
    tmp_path: Path, yaml_text: str, key: str, words: str
) -> None:
    error = config_error(config(tmp_path, yaml_text))
    assert error.key == key
    assert f"{key}: " in str(error)
    assert words in str(error)


def test_every_bad_key_is_listed_not_only_the_first(tmp_path: Path) -> None:
    error = config_error(config(tmp_path, "kafka:\n  topik: x\nmetrics:\n  listen: nope\n"))
    assert error.key == "kafka.topik"
    assert "kafka.topik: unknown key" in str(error)
    assert "metrics.listen: " in str(error)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = config(tmp_path, "kafka:\n  topic: runs\n  group_id: [unclosed\nstore:\n  url: x\n")
    error = config_error(path)
    assert "not valid YAML" in str(error)
    assert f"{path}: line 4" in str(error)

    error = config_error(config(tmp_path, "kafka:\n  topic: a\n   group_id: b\n"))
    assert "line 3" in str(error)


def test_the_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    for text in ("- kafka\n- store\n", "just a string\n", "42\n"):
        error = config_error(config(tmp_path, text))
        assert "top level must be a mapping" in str(error)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(tmp_path / "nope.yaml")
    assert "cannot read" in str(error)
    assert "nope.yaml" in str(error)


def test_event_hubs_with_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNWATCH_KAFKA__SASL_PASSWORD", PASSWORD)
    settings = load_settings(config(tmp_path, EVENT_HUBS_YAML))
    assert settings.kafka.client_options() == {
        "bootstrap_servers": ["NAMESPACE.servicebus.windows.net:9093"],
        "client_id": "runwatch",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "$ConnectionString",
        "sasl_plain_password": PASSWORD,
        "ssl_check_hostname": True,
    }
    for shown in (repr(settings), str(settings), repr(settings.kafka), str(settings.kafka)):
        assert SECRET_PART not in shown
    assert "$ConnectionString" in repr(settings)


def test_event_hubs_with_the_password_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "eventhubs-connection-string"
    secret.write_text(PASSWORD + "\n")  # as Kubernetes Secret mounts often end
    secret.chmod(0o600)  # a secret file others can read is refused (tests/test_file_modes.py)
    monkeypatch.setenv("RUNWATCH_KAFKA__SASL_PASSWORD", "stale-password-from-env")
    path = config(tmp_path, EVENT_HUBS_YAML + f"  sasl_password_file: {secret}\n")
    settings = load_settings(path)
    options = settings.kafka.client_options()
    assert options["sasl_plain_password"] == PASSWORD  # the file wins, trimmed
    assert options["sasl_mechanism"] == "PLAIN"
    assert options["sasl_plain_username"] == "$ConnectionString"
    assert SECRET_PART not in repr(settings)


def test_an_unreadable_password_file_names_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    settings = load_settings(
        config(tmp_path, EVENT_HUBS_YAML + f"  sasl_password_file: {missing}\n")
    )
    with pytest.raises(ConfigError) as caught:
        settings.kafka.client_options()
    assert caught.value.key == "kafka.sasl_password_file"
    assert str(missing) in str(caught.value)


def test_config_errors_never_show_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNWATCH_KAFKA__SASL_PASSWORD", PASSWORD)
    bad_files = [
        EVENT_HUBS_YAML + "  max_poll_records: lots\n",
        EVENT_HUBS_YAML + "  sasl_mechanism_typo: PLAIN\n",
        EVENT_HUBS_YAML.replace("SASL_SSL", "SASL_TLS"),
        EVENT_HUBS_YAML + "metrics:\n  listen: nope\n",
    ]
    for text in bad_files:
        error = config_error(config(tmp_path, text))
        assert SECRET_PART not in str(error), str(error)
        assert SECRET_PART not in repr(error)
    # a wrong type for the password itself: the key is named, the value is not echoed
    monkeypatch.delenv("RUNWATCH_KAFKA__SASL_PASSWORD")
    error = config_error(config(tmp_path, EVENT_HUBS_YAML + f"  sasl_password: [{PASSWORD}]\n"))
    assert error.key == "kafka.sasl_password"
    assert SECRET_PART not in str(error)


def test_sasl_without_a_password_names_sasl_username(tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, EVENT_HUBS_YAML))
    with pytest.raises(ConfigError) as caught:
        settings.kafka.client_options()
    assert caught.value.key == "kafka.sasl_username"
    assert "SASL_SSL needs sasl_username and sasl_password" in str(caught.value)

    no_user = EVENT_HUBS_YAML.replace('  sasl_username: "$ConnectionString"\n', "")
    no_user += "  sasl_password: x\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, no_user)).kafka.client_options()
    assert caught.value.key == "kafka.sasl_username"
