"""No generated secret in any log of any Pi, after site.yml twice and a rolling deploy: the
journal and every text file under /var/log (nginx, MariaDB, Redis, apt, ...) are searched for
every value the run generated under berrychat_secrets_dir. The check names the secret's file,
never its value. Runs before the promotion module stops the primary Pi."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fleet import names, podman
from secret_scan import secret_values, secrets_in_log

SECRETS = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "secrets"
# The journal as text, then every non-binary file under /var/log but the journal's own files.
ALL_LOGS = (
    "journalctl --no-pager -o cat 2>/dev/null;"
    " find /var/log -path /var/log/journal -prune -o -type f -print0"
    " | xargs -0 -r grep -I -h '' 2>/dev/null; true"
)


@pytest.mark.parametrize("host", names("all"))
def test_no_generated_secret_in_any_log(host: str) -> None:
    expected = {"berrychat_admin_password", "mariadb_berrychat_password", "redis_password"}
    assert expected <= set(secret_values(SECRETS)), f"secrets of this run not found in {SECRETS}"
    logs = podman("exec", host, "bash", "-c", ALL_LOGS, timeout=300)
    assert len(logs) > 10_000, f"too little log text on {host} to mean anything: {len(logs)} chars"
    leaked = secrets_in_log(SECRETS, logs)
    assert not leaked, f"logs on {host} contain the value of: {', '.join(leaked)}"
