#!/usr/bin/python3
"""Test-time certificate factory (SPEC §5 device certificate matrix).

Every certificate is generated when a test runs (nginx-tests style); nothing
is checked in. Each function writes `<name>.pem` (certificate) and
`<name>.key` (PKCS#8 key, mode 0600) into a directory and returns an
`Issued` (paths plus the cryptography objects, so a test can sign more).

    import certs
    m = certs.make_matrix(tmpdir)
    m["alice"].cert, m["alice"].key, m["device_ca"].cert, m["crl"]

Cases (SPEC §5 and the lab notes):
    alice, bob        good devices, UPN alice@EXAMPLE.TEST / bob@EXAMPLE.TEST
    carol_corp        UPN carol@corp.example (for suffix_realms)
    email_only        rfc822Name alice@example.test, no UPN (source = san_email)
    expired           validity ended yesterday
    not_yet_valid     validity starts tomorrow
    wrong_ca          issued by another CA (other DN, other key)
    impostor          issued by a CA with the device CA's DN but another key
    revoked           listed in the CRL (`crl`) issued by the device CA
    no_client_eku     extendedKeyUsage = serverAuth only (an absent EKU
                      would mean "any purpose" to OpenSSL)
    no_upn            SAN with a DNS name only
    two_upns          two UPN otherNames (alice and bob)
    upn_nul           UPN "alice@EXAMPLE.TEST\\0.evil.example"
    unmapped_suffix   UPN mallory@unmapped.example
    ia5_upn           UPN alice@EXAMPLE.TEST as IA5String instead of UTF8String
    sid               UPN alice@EXAMPLE.TEST + SID extension 1.3.6.1.4.1.311.25.2
Server side: device_ca, server_ca, proxy_server (proxy.example.test,
localhost, 127.0.0.1), exchange_server (exchange.example.test, localhost,
127.0.0.1), both issued by server_ca so the device CA never vouches for a
server and the reverse.

Uses the `cryptography` package of Debian's /usr/bin/python3.
"""
import collections
import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

REALM = "EXAMPLE.TEST"
UPN_OID = "1.3.6.1.4.1.311.20.2.3"
SID_EXT_OID = "1.3.6.1.4.1.311.25.2"        # szOID_NTDS_CA_SECURITY_EXT
SID_OID = "1.3.6.1.4.1.311.25.2.1"          # szOID_NTDS_OBJECTSID
ALICE_SID = "S-1-5-21-1004336348-1177238915-682003330-1104"
NUL_UPN = b"alice@EXAMPLE.TEST\x00.evil.example"

DEVICE_CA_DN = "EAS Device CA"
SERVER_CA_DN = "EAS Lab Server CA"

# cert/key: paths; obj/key_obj: cryptography objects (issue more with them)
Issued = collections.namedtuple("Issued", "cert key obj key_obj")

_ONE_DAY = datetime.timedelta(days=1)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


# ---- DER bits cryptography does not build for us -------------------------

def _der_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag, body):
    return bytes([tag]) + _der_len(len(body)) + body


def _der_oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        enc = [p & 0x7F]
        p >>= 7
        while p:
            enc.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(enc))
    return _tlv(0x06, bytes(out))


def upn_name(value, ia5=False):
    """A SAN otherName UPN; value str or bytes (bytes may hold anything)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return x509.OtherName(ObjectIdentifier(UPN_OID), _tlv(0x16 if ia5 else 0x0C, value))


def sid_extension(sid):
    """The Microsoft SID extension: GeneralNames { otherName SID_OID
    [0] EXPLICIT OCTET STRING sid } (KB5014754)."""
    other = _tlv(0xA0, _der_oid(SID_OID) + _tlv(0xA0, _tlv(0x04, sid.encode("ascii"))))
    return x509.UnrecognizedExtension(ObjectIdentifier(SID_EXT_OID), _tlv(0x30, other))


# ---- keys and files --------------------------------------------------------

def _new_key(key_type):
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _write(directory, name, cert, key):
    os.makedirs(directory, exist_ok=True)
    cpath = os.path.join(directory, name + ".pem")
    kpath = os.path.join(directory, name + ".key")
    with open(cpath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(kpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return Issued(cpath, kpath, cert, key)


def _dn(cn, org):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


# ---- CAs -------------------------------------------------------------------

def ca(directory, name, cn, org="Example Lab", key_type="ec", key=None):
    """A self-signed CA (basicConstraints CA:TRUE, keyCertSign + cRLSign)."""
    key = key or _new_key(key_type)
    now = _now()
    dn = _dn(cn, org)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(dn).issuer_name(dn)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + 3650 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return _write(directory, name, cert, key)


def device_ca(directory, key_type="ec"):
    return ca(directory, "device-ca", DEVICE_CA_DN, key_type=key_type)


def server_ca(directory, key_type="ec"):
    return ca(directory, "server-ca", SERVER_CA_DN, key_type=key_type)


def crl(directory, issuer, revoked=(), name="device-ca.crl"):
    """A CRL signed by issuer listing the serials of the Issued certs in
    revoked; written as <name>.pem. Returns the path."""
    now = _now()
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(issuer.obj.subject)
         .last_update(now - datetime.timedelta(hours=1))
         .next_update(now + 7 * _ONE_DAY)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer.key_obj.public_key()), critical=False)
         .add_extension(x509.CRLNumber(1), critical=False))
    for r in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(r.obj.serial_number)
            .revocation_date(now - datetime.timedelta(hours=1))
            .build())
    c = b.sign(issuer.key_obj, hashes.SHA256())
    path = os.path.join(directory, name + ".pem")
    with open(path, "wb") as f:
        f.write(c.public_bytes(serialization.Encoding.PEM))
    return path


# ---- leaves ----------------------------------------------------------------

def leaf(directory, name, issuer, cn, san=(), eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
         not_before=None, not_after=None, extra_extensions=(), key_type="ec",
         org="Example Devices", aki=True):
    """Any end-entity certificate issued by issuer (an Issued CA). san: a
    list of x509.GeneralName; eku: OIDs (empty = no EKU extension); aki:
    add an authorityKeyIdentifier naming the issuer's key."""
    key = _new_key(key_type)
    now = _now()
    b = (x509.CertificateBuilder()
         .subject_name(_dn(cn, org))
         .issuer_name(issuer.obj.subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before or now - datetime.timedelta(hours=1))
         .not_valid_after(not_after or now + 365 * _ONE_DAY)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=key_type == "rsa",
                                      data_encipherment=False, key_agreement=False,
                                      key_cert_sign=False, crl_sign=False,
                                      encipher_only=False, decipher_only=False),
                        critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if aki:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key_obj.public_key()), critical=False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    for ext in extra_extensions:
        b = b.add_extension(ext, critical=False)
    return _write(directory, name, b.sign(issuer.key_obj, hashes.SHA256()), key)


def server_cert(directory, name, issuer, dns_names, ips=("127.0.0.1",), key_type="ec"):
    import ipaddress
    san = [x509.DNSName(d) for d in dns_names] + \
          [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return leaf(directory, name, issuer, dns_names[0], san=san,
                eku=(ExtendedKeyUsageOID.SERVER_AUTH,), key_type=key_type,
                org="Example Lab")


def proxy_server(directory, issuer, key_type="ec"):
    return server_cert(directory, "proxy-server", issuer,
                       ["proxy.example.test", "localhost"], key_type=key_type)


def exchange_server(directory, issuer, key_type="ec"):
    return server_cert(directory, "exchange-server", issuer,
                       ["exchange.example.test", "localhost"], key_type=key_type)


def device(directory, name, issuer, upns=(), emails=(), dns=(), **kw):
    """A device certificate (clientAuth) whose SAN holds the given UPNs
    (str/bytes, or an x509.OtherName from upn_name()), e-mails, DNS names."""
    san = [u if isinstance(u, x509.OtherName) else upn_name(u) for u in upns]
    san += [x509.RFC822Name(e) for e in emails] + [x509.DNSName(d) for d in dns]
    return leaf(directory, name, issuer, kw.pop("cn", name), san=san, **kw)


# ---- the matrix cases ------------------------------------------------------

def good_user(directory, issuer, user="alice", suffix=REALM):
    return device(directory, user, issuer, upns=[f"{user}@{suffix}"], cn=user)


def expired(directory, issuer):
    now = _now()
    return device(directory, "expired", issuer, upns=[f"alice@{REALM}"], cn="alice",
                  not_before=now - 30 * _ONE_DAY, not_after=now - _ONE_DAY)


def not_yet_valid(directory, issuer):
    now = _now()
    return device(directory, "not_yet_valid", issuer, upns=[f"alice@{REALM}"], cn="alice",
                  not_before=now + _ONE_DAY, not_after=now + 30 * _ONE_DAY)


def wrong_ca(directory):
    """A device issued by an unrelated CA (written as other-ca.pem)."""
    other = ca(directory, "other-ca", "Some Other CA", org="Elsewhere")
    return device(directory, "wrong_ca", other, upns=[f"alice@{REALM}"], cn="alice")


def impostor(directory, issuer):
    """A device issued by a CA with exactly the device CA's DN but its own
    key (written as impostor-ca.pem). It carries no authorityKeyIdentifier,
    so a verifier finds the real device CA by name and must fail on the
    signature itself."""
    fake = ca(directory, "impostor-ca", DEVICE_CA_DN)
    if fake.obj.subject != issuer.obj.subject:
        raise ValueError("impostor CA must copy the device CA's DN")
    return device(directory, "impostor", fake, upns=[f"alice@{REALM}"], cn="alice",
                  aki=False)


def revoked(directory, issuer):
    """A device to list in the CRL (see crl())."""
    return device(directory, "revoked", issuer, upns=[f"alice@{REALM}"], cn="alice")


def no_client_eku(directory, issuer):
    return device(directory, "no_client_eku", issuer, upns=[f"alice@{REALM}"], cn="alice",
                  eku=(ExtendedKeyUsageOID.SERVER_AUTH,))


def no_upn(directory, issuer):
    return device(directory, "no_upn", issuer, dns=["device.example.test"], cn="alice")


def two_upns(directory, issuer):
    return device(directory, "two_upns", issuer,
                  upns=[f"alice@{REALM}", f"bob@{REALM}"], cn="alice")


def upn_nul(directory, issuer):
    return device(directory, "upn_nul", issuer, upns=[NUL_UPN], cn="alice")


def unmapped_suffix(directory, issuer):
    return device(directory, "unmapped_suffix", issuer,
                  upns=["mallory@unmapped.example"], cn="mallory")


def ia5_upn(directory, issuer):
    return device(directory, "ia5_upn", issuer,
                  upns=[upn_name(f"alice@{REALM}", ia5=True)], cn="alice")


def with_sid(directory, issuer, sid=ALICE_SID):
    return device(directory, "sid", issuer, upns=[f"alice@{REALM}"], cn="alice",
                  extra_extensions=[sid_extension(sid)])


def email_only(directory, issuer):
    return device(directory, "email_only", issuer, emails=["alice@example.test"],
                  cn="alice")


def make_matrix(directory, key_type="ec"):
    """Write the whole matrix into directory. Returns a dict: name → Issued
    for every certificate (CAs included) and "crl" → path of the device
    CA's CRL, which lists only "revoked"."""
    os.makedirs(directory, exist_ok=True)
    m = {}
    dca = m["device_ca"] = device_ca(directory, key_type)
    sca = m["server_ca"] = server_ca(directory, key_type)
    m["proxy_server"] = proxy_server(directory, sca, key_type)
    m["exchange_server"] = exchange_server(directory, sca, key_type)
    m["alice"] = good_user(directory, dca, "alice")
    m["bob"] = good_user(directory, dca, "bob")
    m["carol_corp"] = device(directory, "carol_corp", dca, upns=["carol@corp.example"],
                             cn="carol")
    m["email_only"] = email_only(directory, dca)
    m["expired"] = expired(directory, dca)
    m["not_yet_valid"] = not_yet_valid(directory, dca)
    m["wrong_ca"] = wrong_ca(directory)
    m["impostor"] = impostor(directory, dca)
    m["revoked"] = revoked(directory, dca)
    m["no_client_eku"] = no_client_eku(directory, dca)
    m["no_upn"] = no_upn(directory, dca)
    m["two_upns"] = two_upns(directory, dca)
    m["upn_nul"] = upn_nul(directory, dca)
    m["unmapped_suffix"] = unmapped_suffix(directory, dca)
    m["ia5_upn"] = ia5_upn(directory, dca)
    m["sid"] = with_sid(directory, dca)
    m["crl"] = crl(directory, dca, revoked=[m["revoked"]])
    return m


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 2:
        sys.exit("usage: certs.py DIR   (writes the device certificate matrix)")
    for k, v in sorted(make_matrix(sys.argv[1]).items()):
        print(f"{k:16} {v if isinstance(v, str) else v.cert}")
