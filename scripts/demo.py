#!/usr/bin/python3
"""`make demo`: a local Kerberos + Exchange lab, eas-kcd-proxy in front of
it, and a device's ActiveSync requests going through.

    scripts/demo.py [--build DIR] [--bin PATH] [--once] [--keep]

What it does, all on 127.0.0.1 in one temp directory:
  1. starts the test lab (tests/integration/lab.py): slapd + MIT KDC with the
     S4U principals, Apache + mod_auth_gssapi as the "Exchange" stand-in;
  2. makes certificates (tests/certs.py): a device CA, alice's device
     certificate (SAN UPN alice@EXAMPLE.TEST), one without a UPN, and the
     proxy's server certificate for mail.example.test;
  3. writes a proxy config and starts `eas-kcd-proxy -c CONF` in the
     foreground as a child;
  4. acts as alice's phone: OPTIONS, FolderSync, Sync; prints what the proxy
     answered and which user Exchange saw; then two refused devices;
  5. shows where the error log, the access log and /metrics are, and waits
     for Ctrl-C (or, with --once, exits: 0 only if all three requests got a
     2xx and Exchange saw alice).

Every wait has a timeout, every process started here is stopped by its pid,
and a failure names what failed with the last lines of the error log.
"""

import argparse
import glob
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import certs  # noqa: E402  (tests/certs.py)
import lab as labmod  # noqa: E402  (tests/integration/lab.py)

PROXY_HOST = "mail.example.test"
EAS_PATH = "/Microsoft-Server-ActiveSync"
DEVICE_ID = "DEMO0001"
DEVICE_TYPE = "iPhone"
USER_AGENT = "Apple-iPhone9C1/1402.100"
ALICE = "alice@" + labmod.REALM

# WBXML (MS-ASWBXML): version 1.3, public id 1, UTF-8, no string table.
WBXML_HEAD = bytes([0x03, 0x01, 0x6A, 0x00])
# <FolderSync xmlns="FolderHierarchy"><SyncKey>0</SyncKey></FolderSync>
FOLDERSYNC_BODY = WBXML_HEAD + bytes([
    0x00, 0x07,                 # SWITCH_PAGE 7 (FolderHierarchy)
    0x56,                       # FolderSync, with content
    0x52, 0x03, 0x30, 0x00, 0x01,   # SyncKey "0"
    0x01])
# <Sync xmlns="AirSync"><Collections><Collection><SyncKey>0</SyncKey>
#   <CollectionId>1</CollectionId></Collection></Collections></Sync>
SYNC_BODY = WBXML_HEAD + bytes([
    0x45,                       # Sync (code page 0, AirSync)
    0x5C,                       # Collections
    0x4F,                       # Collection
    0x4B, 0x03, 0x30, 0x00, 0x01,   # SyncKey "0"
    0x52, 0x03, 0x31, 0x00, 0x01,   # CollectionId "1"
    0x01, 0x01, 0x01])

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "ERROR: UndefinedBehaviorSanitizer")


class DemoError(Exception):
    """A step failed; the message says which and why."""


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def say(msg=""):
    print(msg, flush=True)


def tail(path, n):
    """The last n lines of a text file; [] when it does not exist."""
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-n:]
    except (FileNotFoundError, PermissionError):
        return []


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# the proxy

class ProxyRun:
    """eas-kcd-proxy started as our child, with its files in directory d."""

    def __init__(self, binary, d, lab, timeout):
        self.binary = binary
        self.dir = d
        self.lab = lab
        self.timeout = timeout
        self.port = labmod.free_port()
        self.admin_port = labmod.free_port()
        while self.admin_port == self.port:
            self.admin_port = labmod.free_port()
        self.conf = os.path.join(d, "eas-kcd-proxy.conf")
        self.error_log = os.path.join(d, "error.log")
        self.access_log = os.path.join(d, "access.log")
        self.console = os.path.join(d, "console.log")
        self.proc = None
        self._out = None
        self.children = set()      # kcd and worker pids seen while running

    def path(self, name):
        return os.path.join(self.dir, name)

    def make_certs(self):
        pki = self.path("pki")
        os.makedirs(pki, mode=0o711, exist_ok=True)
        self.device_ca = certs.device_ca(pki)
        self.server_ca = certs.server_ca(pki)
        self.server = certs.server_cert(pki, "mail-server", self.server_ca,
                                        [PROXY_HOST, "localhost"])
        self.alice = certs.good_user(pki, self.device_ca, "alice")
        self.no_upn = certs.no_upn(pki, self.device_ca)

    def write_config(self):
        lab = self.lab
        user = "user = nobody\n" if os.geteuid() == 0 else ""
        text = f"""; written by scripts/demo.py for one demo run
[server]
listen = 127.0.0.1:{self.port}
admin_listen = 127.0.0.1:{self.admin_port}
workers = 1
{user}shutdown_timeout = 5s

[tls]
certificate = {self.server.cert}
key = {self.server.key}
client_ca = {self.device_ca.cert}

[identity]
realm = {labmod.REALM}

[kerberos]
keytab = {lab.keytab(labmod.PROXY)}
principal = {labmod.principal(labmod.PROXY)}
krb5_conf = {lab.krb5_conf}

[backend]
servers = {labmod.BACKEND_HOST}:{lab.backend_port}
connect_to = 127.0.0.1:{lab.backend_port}
ca = {lab.backend_ca}
spn = {labmod.EXCHANGE}

[log]
error_log = {self.error_log}
level = info
access_log = {self.access_log}
access_format = w3c
"""
        with open(self.conf, "w") as f:
            f.write(text)

    def env(self):
        """The daemon's environment: nothing from krb5 settings of the
        caller (the config names krb5.conf and the keytab); sanitizer
        options kept."""
        env = dict(os.environ)
        for k in ("KRB5_CONFIG", "KRB5CCNAME", "KRB5_KTNAME",
                  "KRB5_CLIENT_KTNAME", "KRB5_KDC_PROFILE"):
            env.pop(k, None)
        # a sanitizer build reports into files here, also from children
        # whose stderr is not ours (checked by sanitizer_report())
        # (a sticky world-writable directory: workers run as nobody)
        sdir = self.path("sanlogs")
        if not os.path.isdir(sdir):
            os.makedirs(sdir)
            os.chmod(sdir, 0o1777)
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            opts = [o for o in env.get(var, "").split(":")
                    if o and not o.startswith("log_path=")]
            opts.append("log_path=" + os.path.join(sdir, "san"))
            env[var] = ":".join(opts)
        return env

    def check_config(self):
        p = subprocess.run([self.binary, "-t", "-c", self.conf],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=30, env=self.env())
        if p.returncode != 0:
            raise DemoError(f"`{self.binary} -t -c {self.conf}` refused the "
                            f"demo config (exit {p.returncode}):\n"
                            f"{p.stdout.strip()}")

    def start(self):
        self._out = open(self.console, "ab")
        self.proc = labmod.spawn([self.binary, "-c", self.conf], self._out,
                                 env=self.env(), cwd=self.dir)
        try:
            labmod.wait_port(self.port, self.proc, "eas-kcd-proxy",
                             timeout=self.timeout)
        except labmod.LabError as e:
            raise DemoError(f"the proxy did not start: {e}")
        # Workers and kcd report ready in the error log; requests sent
        # before that would only wait in the listen queue.
        try:
            wait_for(lambda: self.ready() or self.proc.poll() is not None,
                     self.timeout, "'generation 1 ready' in the error log")
        except DemoError as e:
            say(f"  note: {e}; going on")
        if self.proc.poll() is not None:
            raise DemoError(f"the proxy exited with status "
                            f"{self.proc.returncode} right after starting")
        self.note_children()

    def ready(self):
        return any("generation 1 ready" in ln
                   for ln in tail(self.error_log, 200))

    def note_children(self):
        """Remember the daemon's children (kcd, workers) by pid, so that
        stop() can make sure none outlives it."""
        if self.proc is None:
            return
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces
            fields = st.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(self.proc.pid):
                self.children.add(int(d))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM, bounded wait, SIGKILL; then the same for any child the
        parent left behind. Returns a list of problems (strings)."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            self.note_children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                problems.append(f"eas-kcd-proxy (pid {self.proc.pid}) did not "
                                "stop within 20s of SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in sorted(self.children):
            end = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < end:
                time.sleep(0.05)
            if _pid_alive(pid):
                problems.append(f"child pid {pid} outlived the proxy; killed")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._out is not None:
            self._out.close()
            self._out = None
        return problems

    def sanitizer_report(self):
        for path in sorted(glob.glob(self.path("san.*")) +
                           glob.glob(os.path.join(self.path("sanlogs"), "san.*"))):
            lines = tail(path, 30)
            if lines:
                return path, lines
        for path in (self.console, self.error_log):
            lines = tail(path, 100000)
            for i, ln in enumerate(lines):
                if any(m in ln for m in SANITIZER_MARKS):
                    return path, lines[i:i + 30]
        return None

    def show_failure_logs(self, n=15):
        lines = tail(self.error_log, n)
        say(f"  last lines of the error log ({self.error_log}):")
        for ln in lines or ["(empty)"]:
            say("    " + ln)
        cons = tail(self.console, n)
        if cons:
            say(f"  the proxy's stdout/stderr ({self.console}):")
            for ln in cons:
                say("    " + ln)
        if self.proc is not None and self.proc.poll() is not None:
            say(f"  the proxy has exited with status {self.proc.returncode}")


def _pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# ---------------------------------------------------------------------------
# the device

class Device:
    """A phone talking to the proxy over TLS, optionally with a client
    certificate (cert, key paths)."""

    def __init__(self, proxy, cert=None, timeout=20.0):
        self.port = proxy.port
        self.timeout = timeout
        ctx = ssl.create_default_context(cafile=proxy.server_ca.cert)
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        self.ctx = ctx
        self.conn = None

    def _connection(self):
        conn = http.client.HTTPSConnection(PROXY_HOST, self.port,
                                           timeout=self.timeout,
                                           context=self.ctx)

        def connect():
            # the name is mail.example.test, the address 127.0.0.1
            sock = socket.create_connection(("127.0.0.1", self.port),
                                            self.timeout)
            try:
                conn.sock = self.ctx.wrap_socket(sock,
                                                 server_hostname=PROXY_HOST)
            except BaseException:
                sock.close()
                raise
        conn.connect = connect
        return conn

    def request(self, method, target, body=None, headers=None):
        """One request on the device's keep-alive connection (a new one if
        the proxy closed the last). Returns (status, reason, headers dict
        with lower-case names, body bytes); raises DeviceError naming the
        phase that failed."""
        if self.conn is None:
            self.conn = self._connection()
        if self.conn.sock is None:
            try:
                self.conn.connect()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise DeviceError("TLS handshake", e)
        h = {"User-Agent": USER_AGENT}
        h.update(headers or {})
        try:
            self.conn.request(method, target, body=body, headers=h)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise DeviceError("request", e)
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self.close()
        return resp.status, resp.reason, hdrs, data

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class DeviceError(Exception):
    """A device request failed in phase ("TLS handshake", "request")."""

    def __init__(self, phase, exc):
        super().__init__(f"{phase}: {describe_exc(exc)}")
        self.phase = phase
        self.exc = exc

    def tls_alert(self):
        """The TLS alert the proxy sent (OpenSSL's reason, e.g.
        TLSV13_ALERT_CERTIFICATE_REQUIRED), or None."""
        e = self.exc
        if isinstance(e, ssl.SSLError) and not isinstance(
                e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            r = e.reason or ""
            if "ALERT" in r or "CERTIFICATE_REQUIRED" in r:
                return r
        return None


def describe_exc(e):
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "the proxy closed the connection without a TLS alert (EOF)"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"the proxy's certificate did not verify: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error {e.reason or e}"
    if isinstance(e, socket.timeout):
        return "no answer (timed out)"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the proxy closed the connection without an answer"
    if isinstance(e, ConnectionResetError):
        return "the proxy reset the connection"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (nothing listens)"
    return f"{type(e).__name__}: {e}"


def eas_query(cmd):
    return (f"{EAS_PATH}?Cmd={cmd}&User=alice&DeviceId={DEVICE_ID}"
            f"&DeviceType={DEVICE_TYPE}")


def exchange_view(status, hdrs, body, method):
    """What the lab's Exchange said it saw: (remote_user or None, note)."""
    if method == "OPTIONS":
        user = hdrs.get("x-lab-remote-user") or None
        vers = hdrs.get("ms-asprotocolversions")
        return user, (f"MS-ASProtocolVersions: {vers}" if vers else
                      "no MS-ASProtocolVersions header")
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return None, "the answer is not the lab's JSON echo"
    if not isinstance(doc, dict):
        return None, "the answer is not the lab's JSON echo"
    seen = doc.get("headers") or {}
    note = (f"body {doc.get('body_length')} bytes, MS-ASProtocolVersion "
            f"{seen.get('ms-asprotocolversion', '(missing)')}")
    return doc.get("remote_user"), note


def run_alice(proxy, timeout):
    """The three requests; returns a list of failure strings (empty = all
    good)."""
    dev = Device(proxy, proxy.alice, timeout)
    eas = {"MS-ASProtocolVersion": "14.1", "X-MS-PolicyKey": "0"}
    wb = dict(eas, **{"Content-Type": "application/vnd.ms-sync.wbxml"})
    steps = [
        ("OPTIONS", EAS_PATH, None, {}),
        ("POST", eas_query("FolderSync"), FOLDERSYNC_BODY, wb),
        ("POST", eas_query("Sync"), SYNC_BODY, wb),
    ]
    failures = []
    try:
        for i, (method, target, body, headers) in enumerate(steps, 1):
            label = f"[{i}/3] {method} {target}"
            say(label)
            try:
                status, reason, hdrs, data = dev.request(method, target,
                                                         body, headers)
            except DeviceError as e:
                msg = str(e)
                say(f"      FAILED in the {msg}")
                failures.append(f"{method} {target}: {msg}")
                continue
            user, note = exchange_view(status, hdrs, data, method)
            say(f"      proxy answered {status} {reason}")
            if 200 <= status < 300 and user == ALICE:
                say(f"      Exchange saw user {user} ({note})")
                continue
            if user:
                say(f"      Exchange saw user {user}, expected {ALICE}")
            else:
                say("      Exchange did not report a user "
                    "(the request did not reach it authenticated)")
            snippet = data[:200].decode("utf-8", "replace").strip()
            if snippet and not (200 <= status < 300):
                say(f"      body: {snippet}")
            failures.append(f"{method} {target}: status {status} {reason}, "
                            f"Exchange saw {user or 'no user'}")
    finally:
        dev.close()
    return failures


def probe_no_cert(proxy, timeout):
    """A device without a certificate: the proxy must refuse it in the TLS
    handshake (with TLS 1.3 the client learns it from the alert that follows
    its Finished) or, if it asks post-handshake, answer 403. Reads first and
    sends nothing, so the alert is not lost to a reset over unread data.
    Returns (description, as expected, let through)."""
    ctx = ssl.create_default_context(cafile=proxy.server_ca.cert)
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout)
        sock = ctx.wrap_socket(sock, server_hostname=PROXY_HOST)
        sock.settimeout(min(timeout, 3.0))
        try:
            data = sock.recv(1)
            if not data:
                return ("the proxy closed the connection without a TLS "
                        "alert (EOF)", False, False)
        except (socket.timeout, TimeoutError):
            pass            # no alert: maybe it answers 403 to a request
        sock.settimeout(timeout)
        sock.sendall(f"POST {eas_query('FolderSync')} HTTP/1.1\r\n"
                     f"Host: {PROXY_HOST}:{proxy.port}\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n"
                     .encode())
        head = sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
        if not head:
            return ("the proxy closed the connection without an answer",
                    False, False)
        parts = head.split()
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return (head, code == 403, 200 <= code < 300)
    except OSError as e:
        err = DeviceError("TLS handshake", e)
        alert = err.tls_alert()
        if alert:
            return (f"refused in the TLS handshake (alert {alert})", True,
                    False)
        return (f"failed in the {err}", False, False)
    finally:
        if sock is not None:
            sock.close()


def run_refused(proxy, timeout):
    """Two devices the proxy must refuse; one line each. Returns a list of
    failures: only a refused device that got through counts."""
    failures = []
    what = "a certificate without a UPN"
    dev = Device(proxy, proxy.no_upn, timeout)
    try:
        status, reason, _, _ = dev.request(
            "POST", eas_query("FolderSync"), FOLDERSYNC_BODY,
            {"Content-Type": "application/vnd.ms-sync.wbxml",
             "MS-ASProtocolVersion": "14.1", "X-MS-PolicyKey": "0"})
        got, ok = f"{status} {reason}", status == 403
        if 200 <= status < 300:
            failures.append(f"device with {what} got {got}")
    except DeviceError as e:
        got, ok = f"failed in the {e}", False
    finally:
        dev.close()
    say(f"      device with {what}: {got} "
        f"{'as expected' if ok else '(expected 403)'}")
    what = "no client certificate"
    got, ok, through = probe_no_cert(proxy, timeout)
    if through:
        failures.append(f"device with {what} got {got}")
    say(f"      device with {what}: {got} "
        f"{'as expected' if ok else '(expected: handshake refused)'}")
    return failures


def show_where(proxy):
    say()
    say("Where to look:")
    say(f"  config      {proxy.conf}")
    say(f"  error log   {proxy.error_log}")
    say(f"  access log  {proxy.access_log}")
    def request_lines():
        return [ln for ln in tail(proxy.access_log, 50)
                if ln and not ln.startswith("#")]

    # workers write their access-log lines in batches (about every second):
    # wait a little for the five requests above
    end = time.monotonic() + 3.0
    lines = request_lines()
    while len(lines) < 5 and time.monotonic() < end:
        time.sleep(0.1)
        lines = request_lines()
    if lines:
        for ln in lines[-5:]:
            say("    " + ln)
    elif os.path.exists(proxy.access_log):
        say("    (no request lines after 3s: the file holds only its header)")
    else:
        say("    (not written: the proxy has not opened its access log)")
    url = f"http://127.0.0.1:{proxy.admin_port}/metrics"
    say(f"  metrics     {url}   (curl {url})")
    try:
        c = http.client.HTTPConnection("127.0.0.1", proxy.admin_port,
                                       timeout=3)
        try:
            c.request("GET", "/metrics")
            r = c.getresponse()
            text = r.read().decode("utf-8", "replace")
        finally:
            c.close()
        if r.status != 200:
            say(f"    the admin listener answered {r.status} {r.reason}")
        else:
            samples = [ln for ln in text.splitlines()
                       if ln and not ln.startswith("#")]
            pick = [ln for ln in samples if "requests_total" in ln or
                    "handshake" in ln or "kdc_requests" in ln][:8]
            for ln in pick or samples[:8] or ["(no samples)"]:
                say("    " + ln)
    except ConnectionRefusedError:
        say("    nothing answers on admin_listen (connection refused)")
    except (socket.timeout, TimeoutError):
        say("    the admin listener accepted the connection but did not "
            "answer within 3s: /metrics is not served by this build yet")
    except (OSError, http.client.HTTPException) as e:
        say(f"    /metrics failed: {describe_exc(e)}")


def try_it_yourself(proxy):
    pki = os.path.dirname(proxy.alice.cert)
    say()
    say("Try it yourself (as alice's phone):")
    say(f"  curl --cacert {pki}/server-ca.pem \\\n"
        f"       --cert {proxy.alice.cert} --key {proxy.alice.key} \\\n"
        f"       --resolve {PROXY_HOST}:{proxy.port}:127.0.0.1 -X OPTIONS -si \\\n"
        f"       https://{PROXY_HOST}:{proxy.port}{EAS_PATH}")


# ---------------------------------------------------------------------------

def find_binary(args):
    if args.bin:
        path = args.bin
    else:
        path = os.path.join(args.build, "eas-kcd-proxy")
        if not os.path.isabs(path) and not os.path.exists(path):
            path = os.path.join(ROOT, path)
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise DemoError(f"no executable eas-kcd-proxy at {path}: build it "
                        "first (make, or make BUILD=dir all), or pass --bin")
    return path


def on_signal(signum, frame):
    raise Stop(signal.Signals(signum).name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build",
                    help="build directory holding eas-kcd-proxy (default build)")
    ap.add_argument("--bin", help="the daemon binary (default BUILD/eas-kcd-proxy)")
    ap.add_argument("--once", action="store_true",
                    help="exit after the requests: 0 only if they all worked")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp directory (logs, config) afterwards")
    ap.add_argument("--timeout", type=float, default=20.0,
                    help="seconds for each wait (start, each request)")
    args = ap.parse_args()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lab = proxy = None
    rc = 1
    failures = []
    try:
        binary = find_binary(args)
        say("Starting the lab (slapd + MIT KDC + Apache as Exchange) ...")
        lab = labmod.Lab(keep=args.keep)
        try:
            lab.start()
        except labmod.LabError as e:
            raise DemoError(f"the lab did not start: {e}")
        say(f"  lab in {lab.dir}: KDC 127.0.0.1:{lab.kdc_port}, Exchange "
            f"{lab.backend_url} (-> 127.0.0.1:{lab.backend_port})")
        d = lab.path("demo")
        os.mkdir(d, 0o711)
        proxy = ProxyRun(binary, d, lab, args.timeout)
        proxy.make_certs()
        proxy.write_config()
        proxy.check_config()
        say(f"Starting {binary} -c {proxy.conf}")
        proxy.start()
        say(f"  devices: https://{PROXY_HOST}:{proxy.port} (127.0.0.1), "
            f"admin: http://127.0.0.1:{proxy.admin_port}")
        say()
        say(f"alice's phone (certificate with UPN {ALICE}):")
        failures = run_alice(proxy, args.timeout)
        say()
        say("Devices the proxy must refuse:")
        failures += run_refused(proxy, args.timeout)
        proxy.note_children()
        if not proxy.alive():
            failures.append(f"the proxy exited (status "
                            f"{proxy.proc.returncode}) during the requests")
        show_where(proxy)
        if failures:
            say()
            say("DEMO FAILED:")
            for f in failures:
                say(f"  - {f}")
            proxy.show_failure_logs()
            rc = 1
        elif args.once:
            rc = 0
        else:
            try_it_yourself(proxy)
            say()
            say("The proxy is running. Press Ctrl-C to stop everything"
                + ("" if args.keep else " (the temp directory is removed "
                   "then; --keep keeps it)") + ".")
            while proxy.alive():
                time.sleep(0.5)
            say(f"The proxy exited on its own (status "
                f"{proxy.proc.returncode}).")
            proxy.show_failure_logs()
            rc = 1
    except Stop as s:
        say()
        say(f"{s}: stopping.")
        rc = 0 if not (failures or args.once) else 1
    except DemoError as e:
        say()
        say(f"DEMO FAILED: {e}")
        if proxy is not None and proxy.proc is not None:
            proxy.show_failure_logs()
        rc = 1
    finally:
        # no more signals while we clean up: every process gets stopped
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proxy is not None:
            for p in proxy.stop():
                say(f"warning: {p}")
                rc = 1
            rep = proxy.sanitizer_report()
            if rep is not None:
                say(f"DEMO FAILED: sanitizer report in {rep[0]}:")
                for ln in rep[1]:
                    say("    " + ln)
                rc = 1
        if lab is not None:
            lab.stop()
            if args.keep:
                say(f"Kept {lab.dir}")
    if args.once and rc == 0:
        say()
        say("DEMO OK: OPTIONS, FolderSync and Sync went through as alice.")
    return rc


if __name__ == "__main__":
    sys.exit(main())
