"""The virtual Pi behaves like the board it stands for, as far as a container can."""

from __future__ import annotations

import os
import subprocess

from molecule_podman_hosts import hosts_in

testinfra_hosts = hosts_in("all")

EXPECTED_MACHINE = {"arm64": "aarch64", "native": os.uname().machine}[
    os.environ.get("MOLECULE_ARCH", "arm64")
]


def test_architecture(host):
    assert host.check_output("uname -m") == EXPECTED_MACHINE


def test_systemd_is_pid1_and_booted(host):
    assert host.check_output("cat /proc/1/comm") == "systemd"
    # Every unit of a fresh boot started: "degraded" would hide e.g. systemd-tmpfiles-setup
    # failing (then /run/mysqld and friends are missing after the next restart).
    failed = host.run("systemctl list-units --failed --no-legend --plain").stdout.strip()
    assert failed == "", f"units failed at boot:\n{failed}"
    assert host.run("systemctl is-system-running").stdout.strip() == "running"


def test_boot_time_directories_are_created(host):
    # systemd-tmpfiles-setup ran: its tmpfiles.d entries exist on the fresh boot.
    assert host.check_output("systemctl show -p Result --value systemd-tmpfiles-setup") == "success"


def test_debian_bookworm_with_python(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.codename == "bookworm"
    assert host.exists("python3")


def inspect(name: str, template: str) -> str:
    """One field of `podman inspect` of a container, seen from the host."""
    return subprocess.run(
        ["podman", "inspect", "--format", template, name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_memory_limit_is_applied(host):
    assert int(inspect(host.backend.name, "{{.HostConfig.Memory}}")) == 1024**3


# The container's address on its (only) podman network.
NETWORK_ADDRESS = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"


def test_fleet_names_resolve_on_the_project_network(host):
    for other in hosts_in("all"):
        other_name = other.removeprefix("podman://")
        address = inspect(other_name, NETWORK_ADDRESS)
        # From /etc/hosts (molecule/shared/create.yml), not from aardvark-dns, which drops
        # queries while it reloads for other scenarios' containers.
        files = host.run(f"getent -s files hosts {other_name}")
        assert files.rc == 0, f"{other_name} is not in /etc/hosts"
        assert files.stdout.split()[0] == address
        # The system resolver (files first) gives the same answer.
        assert host.check_output(f"getent hosts {other_name}").split()[0] == address


def test_apt_cache_is_mounted_from_the_host(host):
    assert host.file("/var/cache/apt/archives").is_directory
    assert "/var/cache/apt/archives" in host.check_output("cat /proc/self/mountinfo")
