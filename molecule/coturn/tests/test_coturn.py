"""Behaviour of the coturn role: relays with time-limited credentials, refusals, hardening."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shlex
import time
from pathlib import Path

import pytest
import testinfra
from molecule_podman_hosts import hosts_in, hostvars

SERVER = hosts_in("turn")
CLIENT = hosts_in("turn_clients")
SERVER_NAME = SERVER[0].removeprefix("podman://")
PEER_PORT = 3480


@pytest.fixture(scope="module")
def server():
    return testinfra.get_host(SERVER[0])


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host(CLIENT[0])


@pytest.fixture(scope="module")
def secret() -> str:
    """The secret generated on the controller (the one BerryChat computes credentials from)."""
    base = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    secrets = (
        Path(base, "secrets") if base else Path(hostvars(SERVER_NAME)["berrychat_secrets_dir"])
    )
    return (secrets / "coturn_static_auth_secret").read_text().strip()


def address(host) -> str:
    return host.run("hostname -I").stdout.split()[0]


def credential(secret: str, user: str = "42", ttl: int = 600) -> tuple[str, str]:
    """TURN REST API pair, as BerryChat's server computes it (server/berrychat/calls/ice.py)."""
    username = f"{int(time.time()) + ttl}:{user}"
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode()


def uclient(client, server_ip: str, user: str, password: str, peer: str, *flags: str):
    """Allocate a relay on the server and send 5 packets through it to the echo peer."""
    argv = ["timeout", "30", "turnutils_uclient", *flags, "-u", user, "-w", password]
    argv += ["-e", peer, "-r", str(PEER_PORT), "-n", "5", "-m", "1", "-c", server_ip]
    return client.run(shlex.join(argv))


def relayed_all(result) -> bool:
    out = result.stdout + result.stderr
    return result.rc == 0 and "tot_recv_msgs=5" in out and "Total lost packets 0 " in out


def test_service_listens_only_where_it_should(server):
    assert server.service("coturn").is_running
    assert server.service("coturn").is_enabled
    assert (
        server.socket("udp://0.0.0.0:3478").is_listening
        or server.run("ss -lnu | grep -q ':3478 '").succeeded
    )
    assert server.run("ss -lnt | grep -q ':3478 '").succeeded
    assert server.run("ss -lnt | grep -q ':5349 '").succeeded
    # neither the telnet CLI (5766) nor the web admin (8080)
    assert server.run("ss -lnt | grep -qE ':(5766|8080) '").rc == 1


@pytest.mark.parametrize("flags", [(), ("-t",)], ids=["udp", "tcp"])
def test_valid_credential_relays_to_the_peer(server, client, secret, flags):
    user, password = credential(secret)
    result = uclient(client, address(server), user, password, address(client), *flags)
    assert relayed_all(result), result.stdout[-2000:] + result.stderr[-2000:]


# turnutils_uclient's TLS mode (-S) hangs now and then in SSL_connect (coturn 4.6.1), so TLS is
# proven with a small STUN client instead: a Binding request and an Allocate over TLS, the
# server's certificate verified against the stand-in edge certificate by name.
STUN_OVER_TLS = r"""
import os, socket, ssl, struct, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
def ask(kind, attrs=b""):
    tid = os.urandom(12)
    msg = struct.pack("!HHI", kind, len(attrs), 0x2112A442) + tid + attrs
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(msg)
            head = tls.recv(20)
            body = tls.recv(struct.unpack("!H", head[2:4])[0]) if len(head) == 20 else b""
    assert head[8:20] == tid, "transaction id mismatch"
    return struct.unpack("!H", head[:2])[0], body
def error_code(body):
    i = 0
    while i + 4 <= len(body):
        t, n = struct.unpack("!HH", body[i:i + 4])
        if t == 0x0009:
            return body[i + 6] * 100 + body[i + 7]
        i += 4 + n + (-n % 4)
print("binding", hex(ask(0x0001)[0]))
kind, body = ask(0x0003, struct.pack("!HHI", 0x0019, 4, 0x11000000))
print("allocate", hex(kind), error_code(body))
"""


def test_turn_over_tls_with_the_edge_certificate(server, client):
    cert = server.file("/etc/ssl/berrychat/fullchain.pem").content_string
    client.run(f"printf %s {shlex.quote(cert)} > /tmp/coturn-test-ca.pem")
    result = client.run(
        f"timeout 30 python3 -c {shlex.quote(STUN_OVER_TLS)} {SERVER_NAME} 5349"
        " /tmp/coturn-test-ca.pem"
    )
    assert result.rc == 0, result.stderr
    # Binding success; an Allocate without credentials is challenged (401), as over UDP/TCP.
    assert "binding 0x101" in result.stdout
    assert "allocate 0x113 401" in result.stdout
    old_tls = client.run(
        f"timeout 10 openssl s_client -connect {SERVER_NAME}:5349 -tls1_1 </dev/null"
    )
    assert old_tls.rc != 0  # TLS 1.0 and 1.1 are off


def test_wrong_secret_is_refused(server, client, secret):
    user, password = credential(secret + "x")
    result = uclient(client, address(server), user, password, address(client))
    assert result.rc != 0
    assert "Cannot complete Allocation" in result.stdout + result.stderr


def test_expired_credential_is_refused(server, client, secret):
    user, password = credential(secret, ttl=-60)
    result = uclient(client, address(server), user, password, address(client))
    assert result.rc != 0
    assert "Cannot complete Allocation" in result.stdout + result.stderr
    # and the same pair with a future expiry is accepted: the expiry alone made the difference
    user, password = credential(secret, ttl=600)
    assert relayed_all(uclient(client, address(server), user, password, address(client)))


@pytest.mark.parametrize("peer", ["server", "127.0.0.1"], ids=["fleet-address", "loopback"])
def test_relaying_into_the_fleet_is_refused(server, client, secret, peer):
    user, password = credential(secret)
    target = address(server) if peer == "server" else peer
    result = uclient(client, address(server), user, password, target)
    assert result.rc != 0
    assert "403 (Forbidden IP)" in result.stdout + result.stderr
    if peer == "server":  # (loopback is refused before the denied list is consulted)
        log = server.run("journalctl -u coturn --no-pager -n 200").stdout
        assert f"A peer IP {target} denied" in log


def test_secret_is_not_logged_nor_world_readable(server, secret):
    conf = server.file("/etc/turnserver.conf")
    assert conf.user == "root"
    assert conf.group == "turnserver"
    assert conf.mode == 0o640
    assert f"static-auth-secret={secret}" in conf.content_string
    journal = server.run("journalctl --no-pager -u coturn").stdout
    assert "check_stun_auth" in journal or "session" in journal  # the tests above were logged
    assert secret not in journal


def test_config_checker_refuses_a_bad_file(server):
    checker = "/usr/local/sbin/berrychat-coturn-check-config"
    assert server.run(f"{checker} /etc/turnserver.conf").rc == 0
    bad = server.run(
        "f=$(mktemp) && sed 's/^fingerprint$/fingerprnt/' /etc/turnserver.conf > $f"
        f" && {checker} $f; rc=$?; rm -f $f; exit $rc"
    )
    assert bad.rc == 1
    assert "Bad configuration format: fingerprnt" in bad.stderr
    wrong_ip = server.run(
        "f=$(mktemp) && cp /etc/turnserver.conf $f && echo external-ip=not-an-ip >> $f"
        f" && {checker} $f; rc=$?; rm -f $f; exit $rc"
    )
    assert wrong_ip.rc == 1
    # the checks started no second server: the running one kept its process
    assert server.service("coturn").is_running
