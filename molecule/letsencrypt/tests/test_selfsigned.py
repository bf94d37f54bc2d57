"""selfsigned mode: a LAN-only edge gets a self-signed certificate at the same live paths."""

from __future__ import annotations

import datetime as dt

from pebble_helpers import LAN, cert_field, live, served_serial


def test_self_signed_certificate_for_the_names(lan):
    path = live(LAN, "fullchain.pem")
    issuer = cert_field(lan, path, "-issuer").removeprefix("issuer=")
    subject = cert_field(lan, path, "-subject").removeprefix("subject=")
    assert issuer == subject
    sans = cert_field(lan, path, "-ext subjectAltName")
    assert f"DNS:{LAN}" in sans
    assert "DNS:berrychat.lan" in sans
    # Signed by its own key.
    assert lan.run("openssl verify -CAfile %s %s", path, path).rc == 0


def test_validity_is_the_configured_825_days(lan):
    end = cert_field(lan, live(LAN, "fullchain.pem"), "-enddate").removeprefix("notAfter=")
    not_after = dt.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
    days = (not_after - dt.datetime.now(dt.UTC)).days
    assert 820 <= days <= 825


def test_private_key_matches_and_is_root_only(lan):
    key = lan.file(live(LAN, "privkey.pem"))
    assert key.mode == 0o600
    assert key.user == "root"
    cert_pub = lan.check_output("openssl x509 -in %s -noout -pubkey", live(LAN, "fullchain.pem"))
    key_pub = lan.check_output("openssl pkey -in %s -pubout", live(LAN, "privkey.pem"))
    assert cert_pub == key_pub


def test_not_a_certbot_lineage(lan):
    assert not lan.file(f"/etc/letsencrypt/renewal/{LAN}.conf").exists
    assert not lan.file(live(LAN, "fullchain.pem")).is_symlink


def test_nginx_serves_it_with_the_same_configuration(lan):
    assert served_serial(LAN) == cert_field(lan, live(LAN, "fullchain.pem"), "-serial")
