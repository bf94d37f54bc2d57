"""The berrychat command: migrate, user add|disable|enable|reset-password, serve."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import make_settings, start_world

from berrychat.cli import main
from berrychat.client import ClientError, http_json, login


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(
        json.dumps(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "database": {"type": "sqlite", "database": str(tmp_path / "cli.db")},
                "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 64},
            }
        )
    )
    return p


def test_migrate_is_safe_to_rerun(cfg, capsys):
    assert main(["migrate", "--config", str(cfg)]) == 0
    assert "applied migrations: [1, 2" in capsys.readouterr().out
    assert main(["migrate", "--config", str(cfg)]) == 0
    assert "schema is current" in capsys.readouterr().out


def test_user_commands(cfg, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BC_PW", "first password")
    assert (
        main(["user", "--config", str(cfg), "add", "Admin1", "--admin", "--password-env", "BC_PW"])
        == 0
    )
    assert "created user admin1" in capsys.readouterr().out
    assert main(["user", "--config", str(cfg), "add", "admin1", "--password-env", "BC_PW"]) == 1
    assert "user_exists" in capsys.readouterr().err
    monkeypatch.setenv("BC_PW2", "second password")
    assert (
        main(["user", "--config", str(cfg), "reset-password", "admin1", "--password-env", "BC_PW2"])
        == 0
    )
    assert main(["user", "--config", str(cfg), "disable", "admin1"]) == 0
    assert main(["user", "--config", str(cfg), "disable", "ghost"]) == 1
    assert main(["user", "--config", str(cfg), "enable", "admin1"]) == 0
    capsys.readouterr()

    async def check():
        settings = make_settings({"type": "sqlite", "database": str(tmp_path / "cli.db")})
        w = await start_world(settings)
        try:
            with pytest.raises(ClientError):
                await login(w.host, w.port, "admin1", "first password")
            s = await login(w.host, w.port, "admin1", "second password")
            assert s["user"]["role"] == "admin"
        finally:
            await w.server.stop(drain_seconds=0.2)

    asyncio.run(check())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            return asyncio.run(http_json("127.0.0.1", port, "GET", "/readyz", timeout=2))
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


def test_serve_defaults_in_working_directory_and_sigterm(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "BERRYCHAT_SERVER__PORT": str(port),
        "BERRYCHAT_AUTH__ARGON2_MEMORY_KIB": "64",
        "BERRYCHAT_AUTH__ARGON2_TIME_COST": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "berrychat", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        st, r = _wait_http(port, proc)
        assert st == 200 and r["status"] == "ready"
        assert (tmp_path / "berrychat.db").exists()  # embedded default: SQLite in the cwd
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_bad_config_stops_with_one_clear_message(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(
        json.dumps({"server": {"port": 8080}, "database": {"type": "mysql", "port": "abc"}})
    )
    r = subprocess.run(
        [sys.executable, "-m", "berrychat", "serve", "--config", str(bad)],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (
        'config error: database.port: expected integer 1-65535, got "abc"'
    )


def test_unreachable_database_is_one_clear_message(tmp_path, capsys):
    port = _free_port()  # nothing listens there
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {"database": {"type": "mysql", "host": "127.0.0.1", "port": port, "connect_timeout": 2}}
        )
    )
    assert main(["migrate", "--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"database error: cannot connect to MariaDB at 127.0.0.1:{port}")
