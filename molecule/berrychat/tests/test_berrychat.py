"""The berrychat role leaves working, sandboxed, health-checked instances."""

from __future__ import annotations

import json
import shlex
import uuid

from molecule_podman_hosts import hosts_in

testinfra_hosts = hosts_in("chat_servers")
PORTS = (8100, 8101)


# curl is not part of the image: the requests are made with the Pi's own Python.
_HTTP_SCRIPT = r"""
import json, sys, urllib.error, urllib.request
method, url, body, token = sys.argv[1:5]
headers = {"Content-Type": "application/json"}
if token:
    headers["Authorization"] = "Bearer " + token
req = urllib.request.Request(url, data=body.encode() or None, headers=headers, method=method)
try:
    resp = urllib.request.urlopen(req, timeout=10)
    code, data = resp.status, resp.read()
except urllib.error.HTTPError as e:
    code, data = e.code, e.read()
sys.stdout.write(data.decode() + "\n" + str(code))
"""


def _http(host, method: str, port: int, path: str, body: dict | None = None, token: str = ""):
    args = (
        _HTTP_SCRIPT,
        method,
        f"http://127.0.0.1:{port}{path}",
        json.dumps(body) if body else "",
        token,
    )
    out = host.check_output("python3 -c " + " ".join(shlex.quote(a) for a in args))
    text, _, code = out.rpartition("\n")
    return int(code), (json.loads(text) if text.strip() else None)


def test_every_instance_runs_under_systemd(host):
    for port in PORTS:
        svc = host.service(f"berrychat@{port}")
        assert svc.is_running and svc.is_enabled
    assert not host.service("berrychat@8102").is_running


def test_instances_run_sandboxed_as_the_service_user(host):
    props = host.check_output(
        "systemctl show berrychat@8100 -p User -p ProtectSystem -p NoNewPrivileges -p LimitNOFILE"
    )
    assert "User=berrychat" in props
    assert "ProtectSystem=strict" in props
    assert "NoNewPrivileges=yes" in props
    assert "LimitNOFILE=16384" in props


def test_installed_from_the_wheelhouse(host):
    assert host.file("/opt/berrychat/venv/bin/berrychat").is_file
    wheels = host.check_output("ls /opt/berrychat/wheelhouse")
    assert "berrychat-" in wheels and "argon2" in wheels.lower()


def test_config_is_valid_and_private(host):
    cfg = host.file("/etc/berrychat/config.json")
    assert cfg.mode == 0o640 and cfg.group == "berrychat"
    out = host.run("/opt/berrychat/venv/bin/berrychat check-config /etc/berrychat/config.json")
    assert out.rc == 0, out.stderr


def test_ready_and_sharing_one_database(host):
    for port in PORTS:
        code, body = _http(host, "GET", port, "/readyz")
        assert code == 200, body
    name = "u" + uuid.uuid4().hex[:10]
    creds = {"username": name, "password": "correct horse battery", "device_id": "molecule"}
    code, body = _http(host, "POST", PORTS[0], "/api/v1/register", creds)
    assert code in (200, 201), body
    # Registered on one instance, logs in on the other: both use the same database.
    code, body = _http(host, "POST", PORTS[1], "/api/v1/login", creds)
    assert code == 200, body
    assert body and any("token" in k for k in body), body
