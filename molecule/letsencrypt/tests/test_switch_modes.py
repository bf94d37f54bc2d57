"""Re-apply the role with overridden variables (the dev-sec pattern): a LAN-only edge goes public.

Runs after the other modules (file order): the LAN lan switches selfsigned -> acme (the
self-signed files give way to certbot's lineage, nginx is reloaded and serves Pebble's
certificate) and back to selfsigned (certbot's lineage is deleted).
"""

from __future__ import annotations

from pebble_helpers import LAN, apply_role, cert_field, live, served_serial


def test_selfsigned_to_acme_and_back(lan):
    selfsigned_serial = cert_field(lan, live(LAN, "fullchain.pem"), "-serial")

    run = apply_role(LAN, "letsencrypt_mode=acme")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Pebble" in cert_field(lan, live(LAN, "fullchain.pem"), "-issuer")
    assert lan.file(live(LAN, "fullchain.pem")).is_symlink
    assert lan.file(f"/etc/letsencrypt/renewal/{LAN}.conf").exists
    acme_serial = cert_field(lan, live(LAN, "fullchain.pem"), "-serial")
    assert acme_serial != selfsigned_serial
    # The role ran the deploy hook itself: nginx picked up the new certificate.
    assert served_serial(LAN) == acme_serial
    assert lan.service("certbot.timer").is_enabled

    run = apply_role(LAN)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert not lan.file(f"/etc/letsencrypt/renewal/{LAN}.conf").exists
    assert not lan.file(live(LAN, "fullchain.pem")).is_symlink
    issuer = cert_field(lan, live(LAN, "fullchain.pem"), "-issuer")
    assert "Pebble" not in issuer
    assert served_serial(LAN) == cert_field(lan, live(LAN, "fullchain.pem"), "-serial")
