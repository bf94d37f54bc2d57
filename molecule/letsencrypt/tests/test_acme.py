"""acme mode against Pebble: real HTTP-01 issuance, nginx serving it, renewal and deploy hook."""

from __future__ import annotations

import time

from pebble_helpers import (
    EDGE,
    HOOK_TAG,
    PEBBLE_ROOT,
    cert_field,
    fetch_pebble_root,
    live,
    served_serial,
)


def test_certificate_was_issued_by_pebble_for_the_edge(edge):
    path = live(EDGE, "fullchain.pem")
    assert edge.file(path).exists
    assert "Pebble" in cert_field(edge, path, "-issuer")
    sans = cert_field(edge, path, "-ext subjectAltName")
    assert f"DNS:{EDGE}" in sans
    assert sans.count("DNS:") == 1


def test_chain_verifies_against_pebbles_root(edge):
    fetch_pebble_root(edge)
    out = edge.run(
        "openssl verify -CAfile %s -untrusted %s %s",
        PEBBLE_ROOT,
        live(EDGE, "chain.pem"),
        live(EDGE, "cert.pem"),
    )
    assert out.rc == 0, out.stdout + out.stderr


def test_private_key_matches_and_is_root_only(edge):
    cert_pub = edge.check_output("openssl x509 -in %s -noout -pubkey", live(EDGE, "fullchain.pem"))
    key_pub = edge.check_output("openssl pkey -in %s -pubout", live(EDGE, "privkey.pem"))
    assert cert_pub == key_pub
    key_text = edge.check_output("openssl pkey -in %s -noout -text", live(EDGE, "privkey.pem"))
    assert "prime256v1" in key_text  # letsencrypt_key_type: ecdsa
    assert edge.file("/etc/letsencrypt/live").mode == 0o700
    assert edge.file("/etc/letsencrypt/archive").mode == 0o700


def test_renewal_configuration_uses_webroot_and_pebble(edge):
    conf = edge.file(f"/etc/letsencrypt/renewal/{EDGE}.conf").content_string
    assert "authenticator = webroot" in conf
    assert "webroot_path = /var/www/letsencrypt," in conf
    assert "server = https://letsencrypt-pebble:14000/dir" in conf


def test_renewal_timer_is_enabled_and_scheduled(edge):
    timer = edge.service("certbot.timer")
    assert timer.is_enabled
    assert timer.is_running
    nxt = edge.check_output("systemctl show -p NextElapseUSecRealtime --value certbot.timer")
    assert nxt not in ("", "0", "n/a")


def test_timer_service_runs_clean(edge):
    # What the timer starts (`certbot -q renew`): nothing is due yet; it must still succeed.
    edge.check_output("systemctl start certbot.service")
    assert edge.check_output("systemctl show -p Result --value certbot.service") == "success"


def test_nginx_serves_the_certificate_and_the_chain_verifies_from_outside(edge, pebble):
    assert served_serial(EDGE) == cert_field(edge, live(EDGE, "cert.pem"), "-serial")
    fetch_pebble_root(pebble)
    body = pebble.check_output(f"curl -sf --cacert {PEBBLE_ROOT} https://{EDGE}/")
    assert body == "tls ok"


def test_deploy_hook_is_installed(edge):
    hook = edge.file("/etc/letsencrypt/renewal-hooks/deploy/50-berrychat-reload-nginx")
    assert hook.mode == 0o755
    assert hook.user == "root"


def test_forced_renewal_gets_a_new_certificate_and_the_hook_reloads_nginx(edge):
    before = cert_field(edge, live(EDGE, "cert.pem"), "-serial")
    before_target = edge.file(live(EDGE, "fullchain.pem")).linked_to
    assert served_serial(EDGE) == before
    since = int(time.time()) - 1
    out = edge.run("certbot renew --force-renewal --non-interactive --cert-name %s", EDGE)
    assert out.rc == 0, out.stdout + out.stderr
    after = cert_field(edge, live(EDGE, "cert.pem"), "-serial")
    assert after != before
    assert "Pebble" in cert_field(edge, live(EDGE, "cert.pem"), "-issuer")
    # The live link moved to the next version in the archive.
    assert edge.file(live(EDGE, "fullchain.pem")).linked_to != before_target
    # certbot ran the role's deploy hook, which checked and reloaded nginx ...
    journal = edge.check_output(f"journalctl --no-pager -o cat -t {HOOK_TAG} --since @{since}")
    assert f"certificate /etc/letsencrypt/live/{EDGE} deployed; nginx reloaded" in journal
    # ... so nginx now presents the renewed certificate without a restart.
    assert served_serial(EDGE) == after
