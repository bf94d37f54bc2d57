"""ufw really enforced between three native containers on one podman network.

ufw-pi1 (edge, chat_servers, redis) and ufw-pi2 (chat_servers, db_primary) are the fleet;
ufw-outsider is in the inventory but not in ufw_fleet_groups (and runs the role with
ufw_enabled=false). prepare.yml started TCP listeners on the ports under test, so "open" means
a real service answered through the firewall."""

import re

import pytest
import testinfra

PI1, PI2, OUTSIDER = "ufw-pi1", "ufw-pi2", "ufw-outsider"

PROBE = """python3 - {target} {port} <<'EOF'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
EOF"""


def host(name):
    return testinfra.get_host(f"podman://{name}")


def probe(src, target, port):
    result = host(src).run(PROBE.format(target=target, port=port))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(params=[PI1, PI2])
def fleet_host(request):
    """(name, host) of each fleet host that runs the role. (A module-level testinfra_hosts is
    overridden by the --hosts option the shared plugin sets, so hosts are chosen here.)"""
    return request.param, host(request.param)


def address(name):
    return host(name).check_output("getent ahostsv4 %s | awk 'NR==1 {print $1}'", name)


def test_firewall_active_with_default_deny(fleet_host):
    _, host = fleet_host
    status = host.check_output("ufw status verbose")
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing), deny (routed)" in status
    assert host.service("ufw").is_enabled


def test_ssh_is_rate_limited_and_public_ports_on_edge_only(fleet_host):
    name, host = fleet_host
    status = host.check_output("ufw status")
    assert re.search(r"^22/tcp\s+LIMIT\s+Anywhere\s+# berrychat: ssh$", status, re.M), status
    public = re.search(r"^80/tcp\s+ALLOW\s+Anywhere\s+# berrychat: public$", status, re.M)
    assert bool(public) == (name == PI1)


def test_internal_rules_name_fleet_sources_only(fleet_host):
    name, host = fleet_host
    status = host.check_output("ufw status")
    fleet = {address(PI1), address(PI2)}
    outsider = address(OUTSIDER)
    service, port = ("redis", "6379") if name == PI1 else ("mariadb", "3306")
    sources = set(
        re.findall(rf"^{port}/tcp\s+ALLOW\s+(\S+)\s+# berrychat: {service}$", status, re.M)
    )
    assert sources == fleet, status
    assert outsider not in status
    # BerryChat instance range from berrychat_processes=2, node exporter on every host.
    assert re.search(r"^8100:8101/tcp\s+ALLOW\s+\S+\s+# berrychat: berrychat$", status, re.M), (
        status
    )
    assert re.search(r"^9100/tcp\s+ALLOW\s+\S+\s+# berrychat: node_exporter$", status, re.M), status


# (source, target, port, expected)
MATRIX = [
    # The edge: public ports for everyone, Redis and BerryChat for the fleet only.
    (PI2, PI1, 22, "open"),
    (PI2, PI1, 80, "open"),
    (PI2, PI1, 443, "open"),
    (PI2, PI1, 6379, "open"),
    (PI2, PI1, 8100, "open"),
    (PI2, PI1, 7777, "timeout"),
    (OUTSIDER, PI1, 22, "open"),
    (OUTSIDER, PI1, 80, "open"),
    (OUTSIDER, PI1, 443, "open"),
    (OUTSIDER, PI1, 6379, "timeout"),
    (OUTSIDER, PI1, 8100, "timeout"),
    (OUTSIDER, PI1, 7777, "timeout"),
    # Not an edge host: 80 is closed even to the fleet; MariaDB and BerryChat fleet-only.
    (PI1, PI2, 22, "open"),
    (PI1, PI2, 80, "timeout"),
    (PI1, PI2, 3306, "open"),
    (PI1, PI2, 8101, "open"),
    (OUTSIDER, PI2, 80, "timeout"),
    (OUTSIDER, PI2, 3306, "timeout"),
    (OUTSIDER, PI2, 8101, "timeout"),
    # ufw_enabled=false on the outsider: its listener is reachable.
    (PI1, OUTSIDER, 6379, "open"),
]


@pytest.mark.parametrize(
    "src,target,port,expected", MATRIX, ids=[f"{s}->{t}:{p}" for s, t, p, _ in MATRIX]
)
def test_port_matrix(src, target, port, expected):
    assert probe(src, target, port) == expected


def test_toggle_off_leaves_the_outsider_unfirewalled():
    outsider = host(OUTSIDER)
    assert outsider.package("ufw").is_installed
    assert "Status: inactive" in outsider.check_output("ufw status")


def _input_policy_drops(h):
    header = h.check_output("iptables -L INPUT -n -v -x | head -1")
    match = re.search(r"policy DROP (\d+) packets", header)
    assert match, header
    return int(match.group(1))


def _accepted(h, port, source):
    rules = h.check_output("iptables -L ufw-user-input -n -v -x")
    for line in rules.splitlines():
        fields = line.split()
        if f"dpt:{port}" in line and "ACCEPT" in fields and source in fields:
            return int(fields[0])
    raise AssertionError(f"no ACCEPT rule for {source} -> {port}:\n{rules}")


def test_counters_move():
    pi1 = host(PI1)
    drops, accepted = _input_policy_drops(pi1), _accepted(pi1, 6379, address(PI2))
    assert probe(OUTSIDER, PI1, 6379) == "timeout"
    assert probe(PI2, PI1, 6379) == "open"
    assert _input_policy_drops(pi1) > drops
    assert _accepted(pi1, 6379, address(PI2)) > accepted


def test_ssh_rate_limit_refuses_a_burst():
    # ufw limit: the 6th connection within 30 s from one source is rejected. Runs last: it
    # leaves the outsider locked out of port 22 on ufw-pi1 for 30 s.
    results = [probe(OUTSIDER, PI1, 22) for _ in range(10)]
    assert results[0] == "open"
    assert "refused" in results, results
