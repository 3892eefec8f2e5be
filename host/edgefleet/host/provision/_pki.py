"""X.509 and key-file helpers for the fleet CA: certificates, CRLs, atomic 0600 key files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.host.errors import ProvisionError

TlsKey = ec.EllipticCurvePrivateKey
_DAY = dt.timedelta(days=1)
# Certificates start a little in the past so a device whose clock lags the host's
# by a few minutes still accepts them (and the broker accepts the device's).
_BACKDATE = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class CertificateAuthority:
    """The fleet CA: its key and self-signed certificate."""

    key: TlsKey
    cert: x509.Certificate


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(dt.timezone.utc)


def new_tls_key() -> TlsKey:
    """Return a fresh ECDSA P-256 key (what OpenSSL, Mosquitto and EMQX all accept)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: TlsKey | ed25519.Ed25519PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """Serialize a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(*, name: str, days: int = 3650, key: TlsKey | None = None) -> CertificateAuthority:
    """Create a self-signed CA that may sign end-entity certificates only (pathlen 0)."""
    key = key or new_tls_key()
    subject = _name(f"{name} CA", name)
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, cert=cert)


def _san(entries: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for entry in entries:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(names)


def issue_certificate(
    ca: CertificateAuthority,
    *,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey,
    server: bool = False,
    sans: list[str] | None = None,
    days: int = 1825,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """Issue a TLS certificate signed by ``ca``.

    Args:
        ca: The issuing CA.
        common_name: Subject CN; for clients the broker uses it as the MQTT username.
        public_key: The subject's public key.
        server: Server certificate (serverAuth + SANs) instead of a client one.
        sans: DNS names or IP addresses for a server certificate.
        days: Validity from now when ``not_after`` is not given.
        not_before: Override the start of validity (tests issue expired certificates).
        not_after: Override the end of validity.
    """
    now = utcnow()
    start = not_before or now - _BACKDATE
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, _org(ca)))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server:
        if not sans:
            raise ProvisionError("a server certificate needs at least one SAN (host name or IP)")
        builder = builder.add_extension(_san(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _org(ca: CertificateAuthority) -> str:
    attrs = ca.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(attrs[0].value) if attrs else "edgefleet"


def build_crl(
    ca: CertificateAuthority, *, revoked: dict[int, dt.datetime], days: int
) -> x509.CertificateRevocationList:
    """Return a CRL signed by ``ca`` listing ``revoked`` (serial -> revocation time).

    OpenSSL refuses every client once ``next_update`` has passed, so the CRL must be
    re-signed before then (``edgefleet revoke --refresh-crl``).
    """
    now = utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + days * _DAY)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def load_ca(*, cert_path: Path, key_path: Path) -> CertificateAuthority:
    """Load the fleet CA from PEM files, with a clear error if they are missing or wrong."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"cannot load the fleet CA from {cert_path} / {key_path}: {exc}"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{key_path} is not an EC private key (the fleet CA key)")
    return CertificateAuthority(key=key, cert=cert)


def load_certificate(path: Path) -> x509.Certificate:
    """Load one PEM certificate, raising ProvisionError with the path on failure."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read certificate {path}: {exc}") from exc


def signing_public_pem(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> bytes:
    """Return the SubjectPublicKeyInfo PEM of an Ed25519 key (or of its private key)."""
    public = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
