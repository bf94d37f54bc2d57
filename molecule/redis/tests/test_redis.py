"""Behaviour of the redis role: auth, ACLs, memory sizing, binding, pub/sub from another host."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import pytest
import testinfra
from molecule_podman_hosts import hosts_in, hostvars

SERVER = hosts_in("redis")
CLIENT = hosts_in("chat_servers")
# The shared plugin sets testinfra's host list to every container, which wins over a module's
# testinfra_hosts; so the tests name their hosts explicitly through the fixtures below.
SERVER_NAME = SERVER[0].removeprefix("podman://")


@pytest.fixture(scope="module")
def server():
    return testinfra.get_host(SERVER[0])


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host(CLIENT[0])


def secret(name: str) -> str:
    base = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    secrets = (
        Path(base, "secrets") if base else Path(hostvars(SERVER_NAME)["berrychat_secrets_dir"])
    )
    return (secrets / name).read_text().strip()


@pytest.fixture(scope="module")
def app_password() -> str:
    return secret("redis_password")


@pytest.fixture(scope="module")
def admin_password() -> str:
    return secret("redis_admin_password")


def cli(
    host,
    *args: str,
    user: str | None = None,
    password: str | None = None,
    server: str = "127.0.0.1",
):
    env = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    who = f"--user {user} " if user else ""
    cmd = " ".join(shlex.quote(a) for a in args)
    return host.run(f"{env}redis-cli -h {server} -p 6379 {who}--no-auth-warning {cmd}")


def test_password_files_stay_on_the_controller(server, app_password, admin_password):
    assert len(app_password) == 32 and app_password.isalnum()
    assert app_password != admin_password
    conf = server.file("/etc/redis/redis.conf")
    assert conf.mode == 0o640
    assert conf.user == "redis"
    # Only SHA-256 hashes on the Pi, never the passwords.
    assert app_password not in conf.content_string
    assert admin_password not in conf.content_string


def test_ping_with_generated_password(server, app_password):
    out = cli(server, "PING", user="berrychat", password=app_password)
    assert out.stdout.strip() == "PONG", out.stdout + out.stderr


def test_no_auth_is_refused(server):
    out = cli(server, "PING")
    assert "NOAUTH" in out.stdout + out.stderr


def test_wrong_password_is_refused(server):
    out = cli(server, "PING", user="berrychat", password="not-the-password")
    assert "WRONGPASS" in out.stdout + out.stderr


def test_default_user_is_off(server, admin_password):
    out = cli(server, "ACL", "LIST", user="admin", password=admin_password)
    default = next(line for line in out.stdout.splitlines() if line.startswith("user default "))
    assert " off " in default


def test_set_get_with_ttl(server, app_password):
    assert (
        cli(
            server,
            "SET",
            "presence:alice",
            "online",
            "EX",
            "60",
            user="berrychat",
            password=app_password,
        ).stdout.strip()
        == "OK"
    )
    assert (
        cli(server, "GET", "presence:alice", user="berrychat", password=app_password).stdout.strip()
        == "online"
    )
    ttl = int(
        cli(server, "TTL", "presence:alice", user="berrychat", password=app_password).stdout.strip()
    )
    assert 0 < ttl <= 60


@pytest.mark.parametrize(
    "command",
    [
        ["FLUSHALL"],
        ["FLUSHDB"],
        ["CONFIG", "GET", "maxmemory"],
        ["KEYS", "*"],
        ["ACL", "LIST"],
        ["SHUTDOWN"],
    ],
)
def test_dangerous_commands_are_refused_for_the_app_user(server, app_password, command):
    out = cli(server, *command, user="berrychat", password=app_password)
    assert "NOPERM" in out.stdout + out.stderr, out.stdout + out.stderr
    assert cli(server, "PING", user="berrychat", password=app_password).stdout.strip() == "PONG"


def expected_maxmemory_mb(server) -> int:
    """Independent re-computation: 10% of RAM or of the cgroup limit (smaller), at least 64 MB."""
    mem_mb = int(server.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo")) // 1024
    limit = server.check_output(
        "cat /sys/fs/cgroup/memory.max 2>/dev/null"
        " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    if limit.isdigit():
        mem_mb = min(mem_mb, int(limit) // 1048576)
    return max(64, mem_mb * 10 // 100)


def test_maxmemory_is_what_the_role_computed(server, admin_password):
    out = cli(server, "CONFIG", "GET", "maxmemory", user="admin", password=admin_password)
    assert int(out.stdout.split()[1]) == expected_maxmemory_mb(server) * 1024 * 1024
    policy = cli(server, "CONFIG", "GET", "maxmemory-policy", user="admin", password=admin_password)
    assert policy.stdout.split()[1] == "allkeys-lru"


def test_no_persistence(server, admin_password):
    save = cli(
        server, "CONFIG", "GET", "save", user="admin", password=admin_password
    ).stdout.splitlines()
    assert save[0] == "save" and (len(save) == 1 or save[1] == "")
    aof = cli(
        server, "CONFIG", "GET", "appendonly", user="admin", password=admin_password
    ).stdout.split()
    assert aof[1] == "no"


def test_binds_to_localhost_and_the_fleet_interface_only(server):
    listening = server.check_output("ss -Hltn 'sport = :6379'")
    addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()}
    fleet_ip = server.check_output("ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1")
    assert "127.0.0.1" in addresses
    assert fleet_ip in addresses
    assert "0.0.0.0" not in addresses and "*" not in addresses


def test_debian_unit_hardening_is_kept(server):
    assert server.service("redis-server").is_running
    assert server.service("redis-server").is_enabled
    show = server.check_output(
        "systemctl show redis-server"
        " -p ProtectSystem -p NoNewPrivileges -p User -p PrivateTmp -p ProtectHome"
    )
    props = dict(line.split("=", 1) for line in show.splitlines())
    assert props == {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "User": "redis",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }


def test_kernel_settings_are_written(server):
    assert "vm.overcommit_memory = 1" in server.file("/etc/sysctl.d/61-redis.conf").content_string
    assert "madvise" in server.file("/etc/tmpfiles.d/60-redis-thp.conf").content_string


def test_validator_rejects_a_broken_config_and_accepts_the_real_one(server):
    assert server.run("/usr/local/sbin/berrychat-redis-check-config /etc/redis/redis.conf").rc == 0
    server.run(
        "sed 's/^maxmemory-policy .*/maxmemory-policy keep-everything/'"
        " /etc/redis/redis.conf > /root/broken.conf"
    )
    out = server.run("/usr/local/sbin/berrychat-redis-check-config /root/broken.conf")
    server.run("rm -f /root/broken.conf")
    assert out.rc == 1
    assert "FATAL CONFIG FILE ERROR" in out.stderr


# --- From the stand-in BerryChat server over the podman network ----------------------------


def test_remote_client_needs_auth(client, app_password):
    out = cli(client, "PING", server=SERVER_NAME)
    assert "NOAUTH" in out.stdout + out.stderr
    out = cli(client, "PING", user="berrychat", password=app_password, server=SERVER_NAME)
    assert out.stdout.strip() == "PONG", out.stdout + out.stderr


def test_pubsub_across_containers(server, client, app_password):
    """A subscriber on the client container receives what the server side publishes."""
    channel = "berrychat:room:42"
    client.run("rm -f /tmp/sub.out")
    client.run(
        f"REDISCLI_AUTH={app_password} timeout 60 redis-cli -h {SERVER_NAME} --user berrychat "
        f"--no-auth-warning SUBSCRIBE {channel} > /tmp/sub.out 2>&1 &"
    )
    receivers = 0
    for _ in range(60):  # bounded: at most ~60 s under emulation
        out = cli(
            server, "PUBLISH", channel, "hello-from-server", user="berrychat", password=app_password
        )
        receivers = int(out.stdout.strip() or 0)
        if receivers:
            break
        time.sleep(1)
    assert receivers == 1
    for _ in range(30):
        if "hello-from-server" in client.file("/tmp/sub.out").content_string:
            break
        time.sleep(1)
    assert "hello-from-server" in client.file("/tmp/sub.out").content_string
    client.run("pkill -f 'redis-cli -h .* SUBSCRIBE' || true")
