"""A throwaway Kerberos + Exchange world on 127.0.0.1, for integration tests
and `make demo`.

In the manner of MIT krb5's k5test.py (K5Realm) and mod_auth_gssapi's
tests/magtests.py, `Lab` builds, in one temp directory:

* a private slapd holding an MIT krb5 LDAP KDB (the DB2 KDB cannot do
  S4U2Proxy: it has no check_allowed_to_delegate), realm EXAMPLE.TEST;
* krb5kdc in the foreground against it, logging to kdc.log;
* the principals below, with keytabs for the proxies and for Exchange;
* an "Exchange" stand-in: Debian apache2 + mod_auth_gssapi
  (GssapiConnectionBound On, like IIS's per-connection Kerberos persistence)
  on HTTPS (and plain HTTP) with handlers that echo what they saw.

Nothing listens anywhere but 127.0.0.1, nothing outside the temp dir is
written, and every daemon is stopped by its pid in stop().

    lab = Lab()            # or Lab(dir): dir must be traversable by www-data
    lab.start()
    ...  lab.env, lab.kdc_port, lab.backend_port, lab.backend_ca ...
    lab.stop()

Principals (realm EXAMPLE.TEST; passwords: Lab.password(name)):

  HTTP/proxy.example.test           +ok_to_auth_as_delegate, may delegate to
                                    HTTP/exchange.example.test   (PROXY)
  HTTP/proxy-nofwd.example.test     may delegate to Exchange but has NO
                                    ok_to_auth_as_delegate: its S4U2Self
                                    tickets are not forwardable (PROXY_NOFWD)
  HTTP/proxy-otherspn.example.test  +ok_to_auth_as_delegate, may delegate to
                                    HTTP/other.example.test only (PROXY_OTHERSPN)
  HTTP/proxy-none.example.test      +ok_to_auth_as_delegate, no delegation
                                    targets at all (PROXY_NONE)
  HTTP/exchange.example.test        the backend (EXCHANGE)
  HTTP/other.example.test           a service no proxy may reach but
                                    PROXY_OTHERSPN (OTHER)
  alice bob carol                   +requires_preauth, usable
  (KDC error through S4U2Self via GSSAPI, krb5 code and KDC log status:)
  disabled      -allow_tix          KDC_ERR_CLIENT_REVOKED  CLIENT LOCKED OUT
  expired       expiry in the past  KDC_ERR_NAME_EXP        CLIENT EXPIRED
  locked        policy "lockout" (maxfailure 3), locked by failed kinits
                                    KDC_ERR_CLIENT_REVOKED  LOCKED_OUT
  nosuchuser    never created       KDC_ERR_C_PRINCIPAL_UNKNOWN
                                                  UNKNOWN_S4U2SELF_PRINCIPAL
  sensitive     -allow_forwardable ("cannot be delegated"): S4U2Self works,
                its ticket is not forwardable, S4U2Proxy gets
                                    KDC_ERR_BADOPTION  EVIDENCE_TKT_NOT_FORWARDABLE
  (a proxy without the right: KDC_ERR_BADOPTION, UNSUPPORTED_S4U2PROXY_REQUEST)

Keytabs: lab.keytab(principal) -> path (proxies: mode 0600, root;
Exchange: 0640 root:www-data).

Exchange stand-in (https://exchange.example.test:backend_port, CA
backend_ca; plain HTTP on backend_http_port), under
/Microsoft-Server-ActiveSync and /autodiscover, Negotiate required:
  any path        JSON echo: remote_user, method, uri, query, remote_port,
                  headers, body_length, body_sha256 (chunked bodies too)
  OPTIONS         EAS headers (MS-ASProtocolVersions, -Commands,
                  MS-Server-ActiveSync) + X-Lab-Remote-User   (mod_lua)
  .../download?size=N[&chunked=1]  N bytes, byte i = i % 256   (mod_lua)
  .../moved[?loc=URL]   451 + X-MS-Location (default: https://<Host>/EAS)
  .../sleep?seconds=N   answers after N s (a parked Ping)
  .../status?code=N     status N (401 comes with WWW-Authenticate: Negotiate)
Apache's access log: apache_access() (remote_port, keepalive, user,
auth_scheme, ...); apache_log_text() for everything.  Lab(require_cb=...)
adds cb_backend.py (channel bindings checked) on cb_backend_port.

Other helpers: env / environ(), run(), kadmin_local(), ldap_modify(),
set_allowed_to_delegate(), stop_kdc() / start_kdc() / kdc_down(),
lock_user() / unlock_user(), rotate_exchange_key(), kdc_requests() /
count_kdc_requests(kind, user), impersonate() / init_context() /
negotiate_header() (the proxy's GSSAPI route in Python),
backend_connection(), channel_bindings(), pids, check_alive().
"""

import base64
import contextlib
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import certs  # noqa: E402  (tests/certs.py)

REALM = "EXAMPLE.TEST"
BASE_DN = "dc=example,dc=test"
CONTAINER_DN = "cn=krbContainer," + BASE_DN
LDAP_ADMIN_DN = "cn=admin," + BASE_DN
LDAP_ADMIN_PW = "lab-ldap-admin"
MASTER_PW = "lab-master-key"

BACKEND_HOST = "exchange.example.test"
PROXY = "HTTP/proxy.example.test"
PROXY_NOFWD = "HTTP/proxy-nofwd.example.test"
PROXY_OTHERSPN = "HTTP/proxy-otherspn.example.test"
PROXY_NONE = "HTTP/proxy-none.example.test"
EXCHANGE = "HTTP/exchange.example.test"
OTHER = "HTTP/other.example.test"
PROXIES = (PROXY, PROXY_NOFWD, PROXY_OTHERSPN, PROXY_NONE)

USERS = ("alice", "bob", "carol")
DISABLED = "disabled"
EXPIRED = "expired"
LOCKED = "locked"
SENSITIVE = "sensitive"
UNKNOWN = "nosuchuser"
LOCKOUT_MAXFAILURE = 3

# What each proxy principal may delegate to (krbAllowedToDelegateTo, with
# the realm: the LDAP KDB compares whole principal names).
DELEGATION = {
    PROXY: [EXCHANGE],
    PROXY_NOFWD: [EXCHANGE],
    PROXY_OTHERSPN: [OTHER],
}

WWW_DATA = "www-data"
APACHE_MODULES = "/usr/lib/apache2/modules"
KERBEROS_SCHEMA_GZ = "/usr/share/doc/krb5-kdc-ldap/kerberos.schema.gz"
LDAP_SCHEMA_DIR = "/etc/ldap/schema"
SLAPD_MODULE_DIR = "/usr/lib/ldap"
PYTHON = "/usr/bin/python3"

EAS_VERSIONS = "2.0,2.1,2.5,12.0,12.1,14.0,14.1,16.0,16.1"
EAS_COMMANDS = ("Sync,SendMail,SmartForward,SmartReply,GetAttachment,"
                "GetHierarchy,CreateCollection,DeleteCollection,"
                "MoveCollection,FolderSync,FolderCreate,FolderDelete,"
                "FolderUpdate,MoveItems,GetItemEstimate,MeetingResponse,"
                "Search,Settings,Ping,ItemOperations,Provision,"
                "ResolveRecipients,ValidateCert,Find")
EAS_SERVER = "15.1"


class LabError(Exception):
    """A lab step failed; the message names the step and shows its output."""


class PortTaken(LabError):
    """Another process bound a port between our pick and the daemon's."""


def principal(name):
    """`name` with the lab realm appended unless it already has one."""
    return name if "@" in name else name + "@" + REALM


def free_port(udp_too=False):
    """A port free on 127.0.0.1 right now (TCP, and UDP when asked)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        u = None
        try:
            if udp_too:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
            if u is not None:
                u.close()
    raise LabError("no free port on 127.0.0.1")


def _listen_inodes(port):
    """Inodes of TCP sockets listening on 127.0.0.1:port."""
    want = "0100007F:%04X" % port
    out = set()
    with open("/proc/net/tcp") as f:
        for ln in f.readlines()[1:]:
            col = ln.split()
            if col[1] == want and col[3] == "0A":
                out.add(col[9])
    return out


def _owns_socket(pid, inodes):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def wait_port(port, proc, what, timeout=10.0):
    """Wait until *proc itself* listens on 127.0.0.1:port (another process
    that grabbed the port meanwhile does not count); fail early if proc
    died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            if _listen_inodes(port):
                raise PortTaken(f"{what}: 127.0.0.1:{port} was taken by "
                                "another process")
            raise LabError(f"{what} exited with status {proc.returncode} "
                           "before listening")
        inodes = _listen_inodes(port)
        if inodes and _owns_socket(proc.pid, inodes):
            return
        if time.monotonic() > deadline:
            raise LabError(f"{what} (pid {proc.pid}) not listening on "
                           f"127.0.0.1:{port} after {timeout}s")
        time.sleep(0.02)


def _die_with_parent():
    """preexec_fn: the daemon gets SIGTERM if the test process dies without
    running its finalizers (a safety net; stop() is the normal way)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args, out, env=None, cwd=None):
    """Start a lab daemon in the foreground, output to file object out."""
    return subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)


def stop_pid(proc, what, timeout=10.0):
    """SIGTERM the process we started, SIGKILL it if it lingers, reap it."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# ---------------------------------------------------------------------------
# certificates: tests/certs.py (server CA + exchange.example.test leaf)

def tls_server_end_point(cert_pem_path):
    """RFC 5929 tls-server-end-point channel-binding application data: the
    certificate's hash with its signature's hash algorithm, SHA-256 when
    that is MD5 or SHA-1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    with open(cert_pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(cert.public_bytes(serialization.Encoding.DER))
    return b"tls-server-end-point:" + h.finalize()


# ---------------------------------------------------------------------------
# the Exchange stand-in's handlers (written into the lab dir)

CGI_SCRIPT = r'''#!/usr/bin/python3 -IS
# Lab "Exchange" handler (CGI).  Routes on PATH_INFO:
#   (anything else)   JSON echo of what Apache saw, body hashed
#   (/download is served by the Lua handler)
#   /moved            451 with X-MS-Location (query loc= overrides)
#   /sleep?seconds=N  wait N seconds (a parked Ping), then the JSON echo
#   /status?code=N    answer with status N and the JSON echo (401: with
#                     WWW-Authenticate: Negotiate, like a refused ticket)
import hashlib, json, os, sys, time, urllib.parse

env = os.environ
q = urllib.parse.parse_qs(env.get("QUERY_STRING", ""), keep_blank_values=True)
route = env.get("PATH_INFO", "")
out = sys.stdout.buffer


def arg(name, default=None):
    v = q.get(name)
    return v[0] if v else default


def body_digest():
    h = hashlib.sha256()
    n = 0
    inp = sys.stdin.buffer
    while True:
        b = inp.read(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
    return n, h.hexdigest()


def echo(status="200 OK", extra=()):
    n, digest = body_digest()
    if route == "/sleep":
        time.sleep(float(arg("seconds", "1")))
    doc = {
        "remote_user": env.get("REMOTE_USER"),
        "auth_type": env.get("AUTH_TYPE"),
        "method": env.get("REQUEST_METHOD"),
        "uri": env.get("REQUEST_URI"),
        "path_info": route,
        "query": env.get("QUERY_STRING", ""),
        "remote_addr": env.get("REMOTE_ADDR"),
        "remote_port": env.get("REMOTE_PORT"),
        "https": env.get("HTTPS") == "on",
        "server_port": env.get("SERVER_PORT"),
        "content_length": env.get("CONTENT_LENGTH"),
        "headers": {k[5:].replace("_", "-").lower(): v
                    for k, v in env.items() if k.startswith("HTTP_")},
        "body_length": n,
        "body_sha256": digest,
        "pid": os.getpid(),
    }
    data = (json.dumps(doc, sort_keys=True) + "\n").encode()
    # (Apache drops a CGI's Content-Length: it frames the answer itself)
    head = [f"Status: {status}", "Content-Type: application/json"] + \
        list(extra)
    out.write(("\r\n".join(head) + "\r\n\r\n").encode())
    out.write(data)


if route == "/moved":
    host = env.get("HTTP_HOST", "exchange.example.test")
    loc = arg("loc", f"https://{host}/Microsoft-Server-ActiveSync")
    echo("451 Mailbox Moved", [f"X-MS-Location: {loc}"])
elif route == "/status":
    code = int(arg("code", "200"))
    # a 401 looks like Exchange refusing the ticket
    echo(f"{code} Lab Status",
         ["WWW-Authenticate: Negotiate"] if code == 401 else [])
else:
    echo()
'''

LUA_HANDLER = r'''-- Lab "Exchange": OPTIONS (CGI cannot answer it) and /download (a CGI's
-- Content-Length does not survive Apache 2.4.71's CGI handling: the answer
-- would always be chunked).  Everything else is declined to the CGI.
local BLOCK = nil

local function download(r)
  local args = r:parseargs()
  local size = tonumber(args["size"] or "0") or 0
  if BLOCK == nil then
    local t = {}
    for i = 0, 255 do t[#t + 1] = string.char(i) end
    BLOCK = string.rep(table.concat(t), 256)   -- 64 KiB, byte i = i % 256
  end
  r.content_type = "application/octet-stream"
  if args["chunked"] ~= "1" then
    r.headers_out["Content-Length"] = tostring(size)
  end
  if r.method == "HEAD" then return apache2.OK end
  local left = size
  while left > 0 do
    local n = math.min(left, #BLOCK)
    if n == #BLOCK then r:write(BLOCK) else r:write(BLOCK:sub(1, n)) end
    left = left - n
    if r:flush() == false then break end
  end
  return apache2.OK
end

function handle(r)
  if r.method == "OPTIONS" then
    r.headers_out["MS-ASProtocolVersions"] = "@VERSIONS@"
    r.headers_out["MS-ASProtocolCommands"] = "@COMMANDS@"
    r.headers_out["MS-Server-ActiveSync"] = "@SERVER@"
    r.headers_out["Allow"] = "OPTIONS,POST"
    r.headers_out["X-Lab-Remote-User"] = r.user or ""
    r.headers_out["Content-Length"] = "0"
    r.content_type = "text/plain"
    return apache2.OK
  end
  if r.path_info == "/download" and (r.method == "GET" or r.method == "HEAD") then
    return download(r)
  end
  return apache2.DECLINED
end
'''


# ---------------------------------------------------------------------------

class Lab:
    """The lab world.  Attributes are valid after start()."""

    realm = REALM
    PROXY = PROXY
    PROXY_NOFWD = PROXY_NOFWD
    PROXY_OTHERSPN = PROXY_OTHERSPN
    PROXY_NONE = PROXY_NONE
    EXCHANGE = EXCHANGE
    OTHER = OTHER
    USERS = USERS
    DISABLED = DISABLED
    EXPIRED = EXPIRED
    LOCKED = LOCKED
    SENSITIVE = SENSITIVE
    UNKNOWN = UNKNOWN
    BACKEND_HOST = BACKEND_HOST

    def __init__(self, tmpdir=None, *, keepalive_timeout=30,
                 apache_timeout=3700, require_cb=None,
                 backend_key_type="ec", keep=False):
        """tmpdir: an empty (or absent) directory whose ancestors www-data can
        traverse; default a fresh /tmp/ekp-lab-XXXX, removed by stop()
        unless keep=True.  keepalive_timeout: Apache's KeepAliveTimeout (s);
        apache_timeout: Apache's Timeout (s), above the longest parked Ping.

        require_cb: mod_auth_gssapi 1.6.4 cannot check channel bindings (no
        directive; it passes none to the acceptor), so with require_cb=True
        or False the lab also starts cb_backend.py on cb_backend_port, an
        Exchange stand-in with Extended Protection: wrong bindings are
        always refused (401); missing ones too when require_cb=True, else
        accepted and reported.  None (default): not started.
        backend_key_type: "ec" (P-256, ecdsa-with-SHA256) or "rsa" for
        Exchange's certificate (tests/certs.py).
        """
        self._own_dir = tmpdir is None
        if tmpdir is None:
            tmpdir = tempfile.mkdtemp(prefix="ekp-lab-", dir="/tmp")
        self.dir = os.path.abspath(str(tmpdir))
        self.keep = keep
        self.keepalive_timeout = keepalive_timeout
        self.apache_timeout = apache_timeout
        self.require_cb = require_cb
        self.backend_key_type = backend_key_type
        self._slapd = self._kdc = self._apache = self._cb = None
        self.cb_backend_port = None
        self._unlocked = {}
        self._prepared = False
        self._started = False
        self.ldap_port = self.kdc_port = None
        self.backend_port = self.backend_http_port = None
        self.timings = {}

    # -- paths ----------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def krb5_conf(self):
        return self.path("krb5.conf")

    @property
    def kdc_conf(self):
        return self.path("kdc.conf")

    @property
    def kdc_log(self):
        return self.path("kdc.log")

    @property
    def backend_ca(self):
        """The CA that issued Exchange's certificate ([backend] ca)."""
        return self.path("pki", "server-ca.pem")

    @property
    def backend_cert(self):
        return self.path("pki", "exchange-server.pem")

    @property
    def backend_key(self):
        return self.path("pki", "exchange-server.key")

    @property
    def ldap_uri(self):
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def backend_url(self):
        return f"https://{BACKEND_HOST}:{self.backend_port}"

    def keytab(self, name):
        """Path of the keytab holding principal `name` (proxies, Exchange)."""
        host = name.split("/", 1)[1].split("@")[0].split(".")[0]
        return self.path("keytabs", host + ".keytab")

    @staticmethod
    def password(user):
        return "pw-" + user + "-Lab1"

    @property
    def env(self):
        """Environment for krb5 tools and GSSAPI clients in this lab."""
        e = dict(os.environ)
        for k in ("KRB5_TRACE", "KRB5_CLIENT_KTNAME", "KRB5CCNAME"):
            e.pop(k, None)
        e.update({
            "KRB5_CONFIG": self.krb5_conf,
            "KRB5_KDC_PROFILE": self.kdc_conf,
            "KRB5CCNAME": "FILE:" + self.path("ccache"),
            "KRB5_KTNAME": "FILE:" + self.keytab(EXCHANGE),
            "KRB5RCACHEDIR": self.path("rcache"),
        })
        return e

    def channel_bindings(self):
        """tls-server-end-point application data of the backend cert."""
        return tls_server_end_point(self.backend_cert)

    # -- running commands -------------------------------------------------
    def run(self, args, expected_code=0, input=None, env=None,
            timeout=30):
        """Run a command in the lab environment; return its stdout+stderr.
        expected_code None accepts any status (see run_status)."""
        p = subprocess.run(args, input=input, env=env or self.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, cwd=self.dir)
        if expected_code is not None and p.returncode != expected_code:
            raise LabError(f"{' '.join(args)}: exit {p.returncode}, expected "
                           f"{expected_code}:\n{p.stdout}")
        return p.stdout

    def run_status(self, args, input=None, env=None, timeout=30):
        """Run a command; return (exit status, stdout+stderr)."""
        p = subprocess.run(args, input=input, env=env or self.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, cwd=self.dir)
        return p.returncode, p.stdout

    def kadmin_local(self, cmd, check=True):
        """One kadmin.local query (a string, as for -q); returns its output.
        kadmin.local exits 0 even when the query failed and reports the
        failure on stderr ("modify_principal: ... while ..."), so with check
        any stderr line but the no-policy notice raises LabError."""
        return self._kadmin(["-q", cmd], None, check)

    def _kadmin_batch(self, cmds):
        """Several kadmin.local queries in one process (on stdin)."""
        return self._kadmin([], "\n".join(cmds) + "\nquit\n", True)

    def _kadmin(self, args, input, check):
        p = subprocess.run(["kadmin.local", "-r", REALM] + args, input=input,
                           env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60,
                           cwd=self.dir)
        bad = [ln for ln in p.stderr.splitlines()
               if ln.strip() and not re.search(r"[Nn]o policy specified", ln)]
        if check and (p.returncode != 0 or bad):
            raise LabError(f"kadmin.local {args or input!r}: exit "
                           f"{p.returncode}:\n{p.stderr}{p.stdout}")
        return p.stdout + p.stderr

    def ldap_modify(self, ldif, add=False):
        """ldapmodify against the lab slapd as its root DN."""
        args = ["ldapmodify", "-x", "-H", self.ldap_uri, "-D", LDAP_ADMIN_DN,
                "-w", LDAP_ADMIN_PW]
        if add:
            args.append("-a")
        return self.run(args, input=ldif)

    def ldap_search(self, filt, *attrs):
        return self.run(["ldapsearch", "-LLL", "-x", "-o", "ldif-wrap=no",
                         "-H", self.ldap_uri, "-D", LDAP_ADMIN_DN,
                         "-w", LDAP_ADMIN_PW, "-b", BASE_DN, filt] +
                        list(attrs))

    def principal_dn(self, name):
        return f"krbPrincipalName={principal(name)},cn={REALM},{CONTAINER_DN}"

    def set_allowed_to_delegate(self, proxy, targets):
        """Replace proxy's krbAllowedToDelegateTo list (full names)."""
        ldif = (f"dn: {self.principal_dn(proxy)}\nchangetype: modify\n"
                "replace: krbAllowedToDelegateTo\n")
        for t in targets:
            ldif += f"krbAllowedToDelegateTo: {principal(t)}\n"
        self.ldap_modify(ldif)

    # -- clients (for tests that talk to the KDC or Exchange directly) ------
    @contextlib.contextmanager
    def environ(self):
        """Point this process's krb5 library at the lab for the duration
        (python-gssapi reads KRB5_CONFIG & co. from the environment at
        each call); the previous values are restored afterwards."""
        keys = ("KRB5_CONFIG", "KRB5_KDC_PROFILE", "KRB5CCNAME",
                "KRB5_KTNAME", "KRB5RCACHEDIR", "KRB5_CLIENT_KTNAME",
                "KRB5_TRACE")
        saved = {k: os.environ.get(k) for k in keys}
        e = self.env
        try:
            for k in keys:
                if k in e:
                    os.environ[k] = e[k]
                else:
                    os.environ.pop(k, None)
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def impersonate(self, user, proxy=PROXY):
        """The proxy's route, in Python: acquire `proxy`'s credential from
        its keytab (client_keytab cred store + a private MEMORY ccache, no
        default ccache involved), then S4U2Self to `user`, for the krb5
        mech only.  Returns gssapi.Credentials.  Call inside environ()."""
        import gssapi
        krb5 = gssapi.MechType.kerberos
        store = {"client_keytab": self.keytab(proxy),
                 # one per lab and proxy: another Lab in this process has
                 # other keys, so its TGT must not be found here
                 "ccache": "MEMORY:" + os.path.basename(self.dir) + "-" +
                           proxy.replace("/", "-")}
        me = gssapi.Name(principal(proxy), gssapi.NameType.kerberos_principal)
        cred = gssapi.Credentials(name=me, usage="initiate", mechs=[krb5],
                                  store=store)
        who = gssapi.Name(principal(user), gssapi.NameType.kerberos_principal)
        return cred.impersonate(who, usage="initiate", mechs=[krb5])

    def init_context(self, creds, target=None, channel_bindings=None):
        """A krb5 initiator context (mutual auth) to target ('HTTP@host');
        returns (context, first token).  S4U2Proxy happens here when creds
        are impersonated."""
        import gssapi
        krb5 = gssapi.MechType.kerberos
        tname = gssapi.Name(target or "HTTP@" + BACKEND_HOST,
                            gssapi.NameType.hostbased_service)
        cb = None
        if channel_bindings is not None:
            cb = gssapi.raw.ChannelBindings(application_data=channel_bindings)
        ctx = gssapi.SecurityContext(
            name=tname, creds=creds, mech=krb5, usage="initiate",
            flags=gssapi.RequirementFlag.mutual_authentication |
            gssapi.RequirementFlag.out_of_sequence_detection,
            channel_bindings=cb)
        return ctx, ctx.step()

    def negotiate_header(self, user, proxy=PROXY, target=None,
                         channel_bindings=None):
        """'Negotiate <base64>' for `user` via `proxy` (S4U2Self+Proxy);
        returns (header value, context).  Call inside environ()."""
        ctx, tok = self.init_context(self.impersonate(user, proxy), target,
                                     channel_bindings)
        return "Negotiate " + base64.b64encode(tok).decode(), ctx

    def backend_connection(self, tls=True, timeout=30, port=None):
        """An http.client connection to the Exchange stand-in: TCP to
        127.0.0.1, TLS verified against backend_ca for exchange.example.test,
        Host: exchange.example.test.  port: another lab port (for example
        cb_backend_port) instead of Apache's."""
        if port is None:
            port = self.backend_port if tls else self.backend_http_port
        if not tls:
            conn = http.client.HTTPConnection(BACKEND_HOST, port,
                                              timeout=timeout)
        else:
            ctx = ssl.create_default_context(cafile=self.backend_ca)
            conn = http.client.HTTPSConnection(BACKEND_HOST, port,
                                               timeout=timeout, context=ctx)

        def connect():
            sock = socket.create_connection(("127.0.0.1", port), timeout)
            if tls:
                sock = conn._context.wrap_socket(sock,
                                                 server_hostname=BACKEND_HOST)
            conn.sock = sock
        conn.connect = connect
        return conn

    # -- lifecycle --------------------------------------------------------
    def start(self):
        """Build and start everything (about a second).  A port another
        process took between our pick and the daemon's bind is retried
        with new ports; any other failure stops what started and raises."""
        for attempt in range(3):
            try:
                self._start_once()
                return self
            except BaseException as e:
                conflict = isinstance(e, PortTaken) or self._bind_conflict()
                self._stop_daemons()
                if attempt == 2 or not conflict:
                    self.stop()
                    raise
                self._wipe_dir()
        return self

    def _bind_conflict(self):
        if not self._prepared:
            return False        # not our files: never wipe them
        for name in ("ldap/slapd.out", "krb5kdc.out", "kdc.log",
                     "apache/error.log", "apache/stderr.log",
                     "cb_backend.out"):
            try:
                with open(self.path(name), errors="replace") as f:
                    if "Address already in use" in f.read():
                        return True
            except FileNotFoundError:
                pass
        return False

    def _wipe_dir(self):
        for name in os.listdir(self.dir):
            p = self.path(name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)

    def _start_once(self):
        t0 = time.monotonic()
        self._prepare_dir()
        self._start_slapd()
        self.timings["slapd"] = time.monotonic() - t0
        self._write_krb5_conf()
        self._create_realm()
        self.timings["realm"] = time.monotonic() - t0
        self.start_kdc()
        self._create_principals()
        self.timings["principals"] = time.monotonic() - t0
        self._start_apache()
        self.timings["apache"] = time.monotonic() - t0
        if self.require_cb is not None:
            self._start_cb_backend()
            self.timings["cb_backend"] = time.monotonic() - t0
        self.check_alive()
        self._started = True

    def _stop_daemons(self):
        stop_pid(self._cb, "cb_backend")
        stop_pid(self._apache, "apache2")
        stop_pid(self._kdc, "krb5kdc")
        stop_pid(self._slapd, "slapd")
        for attr in ("_kdc_out", "_cb_out", "_slapd_out", "_apache_out"):
            f = getattr(self, attr, None)
            if f is not None:
                f.close()
                setattr(self, attr, None)

    def stop(self):
        """Stop every daemon by pid; remove the dir if we made it."""
        self._stop_daemons()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _prepare_dir(self):
        os.makedirs(self.dir, exist_ok=True)
        if os.listdir(self.dir):
            raise LabError(f"lab dir {self.dir} is not empty")
        self._prepared = True
        # www-data (Apache's workers) must reach the keytab and the CGI.
        os.chmod(self.dir, 0o711)
        d = self.dir
        while d != "/":
            d = os.path.dirname(d)
            if not os.stat(d).st_mode & stat.S_IXOTH:
                raise LabError(f"{d} is not traversable by {WWW_DATA}; "
                               "give Lab a directory under /tmp")
        for sub in ("ldap", "ldap/db", "krb5kdc", "keytabs", "rcache",
                    "pki", "apache", "apache/run", "apache/www",
                    "apache/cgi"):
            os.mkdir(self.path(sub), 0o711 if not sub.startswith("ldap")
                     else 0o700)

    # -- slapd ------------------------------------------------------------
    def _start_slapd(self):
        schema = self.path("ldap", "kerberos.schema")
        with gzip.open(KERBEROS_SCHEMA_GZ, "rb") as src, \
                open(schema, "wb") as dst:
            shutil.copyfileobj(src, dst)
        self.ldap_port = free_port()
        conf = self.path("ldap", "slapd.conf")
        with open(conf, "w") as f:
            f.write(f"""# lab slapd: private, foreground, 127.0.0.1 only
include {LDAP_SCHEMA_DIR}/core.schema
include {LDAP_SCHEMA_DIR}/cosine.schema
include {schema}
pidfile {self.path("ldap", "slapd.pid")}
argsfile {self.path("ldap", "slapd.args")}
modulepath {SLAPD_MODULE_DIR}
moduleload back_mdb
loglevel none

database mdb
maxsize 67108864
suffix "{BASE_DN}"
rootdn "{LDAP_ADMIN_DN}"
rootpw {LDAP_ADMIN_PW}
directory {self.path("ldap", "db")}
index objectClass eq
index krbPrincipalName eq,sub
""")
        self._slapd_out = open(self.path("ldap", "slapd.out"), "w")
        self._slapd = spawn(
            ["slapd", "-d", "0", "-f", conf,
             "-h", f"ldap://127.0.0.1:{self.ldap_port}/"],
            self._slapd_out, cwd=self.dir)
        wait_port(self.ldap_port, self._slapd, "slapd")
        self.ldap_modify(f"dn: {BASE_DN}\nobjectClass: dcObject\n"
                         "objectClass: organization\ndc: example\n"
                         "o: Example lab\n", add=True)

    # -- Kerberos ---------------------------------------------------------
    def _write_krb5_conf(self):
        self.kdc_port = free_port(udp_too=True)
        dbmod = f"""  LDAP = {{
    db_library = kldap
    ldap_kerberos_container_dn = {CONTAINER_DN}
    ldap_kdc_dn = {LDAP_ADMIN_DN}
    ldap_kadmind_dn = {LDAP_ADMIN_DN}
    ldap_service_password_file = {self.path("krb5kdc", "ldap.stash")}
    ldap_servers = {self.ldap_uri}
    ldap_conns_per_server = 2
  }}
"""
        with open(self.krb5_conf, "w") as f:
            f.write(f"""[libdefaults]
  default_realm = {REALM}
  dns_lookup_kdc = false
  dns_lookup_realm = false
  dns_canonicalize_hostname = false
  rdns = false
  forwardable = true
  ticket_lifetime = 10h
  default_ccache_name = FILE:{self.path("ccache")}
  default_keytab_name = FILE:{self.keytab(EXCHANGE)}
  kdc_timesync = 0

[realms]
  {REALM} = {{
    kdc = 127.0.0.1:{self.kdc_port}
    database_module = LDAP
  }}

[domain_realm]
  .example.test = {REALM}
  example.test = {REALM}

[dbmodules]
{dbmod}""")
        with open(self.kdc_conf, "w") as f:
            f.write(f"""[kdcdefaults]
  kdc_listen = 127.0.0.1:{self.kdc_port}
  kdc_tcp_listen = 127.0.0.1:{self.kdc_port}

[realms]
  {REALM} = {{
    database_module = LDAP
    key_stash_file = {self.path("krb5kdc", "stash")}
    max_life = 10h
    max_renewable_life = 7d
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
  }}

[dbmodules]
{dbmod}
[plugins]
  kdcpreauth = {{
    disable = spake
  }}

[logging]
  kdc = FILE:{self.kdc_log}
  admin_server = FILE:{self.path("kadmin.log")}
  default = FILE:{self.path("krb5lib.log")}
""")

    def _create_realm(self):
        self.run(["kdb5_ldap_util", "-D", LDAP_ADMIN_DN, "-w", LDAP_ADMIN_PW,
                  "-H", self.ldap_uri, "stashsrvpw", "-f",
                  self.path("krb5kdc", "ldap.stash"), LDAP_ADMIN_DN],
                 input=f"{LDAP_ADMIN_PW}\n{LDAP_ADMIN_PW}\n")
        self.run(["kdb5_ldap_util", "-D", LDAP_ADMIN_DN, "-w", LDAP_ADMIN_PW,
                  "-H", self.ldap_uri, "create", "-r", REALM,
                  "-subtrees", BASE_DN, "-s", "-P", MASTER_PW])

    def start_kdc(self):
        """Start krb5kdc (foreground, -n) on kdc_port; wait until it serves."""
        if self._kdc is not None and self._kdc.poll() is None:
            return
        if getattr(self, "_kdc_out", None) is not None:
            self._kdc_out.close()
        self._kdc_out = open(self.path("krb5kdc.out"), "a")
        self._kdc = spawn(["krb5kdc", "-n", "-r", REALM], self._kdc_out,
                          env=self.env, cwd=self.dir)
        try:
            wait_port(self.kdc_port, self._kdc, "krb5kdc")
        except LabError:
            stop_pid(self._kdc, "krb5kdc")
            raise

    def stop_kdc(self):
        """Stop krb5kdc (by pid) for "KDC down" tests; start_kdc() again."""
        stop_pid(self._kdc, "krb5kdc")
        self._kdc = None

    @contextlib.contextmanager
    def kdc_down(self):
        """`with lab.kdc_down():` the KDC is stopped inside, running after."""
        self.stop_kdc()
        try:
            yield
        finally:
            self.start_kdc()

    def check_alive(self):
        """Raise LabError naming any lab daemon that is not running."""
        dead = [what for what, p in self._daemons()
                if p is None or p.poll() is not None]
        if dead:
            raise LabError("lab daemon(s) not running: " + ", ".join(dead))

    @property
    def pids(self):
        """{name: pid} of the lab daemons that are running."""
        return {what: p.pid for what, p in self._daemons()
                if p is not None and p.poll() is None}

    def _daemons(self):
        d = [("slapd", self._slapd), ("krb5kdc", self._kdc),
             ("apache2", self._apache)]
        if self.require_cb is not None:
            d.append(("cb_backend", self._cb))
        return d

    @property
    def kdc_pid(self):
        return self._kdc.pid if self._kdc and self._kdc.poll() is None \
            else None

    def _create_principals(self):
        cmds = [f"addpol -maxfailure {LOCKOUT_MAXFAILURE} "
                "-failurecountinterval 0 -lockoutduration 0 lockout"]
        for p in PROXIES + (EXCHANGE, OTHER):
            cmds.append(f"addprinc -randkey {p}")
        for p in (PROXY, PROXY_OTHERSPN, PROXY_NONE):
            cmds.append(f"modprinc +ok_to_auth_as_delegate {p}")
        for u in USERS + (DISABLED, EXPIRED, SENSITIVE):
            cmds.append(f"addprinc -pw {self.password(u)} "
                        f"+requires_preauth {u}")
        cmds.append(f"addprinc -pw {self.password(LOCKED)} "
                    f"+requires_preauth -policy lockout {LOCKED}")
        cmds.append(f"modprinc -allow_tix {DISABLED}")
        cmds.append(f'modprinc -expire "2000-01-01 00:00:00 UTC" {EXPIRED}')
        cmds.append(f"modprinc -allow_forwardable {SENSITIVE}")
        for p in PROXIES + (EXCHANGE,):
            cmds.append(f"ktadd -k {self.keytab(p)} {p}")
        self._kadmin_batch(cmds)
        for proxy, targets in DELEGATION.items():
            self.set_allowed_to_delegate(proxy, targets)
        for p in PROXIES:
            os.chmod(self.keytab(p), 0o600)
        kt = self.keytab(EXCHANGE)
        os.chown(kt, 0, self._www_gid())
        os.chmod(kt, 0o640)
        self.lock_user(LOCKED)

    def rotate_exchange_key(self):
        """Give HTTP/exchange a new key (new kvno) and replace Exchange's
        keytab with one holding only it: service tickets issued before
        (cached in impersonated credentials) now get a 401 from Apache,
        fresh S4U2Proxy tickets work.  Returns the new kvno."""
        kt = self.keytab(EXCHANGE)
        tmp = kt + ".new"
        if os.path.exists(tmp):
            os.unlink(tmp)
        self.kadmin_local(f"ktadd -k {tmp} {EXCHANGE}")
        os.chown(tmp, 0, self._www_gid())
        os.chmod(tmp, 0o640)
        os.replace(tmp, kt)
        out = self.run(["klist", "-k", kt])
        return max(int(ln.split()[0]) for ln in out.splitlines()
                   if ln.strip()[:1].isdigit())

    def lock_user(self, user):
        """Lock `user` (policy "lockout") with failed password attempts."""
        env = dict(self.env, KRB5CCNAME="MEMORY:lock")
        # The KDC forgets failures not later than the last admin unlock
        # (whole seconds, "<="): fail only after that second is over.
        wait = self._unlocked.get(user, 0) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)
        for _ in range(LOCKOUT_MAXFAILURE):
            self.run(["kinit", principal(user)], expected_code=1,
                     input="wrong-password\n", env=env)
        code, out = self.run_status(["kinit", principal(user)],
                                    input=self.password(user) + "\n",
                                    env=env)
        if code == 0 or "revoked" not in out:
            raise LabError(f"{user} did not lock: kinit said: {out}")

    def unlock_user(self, user):
        """Admin unlock (kadmin modprinc -unlock); lock_user() relocks."""
        self.kadmin_local(f"modprinc -unlock {user}")
        self._unlocked[user] = int(time.time())

    def kdc_log_text(self):
        try:
            with open(self.kdc_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def kdc_requests(self, kind=None, user=None):
        """Requests in the KDC log (see parse_kdc_log), filtered by kind
        ('AS', 'TGS', 'S4U2SELF', 'S4U2PROXY'; None or 'ANY' = all) and by
        user (the impersonated user for S4U kinds, else the client)."""
        out = []
        for ent in parse_kdc_log(self.kdc_log_text()):
            if kind is not None and kind.upper() != "ANY" and \
                    ent["kind"] != kind.upper():
                continue
            if user is not None and ent["user"] != principal(user):
                continue
            out.append(ent)
        return out

    def count_kdc_requests(self, kind, user=None, status=None):
        """How many KDC requests of `kind` ('AS', 'TGS', 'S4U2SELF',
        'S4U2PROXY') for `user` were logged, optionally only those with
        `status` ('ISSUE' or an error name)."""
        return sum(1 for e in self.kdc_requests(kind, user)
                   if status is None or e["status"] == status)

    @staticmethod
    def _www_gid():
        import grp
        return grp.getgrnam(WWW_DATA).gr_gid

    # -- Apache -----------------------------------------------------------
    def _start_apache(self):
        ca = certs.server_ca(self.path("pki"), key_type=self.backend_key_type)
        leaf = certs.exchange_server(self.path("pki"), ca,
                                     key_type=self.backend_key_type)
        cert, key = leaf.cert, leaf.key
        self.backend_port = free_port()
        self.backend_http_port = free_port()
        cgi = self.path("apache", "cgi", "eas.py")
        with open(cgi, "w") as f:
            f.write(CGI_SCRIPT)
        os.chmod(cgi, 0o755)
        lua = self.path("apache", "eas.lua")
        with open(lua, "w") as f:
            f.write(LUA_HANDLER.replace("@VERSIONS@", EAS_VERSIONS)
                    .replace("@COMMANDS@", EAS_COMMANDS)
                    .replace("@SERVER@", EAS_SERVER))
        os.chmod(lua, 0o644)
        rc = self.path("apache", "rcache")
        os.mkdir(rc, 0o700)
        os.chown(rc, pwd_uid(WWW_DATA), self._www_gid())
        conf = self.path("apache", "apache2.conf")
        with open(conf, "w") as f:
            f.write(self._apache_conf(cert, key, cgi, lua, rc))
        self._apache_conf_path = conf
        self._apache_out = open(self.path("apache", "stderr.log"), "w")
        env = self.env
        env.pop("KRB5CCNAME", None)
        self._apache = spawn(["apache2", "-f", conf, "-DFOREGROUND"],
                             self._apache_out, env=env, cwd=self.dir)
        wait_port(self.backend_port, self._apache, "apache2")
        wait_port(self.backend_http_port, self._apache, "apache2")

    def _apache_conf(self, cert, key, cgi, lua, rcache):
        a = self.path("apache")
        mods = ["mpm_event", "authn_core", "authz_core", "authz_user",
                "auth_gssapi", "ssl", "socache_shmcb", "cgid", "lua",
                "alias", "mime", "setenvif", "env"]
        loads = "\n".join(
            f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in mods)
        gss = f"""    AuthType GSSAPI
    AuthName "Lab Exchange"
    GssapiAllowedMech krb5
    GssapiAcceptorName HTTP@{BACKEND_HOST}
    GssapiCredStore keytab:{self.keytab(EXCHANGE)}
    GssapiCredStore rcache:file2:{rcache}/exchange.rc
    GssapiConnectionBound On
    GssapiBasicAuth Off
    GssapiSignalPersistentAuth On
    Require valid-user"""
        return f"""# lab "Exchange": private apache2, 127.0.0.1 only
ServerRoot {a}
ServerName {BACKEND_HOST}
PidFile {a}/run/apache2.pid
DefaultRuntimeDir {a}/run
Mutex file:{a}/run default
ScriptSock {a}/run/cgid.sock
User {WWW_DATA}
Group {WWW_DATA}
{loads}

StartServers 2
ServerLimit 4
ThreadsPerChild 64
MaxRequestWorkers 256
MinSpareThreads 16
MaxSpareThreads 256
Timeout {self.apache_timeout}
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout {self.keepalive_timeout}

ErrorLog {a}/error.log
LogLevel info ssl:warn
SetEnvIf Authorization "^([A-Za-z0-9]+)" lab_auth_scheme=$1
LogFormat "%{{remote}}p\\t%k\\t%m\\t%U%q\\t%>s\\t%u\\t%{{lab_auth_scheme}}e\\t%I\\t%O\\t%{{X-MS-Location}}o" lab
CustomLog {a}/access.log lab
TypesConfig /etc/mime.types

SSLSessionCache shmcb:{a}/run/ssl_scache(512000)
SSLRandomSeed startup builtin

Listen 127.0.0.1:{self.backend_port} https
Listen 127.0.0.1:{self.backend_http_port} http

DocumentRoot {a}/www
<Directory />
    AllowOverride None
    Require all denied
</Directory>

ScriptAlias /Microsoft-Server-ActiveSync {cgi}
ScriptAlias /autodiscover {cgi}
ScriptAlias /Autodiscover {cgi}
LuaMapHandler "^/(Microsoft-Server-ActiveSync|[Aa]utodiscover)" {lua} handle

<Directory {a}/www>
    Require all granted
</Directory>
<Directory {a}/cgi>
    Options +ExecCGI
    Require all granted
</Directory>

<Location /Microsoft-Server-ActiveSync>
{gss}
</Location>
<Location /autodiscover>
{gss}
</Location>
<Location /Autodiscover>
{gss}
</Location>

<VirtualHost 127.0.0.1:{self.backend_port}>
    ServerName {BACKEND_HOST}
    SSLEngine on
    SSLCertificateFile {cert}
    SSLCertificateKeyFile {key}
    SSLProtocol -all +TLSv1.2 +TLSv1.3
</VirtualHost>
<VirtualHost 127.0.0.1:{self.backend_http_port}>
    ServerName {BACKEND_HOST}
</VirtualHost>
"""

    def _start_cb_backend(self):
        self.cb_backend_port = free_port()
        here = os.path.dirname(os.path.abspath(__file__))
        args = [PYTHON, os.path.join(here, "cb_backend.py"),
                "--port", str(self.cb_backend_port),
                "--cert", self.backend_cert,
                "--key", self.backend_key,
                "--keytab", self.keytab(EXCHANGE),
                "--rcache", "file2:" + self.path("rcache", "cb_backend.rc"),
                "--acceptor", "HTTP@" + BACKEND_HOST,
                "--log", self.path("cb_backend.log")]
        if self.require_cb:
            args.append("--require")
        self._cb_out = open(self.path("cb_backend.out"), "w")
        env = self.env
        env.pop("KRB5CCNAME", None)
        self._cb = spawn(args, self._cb_out, env=env, cwd=self.dir)
        wait_port(self.cb_backend_port, self._cb, "cb_backend.py")

    def cb_backend_requests(self):
        """cb_backend.py's log: dicts with remote_port, method, uri, user,
        cb ('bound', 'absent', 'persisted', 'cb_mismatch', 'cb_missing',
        'none', 'gss_error: ...'), status."""
        try:
            with open(self.path("cb_backend.log")) as f:
                return [json.loads(ln) for ln in f if ln.strip()]
        except FileNotFoundError:
            return []

    def apache_log_text(self):
        """Apache's error log (mod_auth_gssapi reasons) + access log."""
        parts = []
        for name in ("error.log", "access.log", "stderr.log"):
            try:
                with open(self.path("apache", name), errors="replace") as f:
                    parts.append(f"==> {name} <==\n" + f.read())
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def apache_access(self):
        """Parsed access log: dicts with remote_port, keepalive (requests
        before this one on the same connection), method, uri, status, user,
        auth_scheme ('Negotiate' or ''), bytes_in, bytes_out, location."""
        keys = ("remote_port", "keepalive", "method", "uri", "status", "user",
                "auth_scheme", "bytes_in", "bytes_out", "location")
        out = []
        try:
            with open(self.path("apache", "access.log"),
                      errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return out
        for ln in lines:
            vals = ln.split("\t")
            if len(vals) != len(keys):
                continue
            e = dict(zip(keys, vals))
            for k in ("keepalive", "status", "bytes_in", "bytes_out"):
                e[k] = int(e[k]) if e[k].isdigit() else 0
            for k in ("user", "auth_scheme", "location"):
                if e[k] == "-":
                    e[k] = ""
            out.append(e)
        return out

    @property
    def apache_pid(self):
        return self._apache.pid if self._apache and \
            self._apache.poll() is None else None


def pwd_uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid


_KDC_LINE = re.compile(
    r"krb5kdc\[(?P<pid>\d+)\]\(\w+\): (?P<req>AS_REQ|TGS_REQ) "
    r"\((?P<etypes>\d+ etypes \{[^}]*\})\) (?P<addr>\S+): "
    r"(?P<status>[A-Z][A-Z0-9_ ]*?): (?P<rest>.*)$")
_KDC_S4U = re.compile(
    r"krb5kdc\[(?P<pid>\d+)\]\(\w+\): \.\.\. "
    r"(?P<what>PROTOCOL-TRANSITION|CONSTRAINED-DELEGATION) "
    r"s4u-client=(?P<user>\S+)")
_KDC_NAMES = re.compile(r"(\S+@[^\s,]+) for (\S+@[^\s,]+)")
# TGS errors that only an S4U2Proxy request gets (MIT 1.20 logs them
# without the "... CONSTRAINED-DELEGATION" line that names the user).
S4U2PROXY_ERRORS = ("EVIDENCE_TKT_NOT_FORWARDABLE",
                    "UNSUPPORTED_S4U2PROXY_REQUEST", "NOT_ALLOWED_TO_DELEGATE",
                    "BAD_INTEGRITY")
# ... and the one that only a refused S4U2Self gets (an unknown user)
S4U2SELF_ERRORS = ("UNKNOWN_S4U2SELF_PRINCIPAL",)


def parse_kdc_log(text):
    """MIT krb5kdc 1.20 log text -> list of request dicts.

    Shapes this relies on (verified against krb5kdc 1.20.1 + LDAP KDB):
      AS_REQ (...) 127.0.0.1: ISSUE: authtime N, etypes {...}, C for S
      AS_REQ (...) 127.0.0.1: CLIENT LOCKED OUT: C for S, <message>
      TGS_REQ (...) 127.0.0.1: ISSUE: authtime N, etypes {...}, C for S
      ... PROTOCOL-TRANSITION s4u-client=alice@EXAMPLE.TEST   (S4U2Self)
      ... CONSTRAINED-DELEGATION s4u-client=alice@EXAMPLE.TEST (S4U2Proxy;
                                        s4u-client=<unknown> when refused)
      TGS_REQ (...): EVIDENCE_TKT_NOT_FORWARDABLE: ... C for S, <message>
                                        (refused S4U2Proxy, no "..." line)
      TGS_REQ (...): CLIENT LOCKED OUT: ... P for P, <message>
      ... PROTOCOL-TRANSITION s4u-client=<unknown>  (refused S4U2Self)
      TGS_REQ (...): UNKNOWN_S4U2SELF_PRINCIPAL: ... P for P, <message>
    A refused S4U request does not name the user: its entry has user None;
    find it by client (the proxy) and status.  (kvno -U sends an AS-REQ
    probe for the user first, as an enterprise name; GSSAPI with a plain
    principal name does not.)
    Each dict: kind ('AS', 'TGS', 'S4U2SELF', 'S4U2PROXY'), status ('ISSUE'
    or the KDC's error token, e.g. 'CLIENT_NOT_FOUND', 'CLIENT LOCKED
    OUT'), client, server, user (AS/TGS: the client; S4U: the impersonated
    user, None when the KDC did not log it), line.
    """
    out = []
    last = {}       # pid -> the last request entry of that KDC process
    for line in text.splitlines():
        m = _KDC_LINE.search(line)
        if m:
            rest = m.group("rest")
            nm = _KDC_NAMES.search(rest)
            client, server = (nm.group(1), nm.group(2)) if nm else (None,
                                                                    None)
            kind = "AS" if m.group("req") == "AS_REQ" else "TGS"
            status = m.group("status")
            if kind == "TGS" and status in S4U2PROXY_ERRORS:
                kind = "S4U2PROXY"
            elif kind == "TGS" and status in S4U2SELF_ERRORS:
                kind = "S4U2SELF"
            ent = {"kind": kind, "status": status, "client": client,
                   "server": server,
                   "user": client if kind in ("AS", "TGS") else None,
                   "line": line}
            out.append(ent)
            last[m.group("pid")] = ent
            continue
        m = _KDC_S4U.search(line)
        if m and m.group("pid") in last:
            ent = last.pop(m.group("pid"))
            ent["kind"] = ("S4U2SELF" if m.group("what") ==
                           "PROTOCOL-TRANSITION" else "S4U2PROXY")
            user = m.group("user")
            ent["user"] = None if user == "<unknown>" else user
            ent["line"] += "\n" + line
    return out
