"""Behaviour of the pi_base role on a virtual Pi (testinfra, podman connection)."""

from __future__ import annotations

import re

import pytest
from molecule_podman_hosts import hosts_in

testinfra_hosts = hosts_in("all")

ADMIN = "berry"
KEY = "/root/pi_base_test_key"
SSH = (
    "ssh -p 22 -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o ConnectTimeout=20 -o LogLevel=ERROR"
)


def ssh(host, user: str, command: str = "true", extra: str = ""):
    return host.run(f"{SSH} {extra} -i {KEY} {user}@127.0.0.1 {command!r}")


# --- sshd ----------------------------------------------------------------------------------


def test_sshd_full_config_is_valid(host):
    assert host.run("/usr/sbin/sshd -t").rc == 0


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("passwordauthentication", "no"),
        ("kbdinteractiveauthentication", "no"),
        ("permitrootlogin", "no"),
        ("pubkeyauthentication", "yes"),
        ("authenticationmethods", "publickey"),
        ("permitemptypasswords", "no"),
        ("allowgroups", "ssh-users"),
        ("x11forwarding", "no"),
        ("allowtcpforwarding", "no"),
        ("maxauthtries", "3"),
    ],
)
def test_sshd_effective_settings(host, keyword, value):
    effective = host.check_output(
        "/usr/sbin/sshd -T -C user=%s,host=localhost,addr=127.0.0.1", ADMIN
    )
    settings = dict(line.split(" ", 1) for line in effective.splitlines() if " " in line)
    assert settings[keyword] == value


def test_sshd_runs_and_listens_on_22(host):
    assert host.service("ssh").is_running
    assert host.service("ssh").is_enabled
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_admin_logs_in_with_key_and_gets_locale_and_limits(host):
    out = ssh(
        host,
        ADMIN,
        "id -un; id -Gn; echo LANG=$LANG; ulimit -n",
    )
    assert out.rc == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == ADMIN
    assert "ssh-users" in out.stdout
    assert "LANG=en_GB.UTF-8" in lines
    nofile = host.check_output(
        "sed -n 's/^\\*  *hard  *nofile  *//p' /etc/security/limits.d/60-berrychat.conf"
    )
    assert nofile and nofile in lines, "pam_limits did not apply the limits file to the session"


def test_admin_may_sudo_without_password(host):
    # Asked as root: under qemu-user emulation setuid binaries (sudo itself) do not gain root
    # (binfmt_misc without the C flag), so sudo cannot be run from the admin's session there.
    rights = host.check_output(f"sudo -l -U {ADMIN}")
    assert "(ALL : ALL) NOPASSWD: ALL" in rights
    assert host.run("visudo -c").rc == 0


def test_password_login_is_not_even_offered(host):
    out = ssh(
        host,
        ADMIN,
        extra="-o PubkeyAuthentication=no"
        " -o PreferredAuthentications=password,keyboard-interactive",
    )
    assert out.rc == 255
    # The server lists the methods it accepts: only publickey.
    assert "Permission denied (publickey)" in out.stderr


def test_root_is_refused_even_with_a_valid_key(host):
    out = ssh(host, "root")
    assert out.rc == 255
    assert "Permission denied" in out.stderr


def test_user_outside_allowgroups_is_refused_even_with_a_valid_key(host):
    out = ssh(host, "outsider")
    assert out.rc == 255
    assert "Permission denied" in out.stderr


# --- admin user ----------------------------------------------------------------------------


def test_admin_user_has_exactly_the_inventory_key(host):
    user = host.user(ADMIN)
    assert user.exists
    assert "ssh-users" in user.groups
    keys = host.file(f"/home/{ADMIN}/.ssh/authorized_keys")
    assert keys.user == ADMIN
    assert keys.mode == 0o600
    expected = host.check_output(f"ssh-keygen -y -f {KEY}").split()[1]
    lines = [line for line in keys.content_string.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0]


def test_admin_user_has_no_password(host):
    shadow = host.check_output(f"getent shadow {ADMIN}").split(":")[1]
    assert shadow.startswith("!") or shadow == "*"


# --- time zone, locale, chrony ----------------------------------------------------------------


def test_time_zone_is_applied(host):
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Europe/Berlin"
    assert host.file("/etc/timezone").content_string.strip() == "Europe/Berlin"
    # The C library really uses it: Berlin is UTC+1 or UTC+2.
    assert host.check_output("env -u TZ date +%z") in ("+0100", "+0200")


def test_locales_are_generated_and_default(host):
    available = host.check_output("locale -a").split()
    assert "en_GB.utf8" in available
    assert "de_DE.utf8" in available
    assert "LANG=en_GB.UTF-8" in host.file("/etc/default/locale").content_string


def test_chrony_runs_and_answers(host):
    assert host.service("chrony").is_running
    assert host.service("chrony").is_enabled
    # chronyc talks to the running daemon over its socket.
    out = host.run("chronyc -n tracking")
    assert out.rc == 0, out.stderr
    assert "Reference ID" in out.stdout


# --- journald ------------------------------------------------------------------------------


def test_journald_limits_are_effective(host):
    conf = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=48M" in conf
    # journald reports the limit it actually enforces when it opens the journal.
    log = host.check_output("journalctl -b -u systemd-journald --no-pager -o cat")
    limits = re.findall(
        r"System Journal \(/var/log/journal/[^)]*\) is [^,]+, max ([0-9.]+[KMG])", log
    )
    assert limits, log[-2000:]
    assert limits[-1] == "48.0M"
    assert host.file("/var/log/journal").is_directory


# --- kernel settings and limits ------------------------------------------------------------


def test_sysctl_file_is_written_and_sized_from_ram(host):
    conf = host.file("/etc/sysctl.d/60-berrychat.conf").content_string
    settings = {
        k.strip(): v.strip()
        for k, v in (
            line.split("=", 1)
            for line in conf.splitlines()
            if "=" in line and not line.startswith("#")
        )
    }
    assert settings["net.core.somaxconn"] == "4096"
    assert settings["fs.file-max"] == "1048576"
    assert settings["net.ipv4.ip_local_port_range"] == "10240 65535"
    mem_kb = int(host.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo"))
    mem_mb = mem_kb // 1024
    assert settings["net.ipv4.tcp_mem"] == f"{mem_mb * 8} {mem_mb * 16} {mem_mb * 32}"


def test_limits_file_is_present(host):
    limits = host.file("/etc/security/limits.d/60-berrychat.conf")
    assert limits.exists
    assert re.search(r"^\*\s+soft\s+nofile\s+\d+$", limits.content_string, re.MULTILINE)


# --- unattended upgrades -------------------------------------------------------------------


def test_unattended_upgrades_are_security_only(host):
    assert host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    # Ask unattended-upgrade's own code which origins it would install from (a full
    # --dry-run simulates an upgrade and takes minutes under emulation).
    out = host.run(
        "python3 -c 'import importlib.machinery as m, apt_pkg;"
        ' u = m.SourceFileLoader("uu", "/usr/bin/unattended-upgrade").load_module();'
        " apt_pkg.init_config(); print(*u.get_allowed_origins())'"
    )
    assert out.rc == 0, out.stderr
    origins = out.stdout.split()
    assert origins, out.stdout
    assert all("label=Debian-Security" in o for o in origins), origins
