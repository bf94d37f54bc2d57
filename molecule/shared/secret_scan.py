"""Find generated secrets in a log: the check behind "no secret in `ansible-playbook -v` output".

Every Molecule scenario runs its playbooks with ANSIBLE_VERBOSITY=1; tests/test_molecule.py
then looks for every value the run generated under berrychat_secrets_dir in that output. The
fleet scenario's verifier looks for the same values in every log of every Pi.
"""

from __future__ import annotations

from pathlib import Path


def secret_values(secrets_dir: Path) -> dict[str, set[str]]:
    """The generated secrets of one run, by file name: every token of a password file and
    every body line of a private key (public keys and the summary are not secret)."""
    found: dict[str, set[str]] = {}
    if not secrets_dir.is_dir():
        return found
    for path in sorted(p for p in secrets_dir.rglob("*") if p.is_file()):
        if path.suffix in {".pub", ".crt", ".pem"} and "key" not in path.name:
            continue
        if path.name == "fleet-summary.txt":
            continue
        values = {
            token.removeprefix("salt=")
            for line in path.read_text(errors="replace").splitlines()
            if not line.startswith("-----")
            for token in line.split()
        }
        values = {v for v in values if len(v) >= 12}
        if values:
            found[str(path.relative_to(secrets_dir))] = values
    return found


def secrets_in_log(secrets_dir: Path, log_text: str) -> list[str]:
    """Names of the secret files whose value shows up in a log (never the value itself)."""
    return [
        name
        for name, values in secret_values(secrets_dir).items()
        if any(v in log_text for v in values)
    ]
