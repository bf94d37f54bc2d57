"""Configuration: the design's config.json shape, defaults, env overrides, clear errors."""

import pytest
from support import DESIGN_EXAMPLE, write_config

from berrychat import config
from berrychat.cli import main


def test_design_example_is_accepted_exactly():
    s = config.from_dict(DESIGN_EXAMPLE, env={})
    assert (s.server.host, s.server.port) == ("0.0.0.0", 8080)
    d = s.database
    assert (d.type, d.host, d.port, d.user, d.password, d.name) == (
        "mysql",
        "localhost",
        3306,
        "lanying",
        "password",
        "lanyingim",
    )


def test_defaults_are_embedded_sqlite_on_loopback():
    s = config.load(None, env={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.database.type == "sqlite" and s.database.name == "berrychat.db"
    assert not s.redis.enabled and s.presence.enabled


def test_sqlite_database_is_the_file_path():
    s = config.from_dict({"database": {"type": "sqlite", "database": "data/chat.db"}}, env={})
    assert s.database.name == "data/chat.db"


@pytest.mark.parametrize(
    "raw,message",
    [
        (
            {"database": {"port": "abc"}},
            'config error: database.port: expected integer 1-65535, got "abc"',
        ),
        (
            {"server": {"port": 70000}},
            "config error: server.port: expected integer 0-65535, got 70000",
        ),
        (
            {"database": {"type": "postgres"}},
            'config error: database.type: expected one of sqlite, mysql, got "postgres"',
        ),
        ({"server": {"prot": 1}}, "config error: server.prot: unknown key"),
        ({"sever": {}}, "config error: sever: unknown section"),
        ({"server": []}, "config error: server: expected an object, got list"),
        (
            {"presence": {"enabled": "yes"}},
            'config error: presence.enabled: expected true or false, got "yes"',
        ),
        (
            {"limits": {"max_members": 1}},
            "config error: limits.max_members: expected integer 2-100000, got 1",
        ),
        ({"replicas": [{"host": 3}]}, "config error: replicas[0].host: expected string, got 3"),
        (
            {"heartbeat": {"interval_seconds": 30, "timeout_seconds": 10}},
            "config error: heartbeat.timeout_seconds",
        ),
    ],
)
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(raw, env={})
    assert str(e.value).startswith(message)


def test_optional_sections_accepted():
    s = config.from_dict(
        {
            **DESIGN_EXAMPLE,
            "redis": {"enabled": True, "port": 6380},
            "replicas": [{"host": "pi-3", "port": 3306}],
            "uploads": {"max_file_bytes": 1},
            "metrics": {"enabled": True},
            "tls": {},
            "ai": {"base_url": "x"},
            "limits": {"max_members": 50},
            "auth": {"open_registration": False},
        },
        env={},
    )
    assert s.redis.port == 6380 and s.replicas[0].host == "pi-3" and s.limits.max_members == 50


def test_environment_overrides():
    env = {
        "BERRYCHAT_SERVER__PORT": "9001",
        "BERRYCHAT_DATABASE__PASSWORD": "s3cret",
        "BERRYCHAT_PRESENCE__ENABLED": "false",
        "BERRYCHAT_LIMITS__GROUP_COMMIT_MS": "0.5",
    }
    s = config.from_dict(DESIGN_EXAMPLE, env=env)
    assert s.server.port == 9001 and s.database.password == "s3cret"
    assert s.presence.enabled is False and s.limits.group_commit_ms == 0.5
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({}, env={"BERRYCHAT_SERVER__PORT": "http"})
    assert (
        str(e.value) == 'config error: BERRYCHAT_SERVER__PORT: expected integer 0-65535, got "http"'
    )


def test_check_config_cli(tmp_path, capsys):
    good = write_config(tmp_path / "config.json", DESIGN_EXAMPLE)
    assert main(["check-config", str(good)]) == 0
    assert "config ok" in capsys.readouterr().out
    bad = write_config(tmp_path / "bad.json", {"database": {"port": "abc"}})
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'config error: database.port: expected integer 1-65535, got "abc"'
    broken = write_config(tmp_path / "broken.json", "{nope")
    assert main(["check-config", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.json")]) == 2


def test_redacted_hides_passwords():
    s = config.from_dict(DESIGN_EXAMPLE, env={})
    assert config.redacted(s)["database"]["password"] == "***"
