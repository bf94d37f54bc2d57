"""install.sh on a fresh Debian bookworm "Pi": the real script, twice, in one native container.

The container is the project's virtual Pi image (native twin; systemd as PID 1, memory limit,
explicit ulimits, the project's podman network, NET_ADMIN so ufw really applies its rules). The
checkout is copied in, as a user would download it, and `./install.sh` runs inside with a local
connection. Then:

- the printed URL serves the web client over HTTPS (the self-signed certificate install.sh
  asked for verifies for the printed address), and the printed admin login logs in through it;
- every BerryChat instance answers /readyz (nginx serves the web client at /, not /readyz);
- `playbooks/backup.yml` against the generated inventory fetches a real dump (and the uploads
  archive) to the controller side (here: the same Pi);
- a second `./install.sh` reports changed=0.

Run: `make test-install` (about 15-25 min natively; not part of `make test`). Wall times are
printed and the full output of both runs is kept in .cache/install-sh/.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".cache" / "install-sh"
ARCH = os.environ.get("INSTALL_SH_ARCH", "native")
IMAGE = f"localhost/berrychat-pi:{ARCH}"
NAME = "install-sh-pi"
NETWORK = os.environ.get("MOLECULE_NETWORK", "berrychat-test")
APT_CACHE = Path(os.environ.get("BERRYCHAT_APT_CACHE", "/var/cache/berrychat/apt"), ARCH, NAME)
SRC = "/opt/berrychat"
# The controller's CA bundle, handed to pip inside the container: a TLS-inspecting proxy that
# this machine trusts for PyPI is then trusted there too (a real Pi needs nothing of the kind).
CONTROLLER_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Bounded by the clock: a run that hangs is killed rather than eating CI's budget.
RUN_TIMEOUT_S = int(os.environ.get("INSTALL_SH_TIMEOUT", "3000"))
# What the test machine's containers need (hard open-files limit 20000, no access to Grafana's
# APT repository); passed through install.sh to ansible-playbook, as a user could.
# (JSON, so that false is a boolean: key=value extra vars are strings.)
EXTRA_ARGS = ["-e", '{"grafana_enabled": false, "berrychat_nofile_limit": 16384}']
# INSTALL_SH_ARCH=arm64 (emulated): netfilter cannot be configured from emulated arm64 binaries
# (qemu-user has no NETLINK_NETFILTER), so the firewall is left out there; the native run and
# molecule/ufw enforce it.
if ARCH == "arm64":
    EXTRA_ARGS += ["-e", '{"ufw_enabled": false}']


def podman(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


def checkout_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files that exist: what a user would download."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(f for f in set(out.split("\0")) if f and (ROOT / f).is_file())


def run_install(tag: str) -> tuple[str, float]:
    LOGS.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = ["-e", "PIP_CERT=/etc/berrychat-controller-ca.pem"] if CONTROLLER_CA.exists() else []
    proc = podman("exec", *env, "-w", SRC, NAME, "./install.sh", *EXTRA_ARGS, timeout=RUN_TIMEOUT_S)
    took = time.monotonic() - start
    out = proc.stdout + proc.stderr
    (LOGS / f"{tag}.log").write_text(out)
    print(f"install.sh {tag} run: {took:.0f} s (rc {proc.returncode})")
    assert proc.returncode == 0, (
        f"install.sh {tag} run failed (rc {proc.returncode}):\n{out[-4000:]}"
    )
    return out, took


@pytest.fixture(scope="module")
def pi():
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (make host)")
    if podman("image", "exists", IMAGE).returncode != 0:
        pytest.skip(f"{IMAGE} is not built (make images)")
    podman("rm", "-f", "-t", "5", NAME)
    if podman("network", "exists", NETWORK).returncode != 0:
        podman("network", "create", NETWORK)
    (APT_CACHE / "partial").mkdir(parents=True, exist_ok=True)
    started = podman(
        "run", "-d", "--name", NAME, "--hostname", NAME, "--network", NETWORK,
        "--memory", "3g", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=8192:8192",
        "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--systemd", "always",
        "-v", f"{APT_CACHE}:/var/cache/apt/archives:rw", "--label", "berrychat-test=true",
        IMAGE, "/sbin/init",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        state = ""
        for _ in range(90):  # bounded: about 3 minutes
            state = podman("exec", NAME, "systemctl", "is-system-running", "--wait").stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(2)
        assert state in ("running", "degraded"), f"container did not boot: {state}"
        tar = subprocess.run(
            ["tar", "-C", str(ROOT), "-cf", "-", "--null", "-T", "-"],
            input="\0".join(checkout_files()).encode(),
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
        podman("exec", NAME, "mkdir", "-p", SRC)
        copied = subprocess.run(
            ["podman", "exec", "-i", NAME, "tar", "-C", SRC, "-xf", "-"],
            input=tar,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert copied.returncode == 0, copied.stderr
        if CONTROLLER_CA.exists():
            podman("cp", str(CONTROLLER_CA), f"{NAME}:/etc/berrychat-controller-ca.pem")
        yield NAME
    finally:
        if not os.environ.get("INSTALL_SH_KEEP"):
            podman("rm", "-f", "-t", "5", NAME)


@pytest.fixture(scope="module")
def first_run(pi: str) -> str:
    out, _ = run_install("first")
    return out


def test_first_run_prints_a_working_url_and_admin_login(pi: str, first_run: str) -> None:
    url = re.search(r"^URL:\s+(https://\S+/)", first_run, re.M)
    login = re.search(r"^Admin login:\s+(\S+) / (\S+)", first_run, re.M)
    assert url and login, first_run[-3000:]
    base = url.group(1)
    # The certificate install.sh asked for (self-signed, with this address as a SAN) verifies
    # the printed URL: read it from the Pi and trust only it.
    cert = podman(
        "exec", pi, "sh", "-c", "cat /etc/letsencrypt/live/*/fullchain.pem | head -c 20000"
    ).stdout
    ctx = ssl.create_default_context(cadata=cert)
    # Straight to the container: never through a proxy the environment may name.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    with opener.open(base, timeout=30) as r:
        page = r.read().decode()
    assert r.status == 200 and "BerryChat" in page
    req = urllib.request.Request(
        base + "api/v1/login",
        data=json.dumps({"username": login.group(1), "password": login.group(2)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(req, timeout=30) as r:
        body = json.loads(r.read())
    assert r.status == 200 and body["token"] and body["user"]["username"] == login.group(1)


def test_every_instance_is_ready(pi: str, first_run: str) -> None:
    units = podman(
        "exec", pi, "systemctl", "list-units", "--no-legend", "--state=active", "berrychat@*"
    ).stdout
    ports = re.findall(r"berrychat@(\d+)\.service", units)
    assert ports, units
    for port in ports:
        ready = podman("exec", pi, "curl", "-fsS", f"http://127.0.0.1:{port}/readyz")
        assert ready.returncode == 0, ready.stderr
        assert json.loads(ready.stdout)["status"] == "ready"


def test_backup_playbook_fetches_a_real_dump(pi: str, first_run: str) -> None:
    # Something in the uploads directory, so the archive has content to prove.
    podman("exec", pi, "sh", "-c", "echo hello > /var/lib/berrychat/uploads/install-sh-probe")
    run = podman(
        "exec", "-w", SRC, pi, ".venv/bin/ansible-playbook", "-i", "inventory/pi",
        "playbooks/backup.yml", timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    found = podman("exec", pi, "sh", "-c", f"ls -d {SRC}/.secrets/pi/backups/*/*/").stdout.split()
    assert len(found) == 1, found
    dumps = podman("exec", pi, "sh", "-c", f"ls {found[0]}*.sql.gz").stdout.split()
    assert len(dumps) == 1, dumps
    raw = subprocess.run(
        ["podman", "exec", pi, "cat", dumps[0]], capture_output=True, check=True, timeout=60
    ).stdout
    sql = gzip.decompress(raw).decode()
    assert "CREATE TABLE `users`" in sql and "INSERT INTO `users`" in sql
    archives = podman("exec", pi, "sh", "-c", f"ls {found[0]}uploads-*.tar.gz").stdout.split()
    assert len(archives) == 1, archives
    LOGS.mkdir(parents=True, exist_ok=True)
    local = LOGS / "uploads.tar.gz"
    local.write_bytes(
        subprocess.run(
            ["podman", "exec", pi, "cat", archives[0]], capture_output=True, check=True
        ).stdout
    )
    with tarfile.open(local) as tf:
        member = tf.extractfile("uploads/install-sh-probe")
        assert member is not None and member.read() == b"hello\n"
    # the archive was removed from the Pi's /var/tmp again
    assert podman("exec", pi, "sh", "-c", "ls /var/tmp/berrychat-uploads-*").returncode != 0


def test_second_run_changes_nothing(pi: str, first_run: str) -> None:
    out, _ = run_install("second")
    recap = re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+).*failed=(\d+)", out, re.M)
    assert recap, out[-3000:]
    assert all(changed == "0" and failed == "0" for _, changed, failed in recap), recap
