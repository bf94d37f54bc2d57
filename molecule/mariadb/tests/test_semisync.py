"""Semi-synchronous replication between the primary and the replica (AFTER_SYNC).

Runs after test_mariadb.py (file order), on the servers it left running; the last test promotes
the replica with playbooks/promote.yml and so changes the scenario for good.
"""

from __future__ import annotations

import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from test_mariadb import (
    DATABASE,
    PRIMARY,
    PROJECT,
    REPLICAS,
    ROLE,
    _ansible_playbook,
    _bind_address,
    _host,
    _replica_status,
    _value,
)

TIMEOUT_MS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())[
    "mariadb_semisync_timeout_ms"
]
OPTION_FILE = "/etc/mysql/mariadb.conf.d/61-berrychat-semisync.cnf"
WAITING = "Waiting for semi-sync ACK from slave"

pytestmark = pytest.mark.skipif(not REPLICAS, reason="semi-sync needs a replica")


def _status(spec: str) -> dict[str, str]:
    out = _value(spec, "SHOW GLOBAL STATUS LIKE 'Rpl\\_semi\\_sync\\_%'")
    return dict(line.split("\t", 1) for line in out.splitlines())


def _settings(spec: str) -> dict[str, str]:
    out = _value(spec, "SHOW GLOBAL VARIABLES LIKE 'rpl\\_semi\\_sync\\_%'")
    return dict(line.split("\t", 1) for line in out.splitlines())


def _covers(position: str, gtid: str) -> bool:
    """Whether a GTID position (``d-s-n,...``) includes ``gtid`` (same domain, seq_no >= n)."""
    domain, _, seq = gtid.split("-")
    for entry in filter(None, (p.strip() for p in position.split(","))):
        d, _, n = entry.split("-")
        if d == domain and int(n) >= int(seq):
            return True
    return False


def _timed_insert(spec: str, token: str) -> tuple[float, str]:
    """Insert one probe row (autocommit) as root; return (seconds the commit took, its GTID).

    Timed by the server itself (NOW(6) around the statement), so the podman exec around the
    client does not count.
    """
    out = _value(
        spec,
        "SET @t0 = NOW(6);"
        f" INSERT INTO probe (token) VALUES ('{token}');"
        " SELECT TIMESTAMPDIFF(MICROSECOND, @t0, NOW(6)) / 1e6, @@last_gtid",
        database=DATABASE,
    )
    seconds, gtid = out.splitlines()[-1].split("\t")
    return float(seconds), gtid


def _grew(before: dict[str, str], after: dict[str, str], counter: str) -> int:
    return int(after[counter]) - int(before[counter])


def _count(spec: str, token: str) -> int:
    query = f"SELECT COUNT(*) FROM probe WHERE token = '{token}'"
    return int(_value(spec, query, database=DATABASE))


def _wait_until(predicate, seconds: float = 30, step: float = 1):
    deadline = time.monotonic() + seconds
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value


def _semisync_on(spec: str, clients: int) -> dict[str, str] | None:
    status = _status(spec)
    ok = status["Rpl_semi_sync_master_status"] == "ON"
    return status if ok and int(status["Rpl_semi_sync_master_clients"]) == clients else None


def test_semisync_is_configured_on_both_sides():
    primary = _settings(PRIMARY)
    assert primary["rpl_semi_sync_master_enabled"] == "ON"
    assert primary["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
    assert int(primary["rpl_semi_sync_master_timeout"]) == TIMEOUT_MS
    # The primary waits the timeout even when its replica just disconnected.
    assert primary["rpl_semi_sync_master_wait_no_slave"] == "ON"
    for spec in REPLICAS:
        replica = _settings(spec)
        assert replica["rpl_semi_sync_slave_enabled"] == "ON"
        # Ready to be promoted: the primary side is on, but never waits while nobody
        # replicates from it (its applied transactions would stall the SQL thread otherwise).
        assert replica["rpl_semi_sync_master_enabled"] == "ON"
        assert replica["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
        assert replica["rpl_semi_sync_master_wait_no_slave"] == "OFF"
    for spec in [PRIMARY, *REPLICAS]:
        conf = _host(spec).file(OPTION_FILE)
        assert conf.contains("^rpl_semi_sync_master_wait_point = AFTER_SYNC")
        assert conf.contains(f"^rpl_semi_sync_master_timeout = {TIMEOUT_MS}$")


def test_semisync_is_active_after_converge():
    status = _status(PRIMARY)
    assert status["Rpl_semi_sync_master_status"] == "ON", status
    assert int(status["Rpl_semi_sync_master_clients"]) == len(REPLICAS), status
    for spec in REPLICAS:
        assert _status(spec)["Rpl_semi_sync_slave_status"] == "ON"
        # Its own (applied) commits never waited for anyone: no timeout on the replica.
        assert int(_status(spec)["Rpl_semi_sync_master_no_times"]) == 0


def test_a_commit_returns_only_once_the_replica_has_it_in_its_relay_log(capsys):
    """AFTER_SYNC: with the replica's SQL thread stopped, the transaction a commit on the
    primary just returned for is already received by the replica (Gtid_IO_Pos) but not applied
    (gtid_slave_pos), and the primary counts it as acknowledged."""
    replica = REPLICAS[0]
    token = f"semisync-{uuid.uuid4()}"
    before = _status(PRIMARY)
    _value(replica, "STOP SLAVE SQL_THREAD")
    try:
        seconds, gtid = _timed_insert(PRIMARY, token)
        received = _replica_status(replica)["Gtid_IO_Pos"]
        applied = _value(replica, "SELECT @@global.gtid_slave_pos")
        after = _status(PRIMARY)
    finally:
        _value(replica, "START SLAVE SQL_THREAD")
    with capsys.disabled():
        print(f"\nsemi-sync: a commit acknowledged by the replica took {seconds:.3f} s")
    assert _covers(received, gtid), f"commit {gtid} returned, replica received only {received}"
    assert not _covers(applied, gtid), f"SQL thread stopped, yet {gtid} applied ({applied})"
    assert _grew(before, after, "Rpl_semi_sync_master_yes_tx") == 1
    assert after["Rpl_semi_sync_master_no_tx"] == before["Rpl_semi_sync_master_no_tx"]
    assert seconds < TIMEOUT_MS / 1000 / 2, f"an acknowledged commit took {seconds:.3f} s"
    assert _wait_until(lambda: _count(replica, token) == 1)


def _watch_for_waiting_commit(token: str) -> str:
    """From a second session on the primary: wait (at most 10 s) until a commit waits for a
    replica's ACK, then read, in the same statement, whether its row is visible. Prints
    '<sessions waiting>\t<rows visible>'."""
    query = (
        "SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST"
        f" WHERE STATE = '{WAITING}'), (SELECT COUNT(*) FROM probe WHERE token = '{token}')"
    )
    client = shlex.join(["mariadb", "--batch", "--skip-column-names", "-e", query, DATABASE])
    script = (
        f"for i in $(seq 100); do r=$({client}); case $r in 0*) sleep 0.1;; *) break;; esac;"
        ' done; echo "$r"'
    )
    return _host(PRIMARY).check_output(f"bash -c {shlex.quote(script)}")


def test_without_the_replica_a_commit_waits_the_timeout_once_then_goes_async(capsys):
    replica = REPLICAS[0]
    token, later, recovered = (f"semisync-{name}-{uuid.uuid4()}" for name in "abc")
    _value(replica, "STOP SLAVE IO_THREAD")
    try:
        assert _wait_until(
            lambda: _status(PRIMARY)["Rpl_semi_sync_master_clients"] == "0", 10, 0.2
        ), "the primary still counts the stopped replica"
        before = _status(PRIMARY)
        with ThreadPoolExecutor(2) as pool:
            commit = pool.submit(_timed_insert, PRIMARY, token)
            watch = pool.submit(_watch_for_waiting_commit, token)
            stalled, _ = commit.result(timeout=120)
            waiting, visible = watch.result(timeout=120).split("\t")
        after = _status(PRIMARY)
        # Now asynchronous: the next commit does not wait at all.
        second, _ = _timed_insert(PRIMARY, later)
    finally:
        _value(replica, "START SLAVE IO_THREAD")
    with capsys.disabled():
        print(
            f"\nsemi-sync: commit with the replica's IO thread stopped took {stalled:.3f} s"
            f" (timeout {TIMEOUT_MS} ms); the next one {second:.3f} s"
        )
    timeout = TIMEOUT_MS / 1000
    assert timeout * 0.95 <= stalled <= timeout + 3, f"commit took {stalled:.3f} s"
    # While it waited, its row was committed in the binlog but invisible to other sessions.
    assert waiting == "1", "no commit was seen waiting for the replica's ACK"
    assert visible == "0", "AFTER_SYNC: a row must stay invisible until a replica has it"
    assert after["Rpl_semi_sync_master_status"] == "OFF", "the primary did not fall back to async"
    assert _grew(before, after, "Rpl_semi_sync_master_no_times") == 1
    assert _grew(before, after, "Rpl_semi_sync_master_no_tx") == 1
    assert second < timeout / 2, f"after the fallback a commit still took {second:.3f} s"
    assert _count(PRIMARY, token) == 1
    # The replica reconnects, fetches what it missed and acknowledges it: semi-sync again.
    assert _wait_until(lambda: _semisync_on(PRIMARY, len(REPLICAS))), _status(PRIMARY)
    before = _status(PRIMARY)
    seconds, _ = _timed_insert(PRIMARY, recovered)
    after = _status(PRIMARY)
    assert _grew(before, after, "Rpl_semi_sync_master_yes_tx") == 1
    assert seconds < timeout / 2
    for name in (token, later, recovered):
        assert _wait_until(lambda name=name: _count(replica, name) == 1)


def test_the_health_check_warns_when_the_primary_replicates_asynchronously():
    """The role's semi-sync check reports the fallback as a warning and does not fail.

    Run on the primary alone (the role's facts and semi-sync tasks, molecule/mariadb/
    semisync_check.yml): the whole role would restart the stopped replica first.
    """
    replica = REPLICAS[0]
    _value(replica, "STOP SLAVE IO_THREAD")
    try:
        _timed_insert(PRIMARY, f"semisync-warn-{uuid.uuid4()}")
        assert _status(PRIMARY)["Rpl_semi_sync_master_status"] == "OFF"
        result = _ansible_playbook(
            "--limit",
            PRIMARY.removeprefix("podman://"),
            playbook=PROJECT / "molecule" / "mariadb" / "semisync_check.yml",
        )
    finally:
        _value(replica, "START SLAVE IO_THREAD")
    output = " ".join(result.stdout.split())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Semi-sync on mariadb-primary: status OFF" in output
    assert "WARNING: mariadb-primary is not waiting for any replica" in output
    assert "changed=0" in output
    assert _wait_until(lambda: _semisync_on(PRIMARY, len(REPLICAS))), _status(PRIMARY)


def test_promoted_replica_is_a_semisync_primary_for_a_replica_attached_later():
    """The primary is lost; promote.yml (database part only: there is no BerryChat here) makes
    the replica a primary that does not wait while it has no replica, and waits for one (the
    old primary, re-attached by hand) as soon as it replicates from it."""
    old, new = PRIMARY, REPLICAS[0]
    new_name = new.removeprefix("podman://")
    _host(old).check_output("systemctl stop mariadb")
    result = _ansible_playbook(
        "-e",
        f"berrychat_new_primary={new_name}",
        "--tags",
        "mariadb",
        playbook=PROJECT / "playbooks" / "promote.yml",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    settings = _settings(new)
    assert _value(new, "SELECT @@global.read_only") == "0"
    assert settings["rpl_semi_sync_master_enabled"] == "ON"
    assert settings["rpl_semi_sync_master_wait_point"] == "AFTER_SYNC"
    assert settings["rpl_semi_sync_master_wait_no_slave"] == "OFF"
    conf = _host(new).file(OPTION_FILE)
    assert conf.contains("^rpl_semi_sync_master_enabled = ON")
    # No replica yet: writes go on at once instead of waiting for one.
    alone, _ = _timed_insert(new, f"promoted-{uuid.uuid4()}")
    assert alone < TIMEOUT_MS / 1000 / 2, f"a commit on the lone new primary took {alone:.3f} s"

    # The old primary comes back as a replica of the new one.
    password = uuid.uuid4().hex
    _host(old).check_output("systemctl start mariadb")
    old_address = _bind_address(old)
    _value(new, f"CREATE USER 'reattach'@'{old_address}' IDENTIFIED BY '{password}'")
    _value(new, f"GRANT REPLICATION SLAVE ON *.* TO 'reattach'@'{old_address}'")
    _value(
        old,
        "SET GLOBAL read_only = ON; SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos;"
        f" CHANGE MASTER TO MASTER_HOST = '{_bind_address(new)}', MASTER_USER = 'reattach',"
        f" MASTER_PASSWORD = '{password}', MASTER_USE_GTID = slave_pos; START SLAVE",
    )
    status = _wait_until(lambda: _semisync_on(new, 1))
    assert status, _status(new)
    token = f"after-promotion-{uuid.uuid4()}"
    seconds, gtid = _timed_insert(new, token)
    after = _status(new)
    assert _grew(status, after, "Rpl_semi_sync_master_yes_tx") == 1
    assert _covers(_replica_status(old)["Gtid_IO_Pos"], gtid)
    assert seconds < TIMEOUT_MS / 1000 / 2
    assert _wait_until(lambda: _count(old, token) == 1)
