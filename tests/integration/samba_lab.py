"""A throwaway Samba Active Directory domain controller for the directory
checks (SPEC §7) and KCD through a real AD KDC.

`SambaLab` provisions a domain into a temp dir (`samba-tool domain
provision`, a few seconds), starts `samba` in the foreground on one
loopback address (127.0.0.2 when its AD ports are free, else another
127.x.y.z) with only the LDAP and KDC services, fills it with the accounts
below, and stops it by pid.  Nothing outside the temp dir is written.

    dc = SambaLab()
    dc.start()
    ... dc.ldap_uri, dc.ldaps_uri, dc.krb5_conf, dc.keytab, dc.cert(name),
        dc.sid(user), dc.user_dn(user) ...
    dc.stop()

Realm AD.EXAMPLE.TEST (DNS domain ad.example.test, NetBIOS ADLAB), base DN
DC=ad,DC=example,DC=test.  Accounts (sAMAccountName: what it is for):

  alice       UPN alice@ad.example.test, in "EAS Users" (directly)
  bsmith      UPN bob.smith@ad.example.test: the UPN prefix is not the
              logon name, the principal must be bsmith@AD.EXAMPLE.TEST
  carol       in "Sales", which is a member of "EAS Users" (nested)
  dave        in no group
  disabled    userAccountControl ACCOUNTDISABLE, in "EAS Users"
  locked      locked out by failed logons (lockout threshold 3), in the group
  expired     accountExpires in the past, in the group
  sensitive   NOT_DELEGATED ("sensitive and cannot be delegated"), in group
  erin        altSecurityIdentities X509:<I>issuer<SR>serial  (strong)
  frank       altSecurityIdentities X509:<SKI>...             (strong)
  grace       altSecurityIdentities X509:<SHA1-PUKEY>...      (strong)
  heidi       altSecurityIdentities X509:<I>issuer<S>subject  (weak)
  ivan        altSecurityIdentities X509:<S>subject           (weak)
  (all of erin..ivan are in "EAS Users")
  easproxy    the proxy's service account: SPN HTTP/proxy.ad.example.test,
              AES only, "trusted to authenticate for delegation" (protocol
              transition) to HTTP/exchange.ad.example.test; keytab
              dc.keytab (principal easproxy@AD.EXAMPLE.TEST)
  exchange    the Exchange stand-in's account, SPN
              HTTP/exchange.ad.example.test, AES only; keytab
              dc.exchange_keytab

Device certificates (dc.cert(name) -> certs.Issued), issued by the device
CA dc.device_ca at start(), every one with clientAuth:
  alice, bsmith (UPN bob.smith@ad.example.test), carol, dave, disabled,
  locked, expired, sensitive      UPN <name>@ad.example.test, no SID
  alice_sid       alice's UPN + SID extension with alice's objectSid
  alice_badsid    alice's UPN + SID extension with dave's objectSid
  alice_sidurl    alice's UPN + SAN URL tag:microsoft.com,2022-09-14:sid:<sid>
  erin grace heidi ivan   no UPN (CN=<name>): found only by altSecurityIdentities
  frank           UPN frank@ad.example.test, bound by <SKI>
  frank_rekeyed   frank's UPN and subject, another key (SKI differs)
  mallory         no UPN, bound to nobody

The LDAP server refuses simple binds without TLS (like hardened AD); LDAPS
uses a certificate from dc.server_ca for dc1.ad.example.test and the IP.
GSSAPI binds to ldap://IP work: the DC account carries ldap/IP as an SPN.

Run as a script it builds the lab and waits, for poking at it by hand:
    /usr/bin/python3 tests/integration/samba_lab.py
"""

import datetime
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import certs  # noqa: E402  (tests/certs.py)
from lab import LabError, spawn, stop_pid  # noqa: E402

REALM = "AD.EXAMPLE.TEST"
DNS_DOMAIN = "ad.example.test"
NETBIOS = "ADLAB"
BASE_DN = "DC=ad,DC=example,DC=test"
DC_HOST = "dc1"
ADMIN_PW = "Lab-Admin-Pass1!"
USER_PW = "Lab-User-Pass1!"
EAS_GROUP = "EAS Users"
NESTED_GROUP = "Sales"
PROXY = "easproxy"
PROXY_SPN = "HTTP/proxy." + DNS_DOMAIN
EXCHANGE = "exchange"
EXCHANGE_HOST = "exchange." + DNS_DOMAIN
EXCHANGE_SPN = "HTTP/" + EXCHANGE_HOST
# the name the MIT lab's Apache stand-in accepts (lab.BACKEND_HOST): Exchange
# carries it as a second SPN, so that Apache serves as Exchange here too
LAB_EXCHANGE_SPN = "HTTP/exchange.example.test"
SID_URL_PREFIX = "tag:microsoft.com,2022-09-14:sid:"

# AD's ports on the DC address: LDAP, LDAPS, KDC, kpasswd, global catalog
AD_PORTS = (389, 636, 88, 464, 3268, 3269)

# userAccountControl bits (MS-ADTS 2.2.16)
UF_ACCOUNTDISABLE = 0x2
UF_NORMAL_ACCOUNT = 0x200
UF_DONT_EXPIRE_PASSWD = 0x10000
UF_NOT_DELEGATED = 0x100000
UF_TRUSTED_TO_AUTH_FOR_DELEGATION = 0x1000000
ENCTYPES_AES = 0x18

# sAMAccountName -> (UPN local part or None, groups, extra uac bits)
USERS = {
    "alice": ("alice", [EAS_GROUP], 0),
    "bsmith": ("bob.smith", [EAS_GROUP], 0),
    "carol": ("carol", [NESTED_GROUP], 0),
    "dave": ("dave", [], 0),
    "disabled": ("disabled", [EAS_GROUP], UF_ACCOUNTDISABLE),
    "locked": ("locked", [EAS_GROUP], 0),
    "expired": ("expired", [EAS_GROUP], 0),
    "sensitive": ("sensitive", [EAS_GROUP], UF_NOT_DELEGATED),
    "erin": ("erin", [EAS_GROUP], 0),
    "frank": ("frank", [EAS_GROUP], 0),
    "grace": ("grace", [EAS_GROUP], 0),
    "heidi": ("heidi", [EAS_GROUP], 0),
    "ivan": ("ivan", [EAS_GROUP], 0),
}
LOCKOUT_THRESHOLD = 3


def upn(sam):
    return USERS[sam][0] + "@" + DNS_DOMAIN


def principal(sam):
    return sam + "@" + REALM


# ---------------------------------------------------------------------------
# altSecurityIdentities strings as Windows writes them (KB5014754)

def altsec_dn(name):
    """A certificate name in altSecurityIdentities form: the RDNs in their
    encoded order (most significant first), comma-separated, no spaces:
    'O=Example Lab,CN=EAS Device CA'."""
    short = {"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
             "2.5.4.7": "L", "2.5.4.8": "S", "0.9.2342.19200300.100.1.25": "DC",
             "1.2.840.113549.1.9.1": "E"}
    parts = []
    for rdn in name.rdns:
        for a in rdn:
            parts.append(short[a.oid.dotted_string] + "=" + a.value)
    return ",".join(parts)


def altsec_issuer_serial(cert):
    """X509:<I>issuer<SR>serial, the serial's bytes reversed, in hex."""
    n = cert.serial_number
    raw = n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")
    return "X509:<I>" + altsec_dn(cert.issuer) + "<SR>" + raw[::-1].hex()


def altsec_ski(cert):
    from cryptography import x509
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return "X509:<SKI>" + ski.value.digest.hex()


def altsec_sha1_pukey(cert):
    """X509:<SHA1-PUKEY> with the certificate's SHA-1 thumbprint, which is
    what Windows tools write there despite the name."""
    from cryptography.hazmat.primitives import serialization
    der = cert.public_bytes(serialization.Encoding.DER)
    return "X509:<SHA1-PUKEY>" + hashlib.sha1(der).hexdigest()


def altsec_issuer_subject(cert):
    return "X509:<I>" + altsec_dn(cert.issuer) + "<S>" + altsec_dn(cert.subject)


def altsec_subject(cert):
    return "X509:<S>" + altsec_dn(cert.subject)


# ---------------------------------------------------------------------------
# addresses

def _ports_free(ip):
    """All of AD's TCP ports (and UDP 88/464) can be bound on ip now."""
    socks = []
    try:
        for port in AD_PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
        for port in (88, 464):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(u)
            u.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def pick_address():
    """127.0.0.2 when free, else a random 127.x.y.z whose AD ports are free
    (another test run may hold 127.0.0.2)."""
    if _ports_free("127.0.0.2"):
        return "127.0.0.2"
    rnd = random.Random()
    for _ in range(50):
        ip = f"127.{rnd.randint(1, 254)}.{rnd.randint(0, 255)}.{rnd.randint(2, 254)}"
        if _ports_free(ip):
            return ip
    raise LabError("no loopback address with AD's ports free")


def _listening(ip, port):
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(ip.split("."))), port)
    with open("/proc/net/tcp") as f:
        for ln in f.readlines()[1:]:
            col = ln.split()
            if col[1] == want and col[3] == "0A":
                return True
    return False


# ---------------------------------------------------------------------------

class SambaLab:
    """The AD world.  Attributes are valid after start()."""

    realm = REALM
    base_dn = BASE_DN
    dns_domain = DNS_DOMAIN
    eas_group = EAS_GROUP
    nested_group = NESTED_GROUP
    proxy = PROXY
    proxy_spn = PROXY_SPN
    exchange_spn = EXCHANGE_SPN
    exchange_host = EXCHANGE_HOST
    lab_exchange_spn = LAB_EXCHANGE_SPN
    users = tuple(USERS)

    def __init__(self, tmpdir=None, keep=False):
        self._own_dir = tmpdir is None
        if tmpdir is None:
            tmpdir = tempfile.mkdtemp(prefix="ekp-samba-", dir="/tmp")
        self.dir = os.path.abspath(str(tmpdir))
        self.keep = keep
        self.ip = None
        self._samba = None
        self._samba_out = None
        self._certs = {}
        self._info = {}
        self.timings = {}
        self.exchange = None

    # -- paths and names ---------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def smb_conf(self):
        return self.path("dc", "etc", "smb.conf")

    @property
    def sam_ldb(self):
        return self.path("dc", "private", "sam.ldb")

    @property
    def krb5_conf(self):
        return self.path("krb5.conf")

    @property
    def keytab(self):
        """The proxy's keytab (easproxy@AD.EXAMPLE.TEST, AES)."""
        return self.path("keytabs", "easproxy.keytab")

    @property
    def exchange_keytab(self):
        return self.path("keytabs", "exchange.keytab")

    @property
    def ldap_uri(self):
        return f"ldap://{self.ip}"

    @property
    def ldaps_uri(self):
        return f"ldaps://{self.ip}"

    @property
    def server_ca(self):
        """CA of the DC's LDAPS certificate."""
        return self.path("pki", "server-ca.pem")

    @property
    def device_ca(self):
        return self._certs["device_ca"]

    def cert(self, name):
        """certs.Issued of a device certificate (see the module doc)."""
        return self._certs[name]

    def sid(self, sam):
        """objectSid of an account as S-1-5-21-..."""
        return self._info["sids"][sam]

    def user_dn(self, sam):
        return self._info["dns"][sam]

    def group_dn(self, name):
        return self._info["dns"]["group:" + name]

    @staticmethod
    def password(sam):
        return USER_PW

    @staticmethod
    def proxy_password():
        """easproxy's password (for bind = simple tests)."""
        return USER_PW + "-" + PROXY

    @property
    def env(self):
        """Environment for krb5 tools and GSSAPI clients in this domain."""
        e = dict(os.environ)
        for k in ("KRB5_TRACE", "KRB5_CLIENT_KTNAME", "KRB5_KTNAME",
                  "KRB5_KDC_PROFILE", "LDAPCONF", "LDAPRC"):
            e.pop(k, None)
        e.update({
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5CCNAME": "FILE:" + self.path("ccache"),
            "KRB5RCACHEDIR": self.path("rcache"),
            "LDAPNOINIT": "1",      # no /etc/ldap/ldap.conf, no ~/.ldaprc
        })
        return e

    def run(self, args, expected_code=0, input=None, env=None, timeout=60):
        p = subprocess.run(args, input=input, env=env or self.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, cwd=self.dir)
        if expected_code is not None and p.returncode != expected_code:
            raise LabError(f"{' '.join(args)}: exit {p.returncode}, expected "
                           f"{expected_code}:\n{p.stdout}")
        return p.stdout

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        """Provision, start and populate the domain (about 10 s)."""
        try:
            t0 = time.monotonic()
            os.makedirs(self.path("keytabs"), exist_ok=True)
            os.makedirs(self.path("rcache"), exist_ok=True)
            self.ip = pick_address()
            self._make_pki()
            self._provision()
            self.timings["provision"] = time.monotonic() - t0
            self._write_krb5_conf()
            self._populate()
            self.timings["populate"] = time.monotonic() - t0
            self.start_samba()
            self.timings["samba"] = time.monotonic() - t0
            self._lock_out("locked")
            self._make_sid_certs()
            self.timings["ready"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.exchange is not None:
            self.exchange._stop_daemons()
            self.exchange = None
        self.stop_samba()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start_exchange(self):
        """The MIT lab's Exchange stand-in (lab.Lab: Apache + mod_auth_gssapi,
        GssapiConnectionBound On, acceptor HTTP@exchange.example.test) keyed
        from this domain: Exchange's account carries that SPN. Started once;
        returns the lab.Lab, whose backend_port, backend_ca,
        backend_connection() and apache_access() work as in the MIT lab."""
        if self.exchange is not None:
            return self.exchange
        from lab import EXCHANGE, Lab
        os.chmod(self.dir, 0o711)          # www-data reaches the keytab
        ex = Lab(self.path("exchange"))
        ex._prepare_dir()
        shutil.copyfile(self.krb5_conf, ex.krb5_conf)
        kt = ex.keytab(EXCHANGE)
        shutil.copyfile(self.exchange_keytab, kt)
        os.chown(kt, 0, ex._www_gid())
        os.chmod(kt, 0o640)
        try:
            ex._start_apache()
        except BaseException:
            ex._stop_daemons()
            raise
        self.exchange = ex
        return ex

    @property
    def samba_pid(self):
        return self._samba.pid if self._samba and self._samba.poll() is None else None

    def is_running(self):
        return self.samba_pid is not None

    def start_samba(self, timeout=30.0):
        """Start samba (LDAP + KDC only, one process) unless it runs; wait
        until it answers on LDAP."""
        if self.is_running():
            return
        if self._samba_out is None:
            self._samba_out = open(self.path("samba.log"), "ab")
        self._samba = spawn(["samba", "-F", "--debug-stdout", "-M", "single",
                             "--no-process-group", "-s", self.smb_conf],
                            self._samba_out, env=self.env, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            if self._samba.poll() is not None:
                raise LabError(f"samba exited with status {self._samba.returncode}:\n"
                               + self.samba_log()[-3000:])
            if all(_listening(self.ip, p) for p in (389, 636, 88)):
                break
            if time.monotonic() > deadline:
                raise LabError(f"samba not listening on {self.ip} after {timeout}s:\n"
                               + self.samba_log()[-3000:])
            time.sleep(0.05)
        # the listeners come up before the database is opened: wait for an answer
        while self.run(["ldapsearch", "-x", "-LLL", "-H", self.ldap_uri, "-s", "base",
                        "-b", "", "defaultNamingContext"], expected_code=None,
                       timeout=10).find("defaultNamingContext") < 0:
            if time.monotonic() > deadline:
                raise LabError("samba does not answer LDAP:\n" + self.samba_log()[-3000:])
            time.sleep(0.05)

    def stop_samba(self):
        """Stop samba by its pid (the directory "goes away")."""
        stop_pid(self._samba, "samba")
        self._samba = None

    def samba_log(self):
        try:
            with open(self.path("samba.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- building ----------------------------------------------------------
    def _make_pki(self):
        pki = self.path("pki")
        sca = certs.server_ca(pki)
        certs.server_cert(pki, "dc", sca, [f"{DC_HOST}.{DNS_DOMAIN}"], ips=(self.ip,))
        dca = certs.device_ca(pki)
        self._certs["device_ca"] = dca
        self._certs["server_ca"] = sca
        for sam in ("alice", "bsmith", "carol", "dave", "disabled", "locked",
                    "expired", "sensitive", "frank"):
            self._certs[sam] = certs.device(pki, sam, dca, upns=[upn(sam)], cn=sam)
        for sam in ("erin", "grace", "heidi", "ivan", "mallory"):
            self._certs[sam] = certs.device(pki, sam, dca, cn=sam)
        self._certs["frank_rekeyed"] = certs.device(pki, "frank_rekeyed", dca,
                                                    upns=[upn("frank")], cn="frank")

    def _make_sid_certs(self):
        from cryptography import x509
        pki = self.path("pki")
        dca = self._certs["device_ca"]
        self._certs["alice_sid"] = certs.device(
            pki, "alice_sid", dca, upns=[upn("alice")], cn="alice",
            extra_extensions=[certs.sid_extension(self.sid("alice"))])
        self._certs["alice_badsid"] = certs.device(
            pki, "alice_badsid", dca, upns=[upn("alice")], cn="alice",
            extra_extensions=[certs.sid_extension(self.sid("dave"))])
        san = [certs.upn_name(upn("alice")),
               x509.UniformResourceIdentifier(SID_URL_PREFIX + self.sid("alice"))]
        self._certs["alice_sidurl"] = certs.leaf(pki, "alice_sidurl", dca, "alice", san=san)

    def _provision(self):
        empty = self.path("smb.conf.empty")
        open(empty, "w").close()
        out = self.run(["samba-tool", "domain", "provision",
                        "--targetdir=" + self.path("dc"), "--realm=" + REALM,
                        "--domain=" + NETBIOS, "--host-name=" + DC_HOST,
                        "--server-role=dc", "--dns-backend=NONE",
                        "--adminpass=" + ADMIN_PW, "-s", empty,
                        f"--option=interfaces = {self.ip}/8",
                        "--option=bind interfaces only = yes"], timeout=180)
        with open(self.path("provision.log"), "w") as f:
            f.write(out)
        pki = self.path("pki")
        extra = [
            # LDAP and the KDC only, in one process: quick to start and stop
            "server services = ldap, kdc",
            "tls enabled = yes",
            f"tls keyfile = {pki}/dc.key",
            f"tls certfile = {pki}/dc.pem",
            f"tls cafile = {pki}/server-ca.pem",
            # like AD: simple binds only over TLS, SASL either sealed or
            # inside TLS (Samba's default refuses GSSAPI over LDAPS)
            "ldap server require strong auth = allow_sasl_over_tls",
            # nothing under /run/samba: another lab may run at the same time
            f"pid directory = {self.path('dc', 'run')}",
            f"ncalrpc dir = {self.path('dc', 'ncalrpc')}",
            "log level = 1",
            "kdc:user ticket lifetime = 10",
        ]
        keys = {ln.split("=")[0].strip() for ln in extra}
        with open(self.smb_conf) as f:
            lines = [ln for ln in f if ln.split("=")[0].strip() not in keys]
        i = lines.index("[global]\n") + 1
        lines[i:i] = ["\t" + ln + "\n" for ln in extra]
        with open(self.smb_conf, "w") as f:
            f.write("".join(lines))
        os.makedirs(self.path("dc", "run"), exist_ok=True)

    def _write_krb5_conf(self):
        with open(self.krb5_conf, "w") as f:
            f.write(f"""[libdefaults]
	default_realm = {REALM}
	dns_lookup_kdc = false
	dns_lookup_realm = false
	dns_canonicalize_hostname = false
	rdns = false
	forwardable = true
	udp_preference_limit = 0

[realms]
	{REALM} = {{
		kdc = {self.ip}
		admin_server = {self.ip}
	}}

[domain_realm]
	.{DNS_DOMAIN} = {REALM}
	{DNS_DOMAIN} = {REALM}
	{self.ip} = {REALM}
""")

    def _populate(self):
        """Accounts, groups, SPNs, delegation and keytabs: one Python run
        with Samba's own bindings against sam.ldb (samba is not running
        yet), much quicker than one samba-tool process per step."""
        spec = {
            "smb_conf": self.smb_conf, "sam_ldb": self.sam_ldb, "ip": self.ip,
            "keytabs": {"easproxy": self.keytab, "exchange": self.exchange_keytab},
            "altsec": {
                "erin": [altsec_issuer_serial(self._certs["erin"].obj)],
                "frank": [altsec_ski(self._certs["frank"].obj)],
                "grace": [altsec_sha1_pukey(self._certs["grace"].obj)],
                "heidi": [altsec_issuer_subject(self._certs["heidi"].obj)],
                "ivan": [altsec_subject(self._certs["ivan"].obj)],
            },
        }
        spec_path = self.path("populate.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        self.run(["/usr/bin/python3", os.path.abspath(__file__), "populate", spec_path],
                 timeout=180)
        with open(self.path("populate.out.json")) as f:
            self._info = json.load(f)
        self.altsec = spec["altsec"]

    def _lock_out(self, sam):
        """Lock an account the way AD does: failed password logons past the
        threshold (here: failed AS requests to the KDC)."""
        env = dict(self.env, KRB5CCNAME="MEMORY:lockout")
        for _ in range(LOCKOUT_THRESHOLD + 1):
            self.run(["kinit", principal(sam)], expected_code=None,
                     input="wrong-password\n", env=env, timeout=20)
        out = self.run(["ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-Y", "GSSAPI",
                        "-N", "-H", self.ldap_uri, "-b", self.user_dn(sam), "-s", "base",
                        "lockoutTime"], env=self.admin_env(), expected_code=None)
        if "lockoutTime: 0" in out or "lockoutTime:" not in out:
            raise LabError(f"could not lock {sam} out:\n{out}")

    def admin_env(self):
        """Environment with an Administrator ticket (for ldapsearch -Y
        GSSAPI and friends)."""
        ccache = self.path("admin.ccache")
        env = dict(self.env, KRB5CCNAME="FILE:" + ccache)
        if not os.path.exists(ccache):
            self.run(["kinit", "Administrator@" + REALM], input=ADMIN_PW + "\n", env=env)
        return env

    def ldap_search(self, base, filt="(objectClass=*)", *attrs, scope="base"):
        return self.run(["ldapsearch", "-LLL", "-o", "ldif-wrap=no", "-Y", "GSSAPI",
                         "-N", "-Q", "-H", self.ldap_uri, "-b", base, "-s", scope,
                         filt] + list(attrs), env=self.admin_env())


# ---------------------------------------------------------------------------
# populate: runs in its own /usr/bin/python3 (Samba's bindings stay out of
# the test process)

def _populate(spec):
    import ldb
    from samba import dsdb, enable_net_export_keytab
    from samba.auth import system_session
    from samba.net import Net
    from samba.param import LoadParm
    from samba.samdb import SamDB

    lp = LoadParm()
    lp.load(spec["smb_conf"])
    db = SamDB(url=spec["sam_ldb"], session_info=system_session(), lp=lp)
    base = db.domain_dn()
    users_dn = "CN=Users," + base
    info = {"sids": {}, "dns": {}}

    def modify(dn, **attrs):
        m = ldb.Message()
        m.dn = ldb.Dn(db, dn)
        for k, (op, vals) in attrs.items():
            m[k] = ldb.MessageElement(vals, op, k)
        db.modify(m)

    # lockout policy: 3 bad passwords, 30 minutes
    modify(base, lockoutThreshold=(ldb.FLAG_MOD_REPLACE, [str(LOCKOUT_THRESHOLD)]),
           lockoutDuration=(ldb.FLAG_MOD_REPLACE, [str(-30 * 60 * 10**7)]),
           lockOutObservationWindow=(ldb.FLAG_MOD_REPLACE, [str(-30 * 60 * 10**7)]))

    for g in (EAS_GROUP, NESTED_GROUP):
        db.newgroup(g)
        info["dns"]["group:" + g] = f"CN={g},{users_dn}"
    db.add_remove_group_members(EAS_GROUP, [NESTED_GROUP], add_members_operation=True)

    for sam, (local, groups, uac) in USERS.items():
        db.newuser(sam, USER_PW, useusernameascn=True)
        dn = f"CN={sam},{users_dn}"
        info["dns"][sam] = dn
        modify(dn, userPrincipalName=(ldb.FLAG_MOD_REPLACE, [local + "@" + DNS_DOMAIN]))
        for g in groups:
            db.add_remove_group_members(g, [sam], add_members_operation=True)
        if uac:
            db.toggle_userAccountFlags(f"(sAMAccountName={sam})", uac,
                                       flags_str=hex(uac), on=True, strict=True)
        if sam in spec["altsec"]:
            modify(dn, altSecurityIdentities=(ldb.FLAG_MOD_REPLACE, spec["altsec"][sam]))
    # accountExpires: a day ago (FILETIME: 100 ns since 1601)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    ft = int((past - datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc))
             .total_seconds()) * 10**7
    modify(info["dns"]["expired"], accountExpires=(ldb.FLAG_MOD_REPLACE, [str(ft)]))

    # service accounts: AES only (before the keys are made), SPNs
    for sam, spns in ((PROXY, [PROXY_SPN]), (EXCHANGE, [EXCHANGE_SPN, LAB_EXCHANGE_SPN])):
        db.newuser(sam, USER_PW, useusernameascn=True)
        dn = f"CN={sam},{users_dn}"
        info["dns"][sam] = dn
        modify(dn, servicePrincipalName=(ldb.FLAG_MOD_ADD, spns),
               **{"msDS-SupportedEncryptionTypes": (ldb.FLAG_MOD_REPLACE, [str(ENCTYPES_AES)])})
        db.setpassword(f"(sAMAccountName={sam})", USER_PW + "-" + sam,
                       force_change_at_next_login=False)
        db.toggle_userAccountFlags(f"(sAMAccountName={sam})", UF_DONT_EXPIRE_PASSWD,
                                   flags_str="DONT_EXPIRE_PASSWD", on=True, strict=True)
    # protocol transition + constrained delegation to Exchange
    # (samba-tool delegation for-any-protocol / add-service)
    db.toggle_userAccountFlags(f"(sAMAccountName={PROXY})",
                               UF_TRUSTED_TO_AUTH_FOR_DELEGATION,
                               flags_str="TRUSTED_TO_AUTH_FOR_DELEGATION", on=True,
                               strict=True)
    modify(info["dns"][PROXY], **{"msDS-AllowedToDelegateTo": (
        ldb.FLAG_MOD_ADD, [EXCHANGE_SPN, LAB_EXCHANGE_SPN])})
    # GSSAPI binds to ldap://IP ask for ldap/IP
    res = db.search(base="OU=Domain Controllers," + base, scope=ldb.SCOPE_ONELEVEL,
                    expression="(objectClass=computer)", attrs=["dn"])
    modify(str(res[0].dn), servicePrincipalName=(ldb.FLAG_MOD_ADD,
                                                 ["ldap/" + spec["ip"]]))

    for sam in list(USERS) + [PROXY, EXCHANGE]:
        res = db.search(base=base, scope=ldb.SCOPE_SUBTREE,
                        expression=f"(sAMAccountName={sam})", attrs=["objectSid"])
        sid = db.schema_format_value("objectSid", res[0]["objectSid"][0])
        info["sids"][sam] = sid.decode() if isinstance(sid, bytes) else str(sid)

    enable_net_export_keytab()
    net = Net(None, lp)
    net.export_keytab(keytab=spec["keytabs"]["easproxy"], principal=PROXY + "@" + REALM)
    for spn in (EXCHANGE_SPN, LAB_EXCHANGE_SPN):
        net.export_keytab(keytab=spec["keytabs"]["exchange"], principal=spn + "@" + REALM)
    _ = dsdb
    out = os.path.join(os.path.dirname(spec["smb_conf"]), "..", "..", "populate.out.json")
    with open(os.path.normpath(out), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "populate":
        with open(sys.argv[2]) as f:
            _populate(json.load(f))
        sys.exit(0)
    dc = SambaLab(keep=True)
    dc.start()
    print(f"Samba AD up on {dc.ip} in {dc.dir} ({dc.timings}); Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        dc.stop()
