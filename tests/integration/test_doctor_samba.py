"""`eas-kcd-proxy doctor` against a real Active Directory KDC and directory
(Samba AD, samba_lab.py): the proxy's service account easproxy with
protocol transition and msDS-AllowedToDelegateTo, the directory checks with
a GSSAPI bind, and the lab's Apache keyed from the domain as Exchange.
Every check is OK for a good user, including [ldap]; the directory's and
the AD KDC's refusals fail their own checks.
"""

import shutil

import pytest

from ekp import Proxy, free_port
from samba_fixtures import samba, samba_session  # noqa: F401  (fixtures)
from test_doctor import EVERY_CHECK, doctor


@pytest.fixture
def ad_proxy(samba):
    """A Proxy (not started) configured for the Samba domain, with the
    domain-keyed Apache as Exchange; removed at teardown."""
    made = []

    def make(ldap=None):
        ex = samba.start_exchange()
        settings = {
            "identity": {"realm": samba.realm,
                         "suffix_realms": f"{samba.dns_domain}:{samba.realm}"},
            "kerberos": {"keytab": samba.keytab,
                         "principal": f"{samba.proxy}@{samba.realm}",
                         "krb5_conf": samba.krb5_conf},
            "backend": {"servers": f"{ex.BACKEND_HOST}:{ex.backend_port}",
                        "connect_to": f"127.0.0.1:{ex.backend_port}",
                        "ca": ex.backend_ca,
                        "spn": samba.lab_exchange_spn},
            "ldap": {"uri": samba.ldap_uri, "base_dn": samba.base_dn,
                     "require_group": samba.group_dn(samba.eas_group), "timeout": "5s"},
            "log": {"access_log": "off"},
        }
        settings["ldap"].update(ldap or {})
        p = Proxy(workers=1, settings=settings)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
        shutil.rmtree(p.dir, ignore_errors=True)


def test_good_user_every_check_is_ok_including_ldap(ad_proxy, samba):
    d = doctor(ad_proxy(), "--user", f"alice@{samba.dns_domain}", expected_code=0)
    names = {n for _, n, _ in d.lines}
    assert set(EVERY_CHECK) - {"crl"} <= names, d
    bad = [(st, n, t) for st, n, t in d.lines if st != "OK" and n != "crl"]
    assert not bad, f"lines that are not OK: {bad}\n{d}"
    d.expect("keytab", "OK", f"{samba.proxy}@{samba.realm}", "aes256")
    d.expect("ldap", "OK", f"bound to {samba.ldap_uri}",
             f"the directory allows alice@{samba.realm}")
    d.expect("s4u2self", "OK", f"alice@{samba.realm}", "forwardable")
    d.expect("s4u2proxy", "OK", "HTTP@exchange.example.test")
    d.expect("exchange", "OK", ": 200 from", "mutual authentication verified")


def test_without_user_the_directory_is_probed(ad_proxy, samba):
    d = doctor(ad_proxy(), expected_code=0)
    d.expect("ldap", "OK", f"bound to {samba.ldap_uri} and searched {samba.base_dn}",
             "not_found")


def test_logon_name_from_the_directory_is_what_kerberos_uses(ad_proxy, samba):
    d = doctor(ad_proxy(), "--user", f"bob.smith@{samba.dns_domain}", expected_code=0)
    d.expect("user", "OK", f"bob.smith@{samba.realm}")
    d.expect("ldap", "OK", f"as bsmith@{samba.realm}")
    d.expect("s4u2self", "OK", f"bsmith@{samba.realm}")
    d.expect("exchange", "OK", f"as bsmith@{samba.realm}")


def test_disabled_account_is_refused_by_the_directory(ad_proxy, samba):
    d = doctor(ad_proxy(), "--user", f"disabled@{samba.dns_domain}", expected_code=1)
    d.expect("ldap", "FAIL", f"the directory refuses disabled@{samba.realm}: disabled",
             "hint: a device of this user gets 403 ldap_disabled")
    d.expect("s4u2self", "SKIP", "the directory refuses")


def test_sensitive_account_cannot_be_delegated(ad_proxy, samba):
    d = doctor(ad_proxy(), "--user", f"sensitive@{samba.dns_domain}", expected_code=1)
    d.expect("ldap", "OK")
    d.expect("s4u2self", "FAIL", "not forwardable", "sensitive and cannot be delegated")


def test_directory_unreachable(ad_proxy):
    port = free_port()
    d = doctor(ad_proxy(ldap={"uri": f"ldap://127.0.0.1:{port}", "timeout": "2s"}),
               "--user", "alice@ad.example.test", expected_code=1)
    d.expect("ldap", "FAIL", "cannot use the directory", "hint: check [ldap] uri")
    d.expect("tgt", "OK")
