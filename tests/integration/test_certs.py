"""The device certificate matrix (tests/certs.py) is what it claims to be:
checked with the openssl command line (x509 -text, verify) and with the
proxy's own mapping code (tests/tools/identity_map over src/identity.c).

Other integration tests rely on these certificates to mean "expired",
"impostor", "revoked", ... so this file pins each of those properties down.
"""
import os
import subprocess
import sys

import pytest
from cryptography import x509

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import certs  # noqa: E402  (tests/certs.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# chain-valid devices: whatever is wrong with them is for the identity
# mapping to find, not for certificate verification
CHAIN_GOOD = ["alice", "bob", "carol_corp", "email_only", "no_upn", "two_upns",
              "upn_nul", "unmapped_suffix", "ia5_upn", "sid"]


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    return certs.make_matrix(str(tmp_path_factory.mktemp("certs")))


def openssl(*args):
    p = subprocess.run(["openssl", *args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace")
    return p.returncode, p.stdout


def text(path):
    rc, out = openssl("x509", "-noout", "-text", "-in", path)
    assert rc == 0, out
    return out


def verify(m, name, *extra):
    return openssl("verify", "-CAfile", m["device_ca"].cert, *extra, m[name].cert)


def upn_values(cert):
    """The raw DER of each UPN otherName value in the SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.value for n in san.get_values_for_type(x509.OtherName)
            if n.type_id.dotted_string == certs.UPN_OID]


def tool():
    d = os.environ.get("EKP_TOOLS") or os.path.join(ROOT, "build", "san", "tools")
    path = os.path.join(d, "identity_map")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it with `make san` (or set EKP_TOOLS)")
    return path


def identity_map(m, name, *opts):
    args = [tool(), "-r", "EXAMPLE.TEST", "-m", "corp.example:CORP.EXAMPLE.TEST",
            *opts, m[name].cert]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace")
    assert p.returncode in (0, 1), f"identity_map failed to run: {p.stdout}"
    return p.stdout


# ---- what openssl x509 -text shows ------------------------------------------

@pytest.mark.parametrize("name,upn", [("alice", "alice@EXAMPLE.TEST"),
                                      ("bob", "bob@EXAMPLE.TEST"),
                                      ("carol_corp", "carol@corp.example"),
                                      ("unmapped_suffix", "mallory@unmapped.example"),
                                      ("sid", "alice@EXAMPLE.TEST")])
def test_upn_shown_by_openssl(m, name, upn):
    assert f"othername: UPN::{upn}" in text(m[name].cert)


def test_good_device_has_client_auth_and_device_ca_issuer(m):
    out = text(m["alice"].cert)
    assert "TLS Web Client Authentication" in out
    assert "CA:FALSE" in out
    assert m["alice"].obj.issuer == m["device_ca"].obj.subject


def test_two_upns_shows_both(m):
    out = text(m["two_upns"].cert)
    assert "othername: UPN::alice@EXAMPLE.TEST" in out
    assert "othername: UPN::bob@EXAMPLE.TEST" in out


def test_no_upn_has_san_without_upn(m):
    out = text(m["no_upn"].cert)
    assert "DNS:device.example.test" in out
    assert "UPN" not in out
    assert upn_values(m["no_upn"].obj) == []


def test_email_only_has_rfc822_and_no_upn(m):
    out = text(m["email_only"].cert)
    assert "email:alice@example.test" in out
    assert upn_values(m["email_only"].obj) == []


def test_upn_nul_is_one_utf8string_with_a_nul(m):
    vals = upn_values(m["upn_nul"].obj)
    assert len(vals) == 1
    assert vals[0][0] == 0x0C, "UTF8String tag"
    assert vals[0].endswith(certs.NUL_UPN)
    assert b"\x00" in certs.NUL_UPN
    # the bytes are in the certificate as written, not truncated at the NUL
    der = m["upn_nul"].obj.public_bytes(certs.serialization.Encoding.DER)
    assert b"\x0c" + bytes([len(certs.NUL_UPN)]) + certs.NUL_UPN in der


def test_ia5_upn_is_an_ia5string(m):
    vals = upn_values(m["ia5_upn"].obj)
    assert vals == [b"\x16\x12alice@EXAMPLE.TEST"]
    assert [v[0] for v in upn_values(m["alice"].obj)] == [0x0C]


def test_sid_extension_present(m):
    out = text(m["sid"].cert)
    assert "1.3.6.1.4.1.311.25.2:" in out
    assert certs.ALICE_SID in out
    ext = m["sid"].obj.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(certs.SID_EXT_OID))
    assert not ext.critical
    with pytest.raises(x509.ExtensionNotFound):
        m["alice"].obj.extensions.get_extension_for_oid(
            x509.ObjectIdentifier(certs.SID_EXT_OID))


def test_server_certs_names(m):
    out = text(m["proxy_server"].cert)
    assert "DNS:proxy.example.test" in out and "IP Address:127.0.0.1" in out
    assert "TLS Web Server Authentication" in out
    out = text(m["exchange_server"].cert)
    assert "DNS:exchange.example.test" in out and "IP Address:127.0.0.1" in out


def test_keys_are_private_and_match(m):
    for name in ("alice", "proxy_server", "device_ca"):
        assert os.stat(m[name].key).st_mode & 0o077 == 0, f"{name}.key is readable by others"
        rc, pub_from_key = openssl("pkey", "-in", m[name].key, "-pubout")
        assert rc == 0, pub_from_key
        rc, pub_from_cert = openssl("x509", "-in", m[name].cert, "-noout", "-pubkey")
        assert rc == 0, pub_from_cert
        assert pub_from_key == pub_from_cert, f"{name}: key does not match certificate"


# ---- what openssl verify says ------------------------------------------------

@pytest.mark.parametrize("name", CHAIN_GOOD)
def test_chain_good_devices_verify_as_clients_with_crl(m, name):
    rc, out = verify(m, name, "-purpose", "sslclient", "-crl_check", "-CRLfile", m["crl"])
    assert rc == 0, f"{name} should verify against the device CA: {out}"
    assert ": OK" in out


def test_expired_fails(m):
    rc, out = verify(m, "expired")
    assert rc != 0 and "certificate has expired" in out, out


def test_not_yet_valid_fails(m):
    rc, out = verify(m, "not_yet_valid")
    assert rc != 0 and "certificate is not yet valid" in out, out


def test_wrong_ca_fails(m):
    rc, out = verify(m, "wrong_ca")
    assert rc != 0 and "unable to get local issuer certificate" in out, out
    # and it is a real certificate of its own CA
    rc, out = openssl("verify", "-CAfile", os.path.join(os.path.dirname(m["wrong_ca"].cert),
                                                       "other-ca.pem"), m["wrong_ca"].cert)
    assert rc == 0, out


def test_impostor_same_dn_other_key_fails_on_signature(m):
    imp_ca = os.path.join(os.path.dirname(m["impostor"].cert), "impostor-ca.pem")
    rc, out = openssl("x509", "-noout", "-subject", "-in", imp_ca)
    rc2, out2 = openssl("x509", "-noout", "-subject", "-in", m["device_ca"].cert)
    assert rc == 0 and rc2 == 0 and out == out2, "impostor CA must have the device CA's DN"
    rc, out = verify(m, "impostor")
    assert rc != 0 and "certificate signature failure" in out, out
    rc, out = openssl("verify", "-CAfile", imp_ca, m["impostor"].cert)
    assert rc == 0, out


def test_revoked_fails_only_with_crl_check(m):
    rc, out = verify(m, "revoked")
    assert rc == 0, f"without a CRL the revoked device still chains: {out}"
    rc, out = verify(m, "revoked", "-crl_check", "-CRLfile", m["crl"])
    assert rc != 0 and "certificate revoked" in out, out


def test_crl_lists_only_revoked(m):
    rc, out = openssl("crl", "-noout", "-text", "-in", m["crl"])
    assert rc == 0, out
    serial = format(m["revoked"].obj.serial_number, "X")
    assert serial in out.replace(":", "").upper()
    assert format(m["alice"].obj.serial_number, "X") not in out.replace(":", "").upper()


def test_no_client_eku_fails_as_client(m):
    rc, out = verify(m, "no_client_eku")
    assert rc == 0, f"chain itself is fine: {out}"
    rc, out = verify(m, "no_client_eku", "-purpose", "sslclient")
    assert rc != 0 and "unsuitable certificate purpose" in out, out


def test_server_certs_verify_only_against_server_ca(m):
    for name, host in (("proxy_server", "proxy.example.test"),
                       ("exchange_server", "exchange.example.test")):
        rc, out = openssl("verify", "-CAfile", m["server_ca"].cert, "-purpose", "sslserver",
                          "-verify_hostname", host, m[name].cert)
        assert rc == 0, out
        rc, out = verify(m, name)
        assert rc != 0, f"{name} must not chain to the device CA: {out}"


# ---- what the proxy's own mapping code makes of them ------------------------

@pytest.mark.parametrize("name,expect", [
    ("alice", "OK alice@EXAMPLE.TEST"),
    ("bob", "OK bob@EXAMPLE.TEST"),
    ("carol_corp", "OK carol@CORP.EXAMPLE.TEST"),
    ("sid", "OK alice@EXAMPLE.TEST"),
    ("no_upn", "REFUSED no_upn "),
    ("email_only", "REFUSED no_upn "),
    ("two_upns", "REFUSED two_upns "),
    ("upn_nul", "REFUSED nul_byte "),
    ("unmapped_suffix", "REFUSED suffix_unmapped "),
    ("ia5_upn", "REFUSED ia5_upn_not_allowed "),
])
def test_identity_map_over_matrix(m, name, expect):
    out = identity_map(m, name)
    assert out.startswith(expect), f"{name}: expected {expect!r}, got {out!r}"


def test_identity_map_ia5_when_allowed_and_email_source(m):
    assert identity_map(m, "ia5_upn", "-i").startswith("OK alice@EXAMPLE.TEST")
    assert identity_map(m, "email_only", "-s", "san_email").startswith(
        "OK alice@EXAMPLE.TEST")
    assert identity_map(m, "alice", "-a", "corp.example").startswith(
        "REFUSED suffix_not_allowed ")


def test_identity_map_reads_sid(m):
    assert f"SID {certs.ALICE_SID}\n" in identity_map(m, "sid", "-S")
    assert "SID absent\n" in identity_map(m, "alice", "-S")
