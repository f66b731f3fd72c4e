"""Federation keys: a CA, a coordinator certificate for the right hosts, site key pairs
Flower's SuperNode authentication reads; private keys 0600 and never overwritten."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from privacy.cli import main as privacy_main
from privacy.keys import (
    KeyFileError,
    KeyLayout,
    generate_keys,
    public_key_pem,
    read_certificate,
    read_site_private_key,
    read_site_public_key,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyLayout:
    out = tmp_path_factory.mktemp("keys")
    generate_keys(out, ["site-a", "site-b"], ["localhost", "127.0.0.1", "coord.example.org", "10.0.0.7"])
    return KeyLayout(out)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_owner_only(keys):
    for path in (keys.ca_key, keys.server_key, keys.site_key("site-a"), keys.site_key("site-b")):
        assert mode(path) == 0o600, path
    assert mode(keys.ca_cert) & 0o044  # certificates and public keys may be shared


def test_server_certificate_is_signed_by_the_ca_for_every_host(keys):
    ca = read_certificate(keys.ca_cert)
    cert = read_certificate(keys.server_cert)
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "coord.example.org"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.7")}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_tls_handshake_verifies_against_the_ca(keys):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(keys.server_cert, keys.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(keys.ca_cert))
    with socket.create_connection(("127.0.0.1", port)) as raw, client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.recv(2) == b"ok"
    thread.join(5)
    listener.close()
    wrong = ssl.create_default_context()  # the system CAs do not know the federation CA
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(target=lambda: _accept_quietly(listener, server_ctx), daemon=True)
    thread.start()
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            wrong.wrap_socket(raw, server_hostname="localhost")
    thread.join(5)
    listener.close()


def _accept_quietly(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    conn, _ = listener.accept()
    try:
        ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError):
        pass


def test_site_keys_are_p384_openssh_pairs_flower_accepts(keys):
    from flwr.cli.supernode.register import try_load_public_key

    private = load_ssh_private_key(keys.site_key("site-a").read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    public = read_site_public_key(keys.site_public_key("site-a"))
    assert public_key_pem(public) == public_key_pem(private.public_key())
    assert try_load_public_key(keys.site_public_key("site-a")) == public_key_pem(public)
    other = read_site_private_key(keys.site_key("site-b"))
    assert public_key_pem(other.public_key()) != public_key_pem(public)


def test_existing_keys_are_kept_and_new_sites_added(tmp_path):
    first = generate_keys(tmp_path, ["a"], ["localhost"])
    layout = KeyLayout(tmp_path)
    before = {p: p.read_bytes() for p in first.written}
    second = generate_keys(tmp_path, ["a", "b"], ["localhost"])
    assert {p: p.read_bytes() for p in before} == before
    assert set(second.kept) >= set(before)
    assert layout.site_key("b") in second.written and layout.site_key("a") not in second.written
    forced = generate_keys(tmp_path, ["a"], ["localhost"], force=True)
    assert layout.site_key("a") in forced.written
    assert layout.site_key("a").read_bytes() != before[layout.site_key("a")]
    assert layout.ca_key.read_bytes() != before[layout.ca_key]


def test_refuses_a_certificate_that_does_not_cover_new_hosts(tmp_path):
    generate_keys(tmp_path, ["a"], ["localhost"])
    with pytest.raises(KeyFileError, match="does not cover.*coord.example.org"):
        generate_keys(tmp_path, ["a"], ["localhost", "coord.example.org"])


def test_half_a_key_pair_is_an_error(tmp_path):
    generate_keys(tmp_path, ["a"], ["localhost"])
    KeyLayout(tmp_path).site_public_key("a").unlink()
    with pytest.raises(KeyFileError, match=r"a\.pub is missing"):
        generate_keys(tmp_path, ["a"], ["localhost"])


@pytest.mark.parametrize("name", ["", "a b", "../x", "-lead", "x" * 70])
def test_bad_site_names(tmp_path, name):
    with pytest.raises(KeyFileError, match="site name"):
        generate_keys(tmp_path, [name], ["localhost"])


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(KeyFileError, match="missing.key does not exist"):
        read_site_private_key(tmp_path / "missing.key")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match="junk.pub: not an OpenSSH public key"):
        read_site_public_key(tmp_path / "junk.pub")


def test_keys_command_always_adds_loopback(tmp_path, capsys):
    out = tmp_path / "k"
    assert privacy_main(["keys", "--out", str(out), "--sites", "h1,h2", "--hosts", "coord.example.org"]) == 0
    hosts = read_certificate(KeyLayout(out).server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"coord.example.org", "localhost"} <= set(hosts.get_values_for_type(x509.DNSName))
    assert privacy_main(["keys", "--out", str(out), "--sites", "h1", "--hosts", "coord.example.org"]) == 0
    assert "kept" in capsys.readouterr().out
    assert privacy_main(["keys", "--out", str(out), "--sites", "bad name"]) == 2


def test_an_out_path_that_is_a_file_is_refused_by_name(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("kept")
    assert privacy_main(["keys", "--out", str(afile), "--sites", "a"]) == 2
    assert f"--out {afile} is a file, not a folder for the keys" in capsys.readouterr().err
    assert afile.read_text() == "kept"
