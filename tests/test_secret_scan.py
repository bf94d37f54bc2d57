"""The secret scan must find a leaked value and name only the file, never the value."""

from __future__ import annotations

from pathlib import Path

from secret_scan import secret_values, secrets_in_log

PASSWORD = "Zq8vTn3LwP0aXk2R"  # noqa: S105 - a test value, generated nowhere


def _secrets(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "redis_password").write_text(PASSWORD + "\n")
    (d / "mariadb_berrychat_password").write_text("hA9sK2mQ7xV4bN1c salt=Yt5Rw8Ue3Io6Pa0S\n")
    (d / "admin_ed25519").write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    (d / "admin_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPublicKeyBody x\n")
    (d / "fleet-summary.txt").write_text("Admin login: admin (password: <dir>/pw)\n")
    (d / "short").write_text("abc\n")
    return d


def test_a_clean_log_passes(tmp_path: Path) -> None:
    d = _secrets(tmp_path)
    assert secrets_in_log(d, "TASK [redis : Write redis.conf]\nok: [pi-1]\n") == []


def test_every_kind_of_leak_is_named_by_file(tmp_path: Path) -> None:
    d = _secrets(tmp_path)
    log = (
        f'changed: [pi-1] => {{"requirepass": "{PASSWORD}"}}\n'
        "+    password: hA9sK2mQ7xV4bN1c\n"
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    )
    leaked = secrets_in_log(d, log)
    assert leaked == ["admin_ed25519", "mariadb_berrychat_password", "redis_password"]
    assert all(PASSWORD not in name for name in leaked)


def test_public_keys_summary_and_short_values_are_not_secrets(tmp_path: Path) -> None:
    d = _secrets(tmp_path)
    names = set(secret_values(d))
    assert names == {"admin_ed25519", "mariadb_berrychat_password", "redis_password"}
    log = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPublicKeyBody x\nabc\n"
    assert secrets_in_log(d, log) == []


def test_a_missing_directory_has_no_secrets(tmp_path: Path) -> None:
    assert secrets_in_log(tmp_path / "absent", "anything") == []
