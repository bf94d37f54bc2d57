"""Behaviour of the mariadb role: a primary and a replica on one podman network.

The tests run in file order and build on each other: a row written on the primary is read on
the replica, dumped by the backup service and brought back by playbooks/restore.yml.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import testinfra
import yaml
from molecule_podman_hosts import hosts_in, hostvars

testinfra_hosts = hosts_in("all")

PRIMARY = hosts_in("db_primary")[0]
REPLICAS = hosts_in("db_replicas")
TOKEN = f"probe-{uuid.uuid4()}"
APP_USER = "berrychat"
DATABASE = "berrychat"
BACKUP_DIR = "/var/backups/mariadb"


def _host(spec: str):
    return testinfra.get_host(spec)


def _password(user: str) -> str:
    secrets = Path(hostvars(PRIMARY)["berrychat_secrets_dir"])
    return (secrets / f"mariadb_{user}_password").read_text().split()[0]


def _sql(spec: str, query: str, *, user: str | None = None, database: str = "", tcp: str = ""):
    """Run one statement with the mariadb client inside a container; return the command result.

    Without ``user`` it runs as root through the unix socket; with ``user`` it logs in with the
    generated password over TCP to ``tcp`` (the server's bind address by default).
    """
    args = ["mariadb", "--batch", "--skip-column-names"]
    env = ""
    if user:
        tcp = tcp or _bind_address(spec)
        args += [f"--host={tcp}", "--protocol=tcp", f"--user={user}"]
        env = f"MYSQL_PWD={shlex.quote(_password(user))} "
    args += ["-e", query]
    if database:
        args.append(database)
    return _host(spec).run(env + shlex.join(args))


def _value(spec: str, query: str, **kwargs) -> str:
    result = _sql(spec, query, **kwargs)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def _bind_address(spec: str) -> str:
    return _value(spec, "SELECT @@bind_address")


def _replica_status(spec: str) -> dict[str, str]:
    out = _host(spec).check_output("mariadb -e 'SHOW REPLICA STATUS\\G'")
    status = {}
    for line in out.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            status[key.strip()] = value.strip()
    return status


def _wait_for_token(spec: str, database: str, **kwargs) -> str:
    """Poll (at most 30 s) until the probe row is visible on ``spec``; return what was read."""
    query = f"SELECT token FROM probe WHERE token = '{TOKEN}'"
    deadline = time.monotonic() + 30
    found = ""
    while time.monotonic() < deadline:
        result = _sql(spec, query, database=database, **kwargs)
        found = result.stdout.strip()
        if found:
            break
        time.sleep(1)
    return found


PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
ROLE = PROJECT / "roles" / "mariadb"


def _ansible_playbook(*extra: str, playbook: Path | None = None) -> subprocess.CompletedProcess:
    """Run a playbook (default: playbooks/restore.yml) against the scenario's inventory."""
    cmd = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        str(playbook or PROJECT / "playbooks" / "restore.yml"),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)


def _converge(extra_vars: dict, tags: str) -> subprocess.CompletedProcess:
    """Re-apply the role's tagged parts to the scenario's hosts with overridden variables."""
    converge = Path(__file__).parents[1] / "converge.yml"
    return _ansible_playbook("-e", json.dumps(extra_vars), "--tags", tags, playbook=converge)


def test_defaults_match_the_argument_spec():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, value in defaults.items():
        assert options[name].get("default") == value, name
    readme = (ROLE / "README.md").read_text()
    assert [name for name in defaults if name not in readme] == []


def test_buffer_pool_is_capped_and_sized_from_memory(host):
    pool, pool_max, conns = _value(
        f"podman://{host.backend.name}",
        "SELECT @@innodb_buffer_pool_size, @@innodb_buffer_pool_size_max, @@max_connections",
    ).split()
    # The container's memory limit (cgroup v1 here; v2 elsewhere), not the machine's RAM.
    limit = int(
        host.check_output(
            "cat /sys/fs/cgroup/memory.max 2>/dev/null"
            " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        )
    )
    assert limit < 16 * 1024**3, "test containers must have a memory limit"
    # Sized from that limit, and far from the 8 TiB default cap of innodb_buffer_pool_size_max.
    assert 128 * 1024**2 <= int(pool) <= limit // 2
    assert int(pool) <= int(pool_max) <= limit
    assert 64 <= int(conns) < 1000
    conf = host.file("/etc/mysql/mariadb.conf.d/60-berrychat.cnf")
    assert conf.contains("^loose-innodb_buffer_pool_size_max")


def test_server_ids_are_unique():
    ids = {_value(spec, "SELECT @@server_id") for spec in [PRIMARY, *REPLICAS]}
    assert len(ids) == 1 + len(REPLICAS)


def test_only_replicas_are_read_only():
    assert _value(PRIMARY, "SELECT @@read_only") == "0"
    for spec in REPLICAS:
        assert _value(spec, "SELECT @@read_only") == "1"


def test_root_is_socket_only(host):
    spec = f"podman://{host.backend.name}"
    assert _value(spec, "SELECT CURRENT_USER()") == "root@localhost"
    accounts = _value(
        spec,
        "SELECT CONCAT(User, '@', Host, ':', JSON_VALUE(Priv, '$.plugin'), ':',"
        " COALESCE(JSON_LENGTH(Priv, '$.auth_or'), 0) <= 1)"
        " FROM mysql.global_priv WHERE User IN ('root', '')",
    )
    # One root account, socket authentication with no alternative (a password) to fall back on.
    assert accounts.splitlines() == ["root@localhost:unix_socket:1"]
    address = _bind_address(spec)
    for password in ["", "root", "invalid"]:
        result = host.run(
            f"MYSQL_PWD={shlex.quote(password)} mariadb --protocol=tcp --host={address}"
            " --user=root -e 'SELECT 1'"
        )
        assert result.rc != 0
        assert "Access denied" in result.stderr or "not allowed" in result.stderr


def test_replication_threads_run():
    for spec in REPLICAS:
        status = _replica_status(spec)
        assert status["Slave_IO_Running"] == "Yes", status.get("Last_IO_Error")
        assert status["Slave_SQL_Running"] == "Yes", status.get("Last_SQL_Error")
        assert status["Using_Gtid"] == "Slave_Pos"


def test_row_written_on_primary_is_read_on_replica():
    _value(
        PRIMARY,
        "CREATE TABLE IF NOT EXISTS probe (id INT AUTO_INCREMENT PRIMARY KEY,"
        " token VARCHAR(64) NOT NULL) ENGINE=InnoDB;"
        f" INSERT INTO probe (token) VALUES ('{TOKEN}')",
        user=APP_USER,
        database=DATABASE,
    )
    for spec in REPLICAS:
        assert _wait_for_token(spec, DATABASE, user=APP_USER) == TOKEN


def test_replica_rejects_writes():
    for spec in REPLICAS:
        insert = f"INSERT INTO probe (token) VALUES ('{TOKEN}-replica')"
        result = _sql(spec, insert, user=APP_USER, database=DATABASE)
        assert result.rc != 0
        assert "read-only" in result.stderr or "READ-ONLY" in result.stderr


def test_backup_timer_is_scheduled(host):
    timer = host.service("berrychat-mariadb-backup.timer")
    assert timer.is_enabled
    assert timer.is_running


def _run_backup(spec: str) -> str:
    host = _host(spec)
    host.check_output("systemctl start berrychat-mariadb-backup.service")
    newest = host.check_output(f"ls -1t {BACKUP_DIR}/{DATABASE}-*.sql.gz | head -n 1")
    assert host.run(f"gzip -t {newest}").rc == 0
    return newest


def test_backup_service_produces_a_dump_with_the_row():
    for spec in [PRIMARY, *REPLICAS]:
        newest = _run_backup(spec)
        dump = _host(spec).check_output(f"zcat {newest}")
        assert TOKEN in dump
        # --master-data=2 --gtid: the GTID position is recorded, commented out.
        assert "-- SET GLOBAL gtid_slave_pos=" in dump


def test_restore_playbook_brings_the_row_back():
    result = _ansible_playbook("-e", "mariadb_restore_target_database=berrychat_restored")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert _wait_for_token(PRIMARY, "berrychat_restored") == TOKEN
    # Restored on the primary, so it reaches the replicas too.
    for spec in REPLICAS:
        assert _wait_for_token(spec, "berrychat_restored") == TOKEN


@pytest.mark.skipif(not REPLICAS, reason="needs a second host to restore from")
def test_restore_from_another_hosts_dump():
    source = REPLICAS[0].removeprefix("podman://")
    result = _ansible_playbook(
        "-e", f"mariadb_restore_source_host={source}", "-e", "mariadb_restore_target_database=copy"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert _wait_for_token(PRIMARY, "copy") == TOKEN


def test_restore_refuses_to_overwrite_a_database_with_tables():
    result = _ansible_playbook("-e", "mariadb_restore_target_database=berrychat_restored")
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "already has" in output


def test_override_lands_through_a_validated_restart():
    """A changed setting is validated, written and applied by the restart handler.

    Only the config and replication tags run, which also proves they work on their own; the
    replication health check then runs right after the restart.
    """
    result = _converge(
        {"mariadb_config_extra": {"long_query_time": 3}}, "mariadb:config,mariadb:replication"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for spec in [PRIMARY, *REPLICAS]:
        assert float(_value(spec, "SELECT @@long_query_time")) == 3.0
    # The play's own health check passed after the restart; replication still carries rows.
    _value(
        PRIMARY, f"INSERT INTO probe (token) VALUES ('{TOKEN}-after-restart')", database=DATABASE
    )
    for spec in REPLICAS:
        query = f"SELECT COUNT(*) FROM probe WHERE token = '{TOKEN}-after-restart'"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _value(spec, query, database=DATABASE) != "1":
            time.sleep(1)
        assert _value(spec, query, database=DATABASE) == "1"


def test_invalid_setting_is_rejected_before_it_lands():
    result = _converge({"mariadb_config_extra": {"innodb_no_such_option": 1}}, "mariadb:config")
    assert result.returncode != 0
    assert "unknown variable" in result.stdout + result.stderr
    for spec in [PRIMARY, *REPLICAS]:
        host = _host(spec)
        conf = host.file("/etc/mysql/mariadb.conf.d/60-berrychat.cnf")
        assert not conf.contains("innodb_no_such_option")
        assert conf.contains("^long_query_time = 3")
        assert _value(spec, "SELECT 1") == "1"
