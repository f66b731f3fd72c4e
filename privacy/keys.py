"""Certificates and site keys for a deployed federation.

The coordinator's SuperLink serves TLS with a certificate signed by the federation's
own certificate authority (CA); each site checks it with the CA certificate. Each site
proves who it is with an elliptic-curve key pair in OpenSSH format (the format Flower's
SuperNode authentication reads): the site keeps the private key, the coordinator
registers the public key. Private keys are written with mode 0600 and never replaced
unless the caller forces it, because replacing a CA or a site key locks sites out.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skeletons.atomic import atomic_path

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
CURVE = ec.SECP384R1()
CA_DAYS = 3650
SERVER_DAYS = 825
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


class KeyFileError(ValueError):
    """A key or certificate file is missing, unreadable or inconsistent; the message names it."""


@dataclass
class KeyLayout:
    """Where ``fedsar-privacy keys`` puts each file below its output folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    def site_key(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.key"

    def site_public_key(self, site: str) -> Path:
        return self.root / "sites" / f"{site}.pub"


@dataclass
class KeyReport:
    """Which files a run wrote and which it kept as they were."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def check_site_name(name: str) -> str:
    """Site names become file names and Prometheus labels: letters, digits, ``_.-``."""
    if not SITE_NAME.match(name):
        raise KeyFileError(f"site name {name!r}: use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def split_hosts(hosts: list[str]) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """Host names and IP addresses for the coordinator certificate's subject alternative names."""
    names, ips = [], []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            ips.append(ipaddress.ip_address(host))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host):
                raise KeyFileError(f"host {host!r} is neither an IP address nor a DNS name") from None
            names.append(host)
    if not names and not ips:
        raise KeyFileError("give at least one host name or IP address for the coordinator certificate")
    return names, ips


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def make_ca(name: str = "fedsar federation CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that signs only the coordinator's certificate."""
    key = ec.generate_private_key(CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The coordinator's TLS certificate, valid for every host name and IP in ``hosts``."""
    names, ips = split_hosts(hosts)
    key = ec.generate_private_key(CURVE)
    common = names[0] if names else str(ips[0])
    now = _now()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names] + [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_site_key() -> ec.EllipticCurvePrivateKey:
    """A site's authentication key (NIST P-384, as Flower's SuperNode authentication expects)."""
    return ec.generate_private_key(CURVE)


def site_key_files(key: ec.EllipticCurvePrivateKey, site: str) -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key line) for a site."""
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {site}\n".encode()


def certificate_hosts(cert: x509.Certificate) -> set[str]:
    """Host names and IPs (as strings) a certificate is valid for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(sans.get_values_for_type(x509.DNSName)) | {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def read_certificate(path: str | Path, what: str = "certificate") -> x509.Certificate:
    """Read a PEM certificate, naming the file when it is missing or not a certificate."""
    path = Path(path)
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise KeyFileError(f"{what} {path}: not a PEM certificate ({err})") from None


def read_site_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Read a site's OpenSSH EC private key, naming the file and the problem."""
    path = Path(path)
    data = _read(path, "site private key")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"site private key {path}: not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"site private key {path}: expected an elliptic-curve key, got {type(key).__name__}")
    return key


def read_site_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Read a site's OpenSSH EC public key (the ``.pub`` file the coordinator registers)."""
    path = Path(path)
    data = _read(path, "site public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"site public key {path}: not an OpenSSH public key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFileError(f"site public key {path}: expected an elliptic-curve key, got {type(key).__name__}")
    return key


def public_key_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    """The PEM form the SuperLink stores and compares for a registered site."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """Short SHA-256 fingerprint of a public key, for logs and ``fedsar-server status``."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return "SHA256:" + digest.finalize().hex()[:32]


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise KeyFileError(f"{what} {path} does not exist")
    try:
        return path.read_bytes()
    except OSError as err:
        raise KeyFileError(f"{what} {path} cannot be read: {err.strerror}") from None


def generate_keys(out: str | Path, sites: list[str], hosts: list[str], force: bool = False) -> KeyReport:
    """Create the CA, the coordinator certificate and one key pair per site under ``out``.

    Files that exist are kept (and listed in the report) unless ``force``; a new site
    can therefore be added later without touching the CA or the other sites. An
    existing coordinator certificate that does not cover ``hosts`` is an error.
    """
    layout = KeyLayout(Path(out))
    report = KeyReport()
    for site in sites:
        check_site_name(site)
    if len(set(sites)) != len(sites):
        raise KeyFileError(f"site names repeat: {sites}")
    split_hosts(hosts)

    have_ca = layout.ca_cert.exists() or layout.ca_key.exists()
    if have_ca and not force:
        if not (layout.ca_cert.exists() and layout.ca_key.exists()):
            missing = layout.ca_key if layout.ca_cert.exists() else layout.ca_cert
            raise KeyFileError(f"{missing} is missing but its partner exists; restore it or rerun with --force")
        ca_cert = read_certificate(layout.ca_cert, "CA certificate")
        ca_key = serialization.load_pem_private_key(_read(layout.ca_key, "CA key"), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise KeyFileError(f"CA key {layout.ca_key}: expected an elliptic-curve key")
        report.kept += [layout.ca_cert, layout.ca_key]
        ca_renewed = False
    else:
        ca_key, ca_cert = make_ca()
        _write(layout.ca_key, _pem_key(ca_key), PRIVATE_MODE)
        _write(layout.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
        report.written += [layout.ca_key, layout.ca_cert]
        ca_renewed = True

    have_server = layout.server_cert.exists() and layout.server_key.exists()
    if have_server and not force and not ca_renewed:
        existing = read_certificate(layout.server_cert, "coordinator certificate")
        wanted = {h.strip() for h in hosts if h.strip()}
        missing_hosts = wanted - certificate_hosts(existing)
        if missing_hosts:
            raise KeyFileError(
                f"coordinator certificate {layout.server_cert} does not cover {sorted(missing_hosts)}; "
                "rerun with --force to issue a new one"
            )
        report.kept += [layout.server_cert, layout.server_key]
    else:
        server_key, server_cert = make_server_cert(ca_key, ca_cert, hosts)
        _write(layout.server_key, _pem_key(server_key), PRIVATE_MODE)
        _write(layout.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
        report.written += [layout.server_key, layout.server_cert]

    for site in sites:
        private_path, public_path = layout.site_key(site), layout.site_public_key(site)
        if (private_path.exists() or public_path.exists()) and not force:
            if not (private_path.exists() and public_path.exists()):
                missing = public_path if private_path.exists() else private_path
                raise KeyFileError(f"{missing} is missing but its partner exists; restore it or rerun with --force")
            report.kept += [private_path, public_path]
            continue
        private, public = site_key_files(make_site_key(), site)
        _write(private_path, private, PRIVATE_MODE)
        _write(public_path, public, PUBLIC_MODE)
        report.written += [private_path, public_path]
    return report
