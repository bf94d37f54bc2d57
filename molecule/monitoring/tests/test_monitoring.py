"""Behaviour of the monitoring roles on a two-Pi fleet (testinfra, podman connection).

Prometheus, Alertmanager and Grafana's files live on the monitoring host; every HTTP request is
made from inside the containers, over the scenario's podman network.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import testinfra
import yaml
from molecule_podman_hosts import hosts_in, hostvars

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "roles/prometheus/files/rules/berrychat-alerts.yml"
STUB_METRICS = ROOT / "molecule/monitoring/files/berrychat-metrics.txt"
SECRETS = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "secrets"
MON = hosts_in("monitoring")[0].removeprefix("podman://")
PROM = f"http://{MON}:9090"

# Metrics the fleet dashboard uses that a container cannot have: no thermal sensors (hwmon,
# thermal zones) and no VideoCore firmware (vcgencmd) inside a podman container on a VM.
NOT_EXERCISED_FLEET = {
    "node_thermal_zone_temp",
    "node_hwmon_temp_celsius",
    "berrychat_pi_throttled",
}
# Not in this scenario: MariaDB (the mysqld exporter is not deployed here).
NOT_EXERCISED_APP = {"mysql_slave_status_seconds_behind_master"}


# The shared plugin's --hosts option wins over a module's testinfra_hosts, so the monitoring host
# comes from this fixture instead of testinfra's `host`.
@pytest.fixture(scope="module")
def mon():
    """The monitoring host (Prometheus, Alertmanager, Grafana's files, the edge's nginx)."""
    return testinfra.get_host(f"podman://{MON}")


PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "le",
}


def _names(container: str) -> list[str]:
    return [h.removeprefix("podman://") for h in hosts_in(container)]


def api(host, path: str, **params) -> dict:
    """GET a Prometheus API path from inside the monitoring host and return its JSON."""
    url = f"{PROM}{path}" + (f"?{urlencode(params)}" if params else "")
    out = host.check_output("curl -sS --max-time 15 %s", url)
    body = json.loads(out)
    assert body["status"] == "success", body
    return body["data"]


def wait_for(check, timeout: float = 150, interval: float = 5):
    """Call check() until it returns something truthy or timeout seconds pass; return the last."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def expected_targets() -> set[tuple[str, str]]:
    """(job, instance) pairs the inventory calls for."""
    want = {("node", h) for h in _names("all")}
    want |= {("redis", h) for h in _names("redis")}
    want |= {("nginx", h) for h in _names("edge")}
    want |= {("mysqld", h) for h in _names("db_primary") + _names("db_replicas")}
    want |= {("prometheus", h) for h in _names("monitoring")}
    want |= {("alertmanager", h) for h in _names("monitoring")}
    for h in _names("chat_servers"):
        base = int(hostvars(h).get("berrychat_port_base", 8100))
        count = int(hostvars(h)["berrychat_processes"])
        want |= {("berrychat", f"{h}:{port}") for port in range(base, base + count)}
    return want


# --- Scraping -------------------------------------------------------------------------------


def test_every_target_from_the_inventory_is_scraped_and_up(mon):
    want = expected_targets()

    def healthy():
        targets = api(mon, "/api/v1/targets", state="active")["activeTargets"]
        got = {(t["labels"]["job"], t["labels"]["instance"]): t for t in targets}
        return set(got) == want and all(t["health"] == "up" for t in got.values()) and got

    got = wait_for(healthy)
    targets = api(mon, "/api/v1/targets", state="active")["activeTargets"]
    seen = {
        (t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["lastError"])
        for t in targets
    }
    assert got, f"expected {sorted(want)}, got {seen}"


def test_up_is_one_for_every_expected_target(mon):
    def all_up():
        result = api(mon, "/api/v1/query", query="up")["result"]
        ups = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in result}
        return ups if set(ups) == expected_targets() and set(ups.values()) == {"1"} else None

    if wait_for(all_up):
        return
    result = api(mon, "/api/v1/query", query="up")["result"]
    ups = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in result}
    want = expected_targets()
    pytest.fail(
        f"missing: {sorted(want - set(ups))}; unexpected: {sorted(set(ups) - want)}; "
        f"not 1: {sorted(k for k, v in ups.items() if v != '1')}"
    )


def test_berrychat_instances_metrics_are_scraped(mon):
    # From the stand-ins in prepare (the real server's /metrics is not built yet): proves the
    # per-instance ports and the path, and that the latency histogram is usable.
    per_instance = "count by (instance) (berrychat_send_commit_seconds_bucket)"
    result = wait_for(lambda: api(mon, "/api/v1/query", query=per_instance)["result"])
    instances = {r["metric"]["instance"] for r in result}
    p99 = api(
        mon,
        "/api/v1/query",
        query="histogram_quantile(0.99, sum by (le) (berrychat_send_commit_seconds_bucket))",
    )
    assert 0.05 < float(p99["result"][0]["value"][1]) <= 0.1
    assert instances == {i for job, i in expected_targets() if job == "berrychat"}


def test_redis_and_nginx_exporters_reach_real_servers(mon):
    def values():
        got = {}
        for q in ("redis_up", "nginx_up", "nginx_connections_accepted"):
            r = api(mon, "/api/v1/query", query=q)["result"]
            got[q] = [x["value"][1] for x in r]
        return got if got["redis_up"] == ["1"] and got["nginx_up"] == ["1"] else None

    got = wait_for(values)
    assert got, "redis_up and nginx_up must both be 1"
    assert float(got["nginx_connections_accepted"][0]) > 0


def test_certificate_expiry_textfile_metric_matches_the_certificate(mon):
    end = mon.check_output(
        "openssl x509 -noout -enddate -in /etc/ssl/berrychat-test/chat.pem"
    ).split("=", 1)[1]
    epoch = int(mon.check_output("date -d %s +%%s", end))
    result = wait_for(
        lambda: api(mon, "/api/v1/query", query="berrychat_cert_expiry_timestamp_seconds")["result"]
    )
    assert [(r["metric"]["path"], int(float(r["value"][1]))) for r in result] == [
        ("/etc/ssl/berrychat-test/chat.pem", epoch)
    ]


# --- Server settings --------------------------------------------------------------------------


def test_retention_is_sized_for_an_sd_card(mon):
    flags = api(mon, "/api/v1/status/flags")
    assert flags["storage.tsdb.retention.time"] == "15d"
    assert flags["storage.tsdb.retention.size"] in {"2GB", "2GiB"}


def test_prometheus_listens_on_the_fleet_address_only(mon):
    address = mon.check_output("getent ahostsv4 %s | awk 'NR==1{print $1}'", MON)
    assert mon.socket(f"tcp://{address}:9090").is_listening
    assert not mon.socket("tcp://0.0.0.0:9090").is_listening
    assert mon.run("curl -s --max-time 5 http://127.0.0.1:9090/-/ready").rc != 0
    # Alertmanager: for the local Prometheus only, and no cluster gossip port.
    assert mon.socket("tcp://127.0.0.1:9093").is_listening
    assert not mon.socket("tcp://0.0.0.0:9094").is_listening


@pytest.mark.parametrize("other", hosts_in("chat_servers"))
def test_prometheus_answers_another_fleet_host(other):
    peer = testinfra.get_host(other)
    code = peer.check_output(
        "python3 -c %s %s",
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)",
        f"{PROM}/-/ready",
    )
    assert code == "200"


def test_configuration_and_alertmanager_configuration_validate(mon):
    assert mon.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert mon.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0
    assert api(mon, "/api/v1/status/runtimeinfo")["reloadConfigSuccess"] is True


# --- Rules and alerts -------------------------------------------------------------------------


def test_every_alert_rule_is_loaded_and_healthy(mon):
    shipped = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    groups = api(mon, "/api/v1/rules", type="alert")["groups"]
    loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert set(loaded) == shipped
    assert set(loaded.values()) == {"ok"}


def test_alert_rule_unit_tests_pass_on_the_host(mon):
    result = mon.run("promtool test rules /etc/prometheus/tests/berrychat-alerts_test.yml")
    assert result.rc == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load((RULES.parent.parent / "tests/berrychat-alerts_test.yml").read_text())
    tested = {
        a["alertname"] for t in tests["tests"] for a in t["alert_rule_test"] if a.get("exp_alerts")
    }
    shipped = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert shipped == tested


def test_prometheus_knows_its_alertmanager(mon):
    active = api(mon, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == ["http://127.0.0.1:9093/api/v2/alerts"]


def test_a_firing_alert_reaches_the_webhook_receiver(mon):
    # prepare made a certificate valid for 10 days: CertificateExpiringSoon fires, Prometheus sends
    # it to Alertmanager, which delivers it to the receiver configured in molecule.yml.
    def delivered():
        log = mon.file("/var/log/webhook-alerts.jsonl")
        if not log.exists:
            return None
        for line in log.content_string.splitlines():
            for alert in json.loads(line)["alerts"]:
                if alert["labels"]["alertname"] == "CertificateExpiringSoon":
                    return alert
        return None

    alert = wait_for(delivered, timeout=180)
    assert alert, "Alertmanager delivered no CertificateExpiringSoon alert to the webhook"
    assert alert["labels"]["path"] == "/etc/ssl/berrychat-test/chat.pem"
    assert alert["labels"]["fleet"] == "berrychat"


# --- The edge: Prometheus behind basic auth ----------------------------------------------------


def _edge(host, auth: str | None) -> str:
    cmd = "curl -s -o /dev/null -w '%%{http_code}' --max-time 30"
    url = "http://127.0.0.1/prometheus/api/v1/status/buildinfo"
    if auth is None:
        return host.check_output(f"{cmd} %s", url)
    return host.check_output(f"{cmd} -u %s %s", auth, url)


def test_edge_requires_basic_auth(mon):
    password = (SECRETS / "prometheus_web_password").read_text().strip()
    assert len(password) == 32
    assert _edge(mon, None) == "401"
    assert _edge(mon, "monitor:wrong-password") == "401"
    assert _edge(mon, f"monitor:{password}") == "200"


def test_htpasswd_is_a_passlib_apr1_hash_readable_by_nginx_only(mon):
    f = mon.file("/etc/nginx/berrychat-prometheus.htpasswd")
    assert (f.user, f.group, f.mode) == ("root", "www-data", 0o640)
    user, hashed = f.content_string.strip().split(":", 1)
    assert user == "monitor"
    assert hashed.startswith("$apr1$")


# --- Exporters: placement and listen addresses -------------------------------------------------


@pytest.mark.parametrize("node", hosts_in("all"))
def test_exporters_are_placed_by_inventory_group(node):
    peer = testinfra.get_host(node)
    name = node.removeprefix("podman://")
    groups = {g for g in ("redis", "edge", "db_primary", "db_replicas") if name in _names(g)}
    want = {
        "prometheus-node-exporter": True,
        "prometheus-redis-exporter": "redis" in groups,
        "prometheus-nginx-exporter": "edge" in groups,
        "prometheus-mysqld-exporter": bool(groups & {"db_primary", "db_replicas"}),
    }
    for package, installed in want.items():
        assert peer.package(package).is_installed == installed, package
    # Fleet address only, not every interface.
    assert not peer.socket("tcp://0.0.0.0:9100").is_listening
    assert not peer.socket("tcp://:::9100").is_listening


# --- Grafana: configuration and provisioning (the package itself is not installable here) ------


def test_grafana_ini_has_the_controller_password_and_no_anonymous_access(mon):
    f = mon.file("/etc/grafana/grafana.ini")
    assert (f.user, f.group, f.mode) == ("root", "grafana", 0o640)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(f.content_string)
    password = (SECRETS / "grafana_admin_password").read_text().strip()
    assert len(password) == 32
    assert ini["security"]["admin_password"] == f'"""{password}"""'
    assert ini["security"]["secret_key"] == (SECRETS / "grafana_secret_key").read_text().strip()
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false"


def test_grafana_datasource_points_at_this_prometheus(mon):
    doc = yaml.safe_load(
        mon.file("/etc/grafana/provisioning/datasources/berrychat.yml").content_string
    )
    (ds,) = doc["datasources"]
    assert (ds["uid"], ds["type"], ds["access"]) == ("berrychat-prometheus", "prometheus", "proxy")
    assert (
        mon.check_output("curl -s -o /dev/null -w '%%{http_code}' %s", ds["url"] + "/-/ready")
        == "200"
    )


def _dashboards(host) -> dict[str, dict]:
    provider = yaml.safe_load(
        host.file("/etc/grafana/provisioning/dashboards/berrychat.yml").content_string
    )
    path = provider["providers"][0]["options"]["path"]
    files = host.check_output("ls %s", path).split()
    return {f: json.loads(host.file(f"{path}/{f}").content_string) for f in files}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, labels, strings removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end() :].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue  # a function or keyword
        names.add(m.group(0))
    return names


def _panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def _runnable(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def test_dashboards_are_valid_and_use_the_provisioned_datasource(mon):
    boards = _dashboards(mon)
    assert set(boards) == {"berrychat-fleet.json", "berrychat-app.json"}
    for board in boards.values():
        assert board["uid"] and board["title"] and board["panels"]
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "berrychat-prometheus", panel["title"]
            assert panel["targets"], panel["title"]


def test_fleet_dashboard_queries_name_metrics_this_prometheus_has(mon):
    board = _dashboards(mon)["berrychat-fleet.json"]
    wait_for(
        lambda: (
            "berrychat_cert_expiry_timestamp_seconds" in api(mon, "/api/v1/label/__name__/values")
        )
    )
    known = set(api(mon, "/api/v1/label/__name__/values"))
    used = set().union(*(metric_names(e) for _, e in _panel_exprs(board)))
    missing = used - known
    print(f"fleet dashboard metrics not exercised in containers: {sorted(missing)}")
    assert missing <= NOT_EXERCISED_FLEET, (
        f"queried but unknown to Prometheus: {sorted(missing - NOT_EXERCISED_FLEET)}"
    )
    assert used >= {
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_filesystem_avail_bytes",
        "node_network_receive_bytes_total",
        "node_disk_written_bytes_total",
    }


def test_fleet_dashboard_queries_return_data(mon):
    board = _dashboards(mon)["berrychat-fleet.json"]
    for title, expr in _panel_exprs(board):
        result = api(mon, "/api/v1/query", query=_runnable(expr))["result"]
        if metric_names(expr) <= NOT_EXERCISED_FLEET or title == "Firmware throttling flags":
            continue
        assert result, f"{title}: {expr} returned nothing"


def test_berrychat_dashboard_queries_parse_and_use_known_names(mon):
    # berrychat_* names are checked against the contract the stand-ins serve (the real server's
    # /metrics is not exercised); exporter metrics against this Prometheus.
    contract = set(re.findall(r"^# TYPE (\w+) ", STUB_METRICS.read_text(), re.M))
    known = set(api(mon, "/api/v1/label/__name__/values"))
    board = _dashboards(mon)["berrychat-app.json"]
    for title, expr in _panel_exprs(board):
        api(mon, "/api/v1/query", query=_runnable(expr))  # parses
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name.startswith("berrychat_"):
                assert base in contract, f"{title}: {name} is not in the documented metric contract"
            elif name not in NOT_EXERCISED_APP:
                assert name in known, f"{title}: {name} unknown to Prometheus"


def test_metric_name_extraction():
    assert metric_names(
        "histogram_quantile(0.99, sum by (le) (rate("
        'berrychat_send_commit_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'
    ) == {"berrychat_send_commit_seconds_bucket"}
    assert metric_names(
        'max by (instance) (node_thermal_zone_temp{a="b"} or node_hwmon_temp_celsius)'
    ) == {"node_thermal_zone_temp", "node_hwmon_temp_celsius"}
