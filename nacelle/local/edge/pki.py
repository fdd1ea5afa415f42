"""A local certificate authority for the local MQTT broker (mutual TLS), built with `cryptography` only.

Layout under `root` (all PEM; private keys mode 0600; `root` 0755 so that the CA certificate is readable,
`clients/` 0700):

    ca.pem ca.key                    the local CA (EC P-256, 10 years, basicConstraints CA:TRUE)
    server.pem server.key            the broker (SAN DNS:localhost, IP:127.0.0.1; EKU serverAuth)
    clients/<name>.pem <name>.key    one client certificate per device, one per device's sensor source and
                                     one for the cloud side (CN = thing name / `<thing>.sensors` /
                                     `nacelle-cloud`; EKU clientAuth)

Everything is created on first use and reused afterwards. A leaf is re-issued only when its files are missing,
unreadable, expired, or not issued by the current CA. Private key material is never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import ConfigurationError

CLOUD_CLIENT = "nacelle-cloud"
CA_NAME = "Nacelle local CA"
SERVER_NAME = "localhost"
SENSOR_SOURCE = ".sensors"  # CN suffix of a turbine's sensor source
THING_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)
_RENEW_BEFORE = dt.timedelta(days=7)

__all__ = ["CLOUD_CLIENT", "DeviceCredentials", "LocalPki", "validate_thing_name"]


@dataclass(frozen=True)
class DeviceCredentials:
    cert_path: Path
    key_path: Path
    ca_path: Path


def validate_thing_name(name: str) -> str:
    """A thing name becomes the MQTT username and part of topic ACLs: no `/`, `+`, `#` or anything exotic."""
    if not isinstance(name, str) or not THING_NAME.fullmatch(name):
        raise ConfigurationError(f"invalid thing name {name!r}: must match {THING_NAME.pattern}")
    return name


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a key atomically, created 0600 from the start (never world-readable, even briefly)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # regardless of umask or a leftover file
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    tmp.replace(path)


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return None
    if cert.not_valid_after_utc - _RENEW_BEFORE < _now():
        return None
    if (key_path.stat().st_mode & 0o077) != 0:
        key_path.chmod(0o600)
    return cert, key


class LocalPki:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    # ------------------------------------------------------------------ paths
    @property
    def ca_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.root / "server.key"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    # ------------------------------------------------------------------ public API
    def ensure(self) -> LocalPki:
        """Create (or reuse) the CA and the server certificate."""
        self._ensure_ca()
        self.server()
        return self

    def server(self) -> tuple[Path, Path]:
        """(certfile, keyfile) of the broker's certificate."""
        self._ensure_leaf(self.server_cert_path, self.server_key_path, SERVER_NAME, server=True)
        return self.server_cert_path, self.server_key_path

    def device(self, thing_name: str) -> DeviceCredentials:
        """The client certificate of one device (CN = thing name = MQTT username)."""
        validate_thing_name(thing_name)
        if thing_name == CLOUD_CLIENT:
            raise ConfigurationError(f"{CLOUD_CLIENT!r} is reserved for the cloud side; it cannot be a thing name")
        return self._client(thing_name)

    def cloud(self) -> DeviceCredentials:
        """The cloud side's own client certificate (CN `nacelle-cloud`)."""
        return self._client(CLOUD_CLIENT)

    def sensor_source(self, thing_name: str) -> DeviceCredentials:
        """The certificate of a turbine's sensor source (its simulator, a PLC gateway): CN `<thing>.sensors`,
        which no thing name can be (no dot); the broker lets it write that turbine's sensor topic only."""
        return self._client(validate_thing_name(thing_name) + SENSOR_SOURCE)

    def sensor_sources(self) -> list[str]:
        """The things whose sensor source has a certificate."""
        suffix = f"{SENSOR_SOURCE}.pem"
        return sorted(p.name[:-len(suffix)] for p in self.clients_dir.glob(f"*{suffix}"))

    # ------------------------------------------------------------------ internals
    def _client(self, name: str) -> DeviceCredentials:
        cert_path = self.clients_dir / f"{name}.pem"
        key_path = self.clients_dir / f"{name}.key"
        self._ensure_leaf(cert_path, key_path, name, server=False)
        return DeviceCredentials(cert_path=cert_path, key_path=key_path, ca_path=self.ca_path)

    def _ensure_dirs(self) -> None:
        """`root` readable (components read the CA certificate; its keys are 0600), `clients/` the owner's only:
        a device's components get their own pair from their nucleus (nacelle/local/edge/nucleus.py)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.clients_dir.mkdir(exist_ok=True, mode=0o700)
        self.clients_dir.chmod(0o700)

    def _ensure_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._ca is not None and self.ca_path.exists() and self.ca_key_path.exists():
            return self._ca
        self._ensure_dirs()
        pair = _load_pair(self.ca_path, self.ca_key_path)
        if pair is None:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Nacelle (local)"),
                              x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
            now = _now()
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + CA_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256())
            )
            _write_private_key(self.ca_key_path, key)
            _write_cert(self.ca_path, cert)
            pair = (cert, key)
        self._ca = pair
        return pair

    def _ensure_leaf(self, cert_path: Path, key_path: Path, common_name: str, *, server: bool) -> None:
        ca_cert, ca_key = self._ensure_ca()
        pair = _load_pair(cert_path, key_path)
        if pair is not None:
            try:
                pair[0].verify_directly_issued_by(ca_cert)
                return
            except (ValueError, TypeError, InvalidSignature):
                pass  # issued by an older CA: re-issue
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                             x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private_key(key_path, key)
        _write_cert(cert_path, cert)
