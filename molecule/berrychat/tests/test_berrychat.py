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


# An upload streamed to one instance, sent in a conversation, downloaded through the other: the
# answer is an X-Accel-Redirect for Nginx, and the stored file is readable by Nginx's group.
_UPLOAD_SCRIPT = r"""
import json, sys, urllib.request
port, token, other = sys.argv[1], sys.argv[2], sys.argv[3]
base = "http://127.0.0.1:" + port
data = b"PK\x05\x06" + bytes(18)
req = urllib.request.Request(base + "/api/v1/uploads?name=empty.zip", data=data, method="POST",
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/zip"})
att = json.loads(urllib.request.urlopen(req, timeout=10).read())["attachment"]
conv = json.loads(urllib.request.urlopen(urllib.request.Request(base + "/api/v1/conversations",
    data=json.dumps({"kind": "group", "members": [], "title": "files"}).encode(), method="POST",
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"}),
    timeout=10).read())["conv"]
urllib.request.urlopen(urllib.request.Request(base + f"/api/v1/conversations/{conv}/messages",
    data=json.dumps({"cid": "m1", "attachment": att["id"]}).encode(), method="POST",
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"}), timeout=10)
resp = urllib.request.urlopen(urllib.request.Request(
    "http://127.0.0.1:" + other + "/api/v1/files/" + att["id"],
    headers={"Authorization": "Bearer " + token}), timeout=10)
print(json.dumps({"sha": att["sha256"], "status": resp.status,
    "accel": resp.headers.get("X-Accel-Redirect"), "type": resp.headers.get("Content-Type")}))
"""


def test_uploads_directory_and_accel_redirect(host):
    d = host.file("/var/lib/berrychat/uploads")
    assert d.is_directory and d.user == "berrychat" and d.group == "www-data"
    assert d.mode == 0o2750
    assert host.file("/var/lib/berrychat").mode == 0o751
    cfg = json.loads(host.file("/etc/berrychat/config.json").content_string)
    assert cfg["uploads"]["accel_prefix"] == "/_protected/uploads/"
    name = "f" + uuid.uuid4().hex[:10]
    creds = {"username": name, "password": "correct horse battery", "device_id": "molecule"}
    assert _http(host, "POST", PORTS[0], "/api/v1/register", creds)[0] in (200, 201)
    token = _http(host, "POST", PORTS[0], "/api/v1/login", creds)[1]["token"]
    args = (_UPLOAD_SCRIPT, str(PORTS[0]), token, str(PORTS[1]))
    out = json.loads(host.check_output("python3 -c " + " ".join(shlex.quote(a) for a in args)))
    sha = out["sha"]
    assert out["status"] == 200 and out["type"] == "application/zip"
    assert out["accel"] == f"/_protected/uploads/{sha[:2]}/{sha[2:4]}/{sha}"
    f = host.file(f"/var/lib/berrychat/uploads/{sha[:2]}/{sha[2:4]}/{sha}")
    assert f.is_file and f.user == "berrychat" and f.group == "www-data" and f.mode == 0o640
    # Nginx's user can read it; other users cannot even list the data directory
    assert host.run(f"runuser -u www-data -- cat {f.path}").rc == 0
    assert host.run("runuser -u nobody -- ls /var/lib/berrychat").rc != 0


def test_media_dependencies_in_the_wheelhouse(host):
    wheels = host.check_output("ls /opt/berrychat/wheelhouse").lower()
    assert "pillow-" in wheels and "mutagen-" in wheels
    py = "/opt/berrychat/venv/bin/python"
    assert host.run(f"{py} -c 'import PIL.Image, mutagen'").rc == 0
