"""Kerberos constrained delegation through the real daemon (SPEC §5, §6):
devices with certificates -> eas-kcd-proxy (workers + the kcd process) ->
the lab's MIT KDC (S4U2Self + S4U2Proxy) -> Apache + mod_auth_gssapi as
Exchange (GssapiConnectionBound On, like IIS).

What is pinned down, each through the whole request path:
  * users reach Exchange as themselves (REMOTE_USER), never as the proxy;
  * KDC refusals of the user are 403 kdc_<NAME>, of the proxy 502 kdc_<NAME>
    with a log line that says what to fix; no KDC is 503 + Retry-After and
    the proxy recovers when the KDC is back;
  * kcd's cache: one KDC exchange for 50 concurrent first requests of a
    user, credentials refreshed after credential_ttl, thousands of
    interleaved requests of several users never answered as another user;
  * channel bindings against an Extended Protection backend; a stale
    ticket (backend 401) retried once with a fresh credential; the
    backend's mutual-authentication token verified and stripped;
  * privilege separation: workers run unprivileged and never hold the
    keytab, which they could not even open.

One lab for the session (lab_fixtures) and one main proxy for the module;
tests that need another configuration start a small proxy of their own.
"""

import base64
import concurrent.futures
import http.client
import json
import os
import random
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from ekp import access_records, lab_proxy, wait_until
from lab import (DISABLED, EXPIRED, LOCKED, OTHER, PROXY, PROXY_NOFWD,
                 PROXY_OTHERSPN, REALM, SENSITIVE, UNKNOWN, Lab, principal)
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

EAS = "/Microsoft-Server-ActiveSync"
PROXY_NAME = "proxy.example.test"
WBXML = bytes([0x03, 0x01, 0x6A, 0x00, 0x00, 0x07, 0x56, 0x52, 0x03, 0x30,
               0x00, 0x01, 0x01])          # FolderSync, SyncKey 0
# users created for this module only (never seen by another test's proxy)
FRESH_USERS = ("kcddave", "kcderin", "kcdfrank", "kcdgina")


def target(user, cmd="Sync", device="KCD1"):
    return (f"{EAS}?Cmd={cmd}&User={user}&DeviceId={device}"
            f"&DeviceType=TestPhone")


# ---------------------------------------------------------------- devices --

class Device:
    """A phone with user's certificate on one keep-alive TLS connection to
    the proxy (reconnects when the proxy closed it)."""

    def __init__(self, proxy, user, timeout=60):
        self.proxy = proxy
        self.user = user
        self.timeout = timeout
        self.cert = device_cert(proxy, user)
        ctx = ssl.create_default_context(cafile=proxy.server_ca.cert)
        ctx.check_hostname = False
        ctx.load_cert_chain(self.cert.cert, self.cert.key)
        self.ctx = ctx
        self.conn = None
        self.connections = 0

    def connect(self):
        conn = http.client.HTTPSConnection(PROXY_NAME, self.proxy.port,
                                           timeout=self.timeout,
                                           context=self.ctx)
        sock = socket.create_connection(("127.0.0.1", self.proxy.port),
                                        self.timeout)
        try:
            conn.sock = self.ctx.wrap_socket(sock,
                                             server_hostname=PROXY_NAME)
        except BaseException:
            sock.close()
            raise
        self.conn = conn
        self.connections += 1

    def request(self, method, path, body=None, headers=None):
        """-> (status, {lower-case header: value}, body bytes)."""
        if self.conn is None:
            self.connect()
        h = {"User-Agent": "kcd-test/1.0", "MS-ASProtocolVersion": "14.1"}
        if body is not None:
            h["Content-Type"] = "application/vnd.ms-sync.wbxml"
        h.update(headers or {})
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()
            raise
        hdrs = {}
        for k, v in resp.getheaders():
            hdrs.setdefault(k.lower(), v)
        if resp.will_close:
            self.close()
        return resp.status, hdrs, data

    def options(self):
        return self.request("OPTIONS", target(self.user, "Options"))

    def post(self, cmd="FolderSync"):
        return self.request("POST", target(self.user, cmd), WBXML)

    def get(self, path=None):
        return self.request("GET", path or target(self.user, "Sync"))

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_certs = {}
_certs_lock = threading.Lock()


def device_cert(proxy, user):
    with _certs_lock:
        key = (proxy.dir, user)
        if key not in _certs:
            _certs[key] = proxy.device_cert(user)
        return _certs[key]


def seen_user(method, status, hdrs, body):
    """The user Exchange saw, from the lab's answers: OPTIONS carries
    X-Lab-Remote-User, everything else the CGI's JSON echo."""
    if method == "OPTIONS":
        return hdrs.get("x-lab-remote-user")
    try:
        return json.loads(body).get("remote_user")
    except ValueError:
        return None


def as_user(dev, method="POST"):
    """One request by dev; asserts 200 and returns the user Exchange saw."""
    if method == "OPTIONS":
        status, hdrs, body = dev.options()
    elif method == "GET":
        status, hdrs, body = dev.get()
    else:
        status, hdrs, body = dev.post()
    assert status == 200, (f"{dev.user} {method}: {status}, expected 200: "
                           f"{body[:300]!r}\nerror log:\n"
                           f"{tail(dev.proxy.log_text())}")
    return seen_user(method, status, hdrs, body)


def tail(text, n=25):
    return "\n".join(text.splitlines()[-n:])


# ------------------------------------------------------------- access log --

def wait_access(proxy, pred, what, count=1):
    """Wait (workers flush their lines every second) for count JSON
    access-log records matching pred; returns them."""
    return wait_until(lambda: (lambda r: r if len(r) >= count else None)(
        [r for r in access_records(proxy) if pred(r)]), 15,
        f"{what} in {proxy.access_log}")


def make_proxy(lab, principal_=PROXY, **kw):
    """ekp.lab_proxy for another of the lab's proxy principals."""
    if principal_ != PROXY:
        kw.setdefault("settings", {}).setdefault("kerberos", {}).update(
            keytab=lab.keytab(principal_), principal=principal(principal_))
    return lab_proxy(lab, **kw)


# -------------------------------------------------------------- fixtures --

@pytest.fixture(scope="module")
def fresh_users(lab_session):
    """Users no proxy has asked for yet: their first request must go to the
    KDC (alice, bob and carol are shared with other test modules)."""
    for u in FRESH_USERS:
        lab_session.kadmin_local(f"addprinc -pw {Lab.password(u)} "
                                 f"+requires_preauth {u}", check=False)
    return FRESH_USERS


CHILD_END = re.compile(r"\b((?:worker \d+|kcd) \(pid \d+, generation \d+\)) "
                       r"(exited with status (\d+)|killed by signal .*)$", re.M)


def child_failures(p):
    """Children of p that died other than by a clean exit, from its error
    log. (The workers' sanitizer reports cannot be written into the
    proxy's root-owned directory once they run as nobody, but a sanitizer
    error still ends the process with a non-zero status, seen here.)
    Pids a test killed on purpose (p.killed_pids) are not counted."""
    killed = getattr(p, "killed_pids", ())
    return [m.group(0) for m in CHILD_END.finditer(p.log_text())
            if m.group(3) != "0" and
            not any(f"(pid {pid}," in m.group(1) for pid in killed)]


def stop_checked(p):
    """Stop p (its sanitizer reports checked by ekp) and fail when one of
    its children crashed or exited non-zero at any time."""
    try:
        p.stop()
        bad = child_failures(p)
        assert not bad, f"{p.dir}: children ended badly: {bad}\n" + \
            tail(p.log_text(), 40)
    finally:
        p.cleanup()


@pytest.fixture(scope="module")
def kp(lab_session):
    """The module's proxy: two workers, the lab's proxy principal."""
    p = make_proxy(lab_session, workers=2)
    p.start()
    try:
        yield p
    finally:
        stop_checked(p)


@pytest.fixture(autouse=True)
def no_crash_in_kp(request):
    """After each test that used the module's proxy: no child restarted."""
    yield
    if "kp" in request.fixturenames:
        kp_ = request.getfixturevalue("kp")
        bad = child_failures(kp_)
        assert not bad, f"children of the module's proxy died: {bad}"


@pytest.fixture
def small_proxies(lab_session):
    """Start proxies of one's own (one worker); stopped (sanitizer logs
    checked) at teardown."""
    made = []

    def make(**kw):
        kw.setdefault("workers", 1)
        p = make_proxy(kw.pop("lab", lab_session), **kw)
        made.append(p)
        return p.start()

    yield make
    errors = []
    for p in made:
        try:
            stop_checked(p)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


def kdc_counts(lab, user):
    return (lab.count_kdc_requests("S4U2SELF", user, status="ISSUE"),
            lab.count_kdc_requests("S4U2PROXY", user, status="ISSUE"))


# ------------------------------------------------------------- identity --

def test_alice_and_bob_reach_exchange_as_themselves_never_as_the_proxy(lab, kp):
    for user in ("alice", "bob"):
        dev = Device(kp, user)
        try:
            for method in ("OPTIONS", "POST", "GET"):
                got = as_user(dev, method)
                assert got == principal(user), (
                    f"{method} as {user}: Exchange saw {got!r}, expected "
                    f"{principal(user)} (never the proxy {principal(PROXY)})")
        finally:
            dev.close()
        recs = wait_access(kp, lambda r, u=user: r["username"] ==
                           principal(u), f"3 lines for {user}", count=3)
        assert {(r["status"], r["reason"]) for r in recs} == {(200, "ok")}, recs
    # Apache authenticated the users, and never the proxy's principal
    users = {e["user"] for e in lab.apache_access() if e["user"]}
    assert {principal("alice"), principal("bob")} <= users
    assert principal(PROXY) not in users


# ------------------------------------------------------- KDC refusals ----

@pytest.mark.parametrize("user,name", [
    (DISABLED, "CLIENT_REVOKED"),
    (EXPIRED, "NAME_EXP"),
    (LOCKED, "CLIENT_REVOKED"),
    (UNKNOWN, "C_PRINCIPAL_UNKNOWN"),
    (SENSITIVE, "NOT_DELEGABLE"),
])
def test_kdc_refusing_the_user_is_403_with_the_kdc_error_name(lab, kp, user,
                                                              name):
    if user == SENSITIVE:
        # A refused S4U2Proxy (BADOPTION) is the user's fault only when this
        # proxy's S4U2Self tickets are forwardable for others: kcd knows
        # that from a recent success.
        dev = Device(kp, "alice")
        assert as_user(dev, "OPTIONS") == principal("alice")
        dev.close()
    dev = Device(kp, user)
    try:
        status, hdrs, body = dev.post()
    finally:
        dev.close()
    assert status == 403, (f"{user}: {status}, expected 403\n"
                           f"{tail(kp.log_text())}")
    # the device learns nothing internal (SPEC §5)
    assert body == b"" and "kdc" not in json.dumps(hdrs).lower(), (hdrs, body)
    rec = wait_access(kp, lambda r: r["username"] == principal(user),
                      f"a line for {user}")[-1]
    assert (rec["status"], rec["reason"]) == (403, "kdc_" + name), rec
    # the error log names the principal and the KDC's error
    assert re.search(rf"{re.escape(principal(user))}\b.*\b{name}\b",
                     kp.log_text()), tail(kp.log_text())


# ------------------------------------------------- KDC refusing the proxy --

@pytest.mark.parametrize("case,principal_,spn,name,fix", [
    # the SPN is not in the proxy's delegation list
    ("spn_not_allowed", PROXY, OTHER, "NOT_ALLOWED_TO_DELEGATE",
     r"msDS-AllowedToDelegateTo"),
    ("otherspn", PROXY_OTHERSPN, None, "NOT_ALLOWED_TO_DELEGATE",
     r"msDS-AllowedToDelegateTo"),
    # no protocol transition right: S4U2Self tickets are not forwardable
    ("nofwd", PROXY_NOFWD, None, "EVIDENCE_TKT_NOT_FORWARDABLE",
     r"ok_to_auth_as_delegate"),
])
def test_kdc_refusing_the_proxy_is_502_with_what_to_fix(lab, small_proxies,
                                                        case, principal_, spn,
                                                        name, fix):
    settings = {"backend": {"spn": spn}} if spn else {}
    p = small_proxies(principal_=principal_, settings=settings)
    dev = Device(p, "alice")
    try:
        status, hdrs, body = dev.post()
    finally:
        dev.close()
    assert status == 502, f"{case}: {status}, expected 502\n{tail(p.log_text())}"
    assert body == b"" and "kdc" not in json.dumps(hdrs).lower(), (hdrs, body)
    rec = wait_access(p, lambda r: r["username"] == principal("alice"),
                      "alice's line")[-1]
    assert (rec["status"], rec["reason"]) == (502, "kdc_" + name), rec
    # an error-level line naming the proxy, the user and what to change
    lines = [ln for ln in p.log_text().splitlines()
             if name in ln and re.search(fix, ln)]
    assert lines, f"no log line with {name} and {fix!r}:\n{tail(p.log_text())}"
    assert any("error" in ln.split()[:4] or " error " in ln for ln in lines), lines
    assert any(principal(principal_) in ln and principal("alice") in ln
               for ln in lines), lines


# ------------------------------------------------------------ KDC down ----

def test_kdc_down_is_503_with_retry_after_then_recovers(lab, kp, fresh_users):
    newcomer = fresh_users[0]
    alice = Device(kp, "alice")
    assert as_user(alice, "OPTIONS") == principal("alice")    # cached now
    with lab.kdc_down():
        dev = Device(kp, newcomer)
        try:
            status, hdrs, body = dev.post()
        finally:
            dev.close()
        assert status == 503, f"{status}, expected 503\n{tail(kp.log_text())}"
        assert hdrs.get("retry-after", "").isdigit(), hdrs
        rec = wait_access(kp, lambda r: r["username"] == principal(newcomer),
                          f"{newcomer}'s line")[-1]
        assert (rec["status"], rec["reason"]) == (503, "kdc_unreachable")
        # a user whose credential is cached keeps working meanwhile
        assert as_user(alice, "POST") == principal("alice")
    alice.close()
    # the KDC is back: nothing was remembered about the outage
    dev = Device(kp, newcomer)
    try:
        assert as_user(dev, "POST") == principal(newcomer)
    finally:
        dev.close()
    assert kdc_counts(lab, newcomer) == (1, 1)


class SilentKDC:
    """A 'KDC' on 127.0.0.1 that takes requests (UDP datagrams, TCP
    connections in the listen queue) and never answers. close() makes the
    client's pending exchange fail fast (ICMP port unreachable, reset)."""

    def __init__(self):
        for _ in range(50):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self.udp.setblocking(False)

    def datagrams(self):
        n = 0
        while True:
            try:
                self.udp.recv(65536)
                n += 1
            except BlockingIOError:
                return n

    def krb5_conf(self, lab, path):
        text = open(lab.krb5_conf).read()
        kdc = f"kdc = 127.0.0.1:{lab.kdc_port}"
        assert kdc in text, text
        with open(path, "w") as f:
            f.write(text.replace(kdc, f"kdc = 127.0.0.1:{self.port}"))
        return path

    def close(self):
        self.udp.close()
        self.tcp.close()


def test_silent_kdc_is_503_kdc_unreachable_after_kdc_timeout(lab, small_proxies,
                                                             tmp_path):
    kdc = SilentKDC()
    try:
        conf = kdc.krb5_conf(lab, str(tmp_path / "krb5.conf"))
        os.chmod(tmp_path, 0o755)
        p = small_proxies(settings={"kerberos": {"krb5_conf": conf,
                                                 "kdc_timeout": "1s"}})
        dev = Device(p, "alice")
        try:
            status, hdrs, body = dev.post()
        finally:
            dev.close()
        assert status == 503 and hdrs.get("retry-after", "").isdigit(), \
            (status, hdrs, tail(p.log_text()))
        assert kdc.datagrams() > 0, "the proxy never asked the silent KDC"
    finally:
        kdc.close()        # kcd's thread gives up now instead of in ~30 s
    rec = wait_access(p, lambda r: r["username"] == principal("alice"),
                      "alice's line")[-1]
    assert (rec["status"], rec["reason"]) == (503, "kdc_unreachable"), rec
    assert re.search(r"alice@EXAMPLE\.TEST.*(kdc_timeout|TIMEOUT)", p.log_text()), \
        tail(p.log_text())


def test_kcd_killed_is_503_meanwhile_and_a_new_kcd_serves(lab, small_proxies):
    # The parent restarts kcd and hands the workers new channels; requests
    # in flight or arriving meanwhile get 503, never a hang or a dead worker.
    p = small_proxies()
    worker = p.child("ekp-worker-0")["pid"]
    dev = Device(p, "alice")
    try:
        assert as_user(dev, "OPTIONS") == principal("alice")
        kcd = p.child("ekp-kcd")["pid"]
        p.killed_pids = [kcd]
        os.kill(kcd, 9)
        st, hdrs, _ = dev.post()
        if st == 503:               # before the new kcd was up
            assert hdrs.get("retry-after", "").isdigit(), hdrs
            rec = wait_access(p, lambda r: r["status"] == 503, "the 503")[-1]
            assert rec["reason"] == "kdc_unreachable", rec
        else:
            assert st == 200, st
        p.wait_for_log(r"kcd \(pid \d+, generation 1\) ready", count=2)
        p.wait_for_log(r"worker 0: new channel to kcd")
        dev.close()
        dev = Device(p, "alice")
        assert as_user(dev, "OPTIONS") == principal("alice")
    finally:
        dev.close()
    assert p.child("ekp-worker-0")["pid"] == worker, "the worker was restarted"
    assert p.child("ekp-kcd")["pid"] != kcd


# ------------------------------------------------------- single flight ----

def test_50_concurrent_first_requests_of_a_user_share_one_kdc_exchange(lab, kp):
    user, n = "carol", 50
    before = kdc_counts(lab, user)
    devs = [Device(kp, user) for _ in range(n)]
    for d in devs:
        d.connect()                  # handshakes first: requests at once
    go = threading.Barrier(n)

    def one(d):
        go.wait(timeout=60)
        try:
            status, hdrs, body = d.post()
            return status, seen_user("POST", status, hdrs, body)
        finally:
            d.close()

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, devs))
    assert results == [(200, principal(user))] * n, results
    after = kdc_counts(lab, user)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1), (
        f"S4U2Self, S4U2Proxy for {user} at the KDC: {before} -> {after}; "
        "expected exactly one of each for 50 concurrent first requests")


# ------------------------------------------------------- credential_ttl ----

def test_credentials_are_refreshed_after_credential_ttl(lab, small_proxies,
                                                       fresh_users):
    # credential_ttl bounds how long an impersonated credential is reused:
    # after it, a new S4U2Self, and a user disabled meanwhile is refused
    ttl = 2.0
    p = small_proxies(settings={"kerberos": {"credential_ttl": "2s"}})
    user = fresh_users[3]
    before = kdc_counts(lab, user)[0]
    dev = Device(p, user)
    try:
        t0 = time.monotonic()
        assert as_user(dev, "OPTIONS") == principal(user)
        assert as_user(dev, "POST") == principal(user)
        within = time.monotonic() - t0 < ttl
        first = kdc_counts(lab, user)[0] - before
        if within:
            # both inside the ttl: the second reused the credential
            assert first == 1, f"{first} S4U2Self for {user} within credential_ttl"
        time.sleep(ttl + 0.5)
        assert as_user(dev, "POST") == principal(user)
        assert kdc_counts(lab, user)[0] - before == first + 1, (
            "no new S4U2Self after credential_ttl")
        lab.kadmin_local(f"modprinc -allow_tix {user}")
        time.sleep(ttl + 0.5)
        st, _, body = dev.post()
        assert st == 403, (st, body, tail(p.log_text()))
    finally:
        dev.close()
    rec = wait_access(p, lambda r: r["status"] == 403, "the 403")[-1]
    assert rec["reason"] == "kdc_CLIENT_REVOKED", rec


# ------------------------------------------------- interleaved identities ----

def test_interleaved_requests_of_several_users_never_answered_as_another(
        lab, kp, fresh_users):
    # Four users, two keep-alive connections each, all at once: every answer
    # must be for the connection's own user (kcd's cache and token routing
    # by request id, the workers' per-user backend pools).
    fresh = [fresh_users[1], fresh_users[2]]
    users = ["alice", "bob"] + fresh
    per_conn, conns_per_user = 260, 2
    before = {u: kdc_counts(lab, u) for u in fresh}
    devs = [(u, i) for u in users for i in range(conns_per_user)]
    mixups, failures, done = [], [], []

    def drive(job):
        user, i = job
        dev = Device(kp, user)
        rnd = random.Random(f"{user}{i}")
        tag = f"ILV{user}{i}"
        try:
            for n in range(per_conn):
                if rnd.random() < 0.05:
                    method, path, body = "POST", target(user, "Sync", tag), WBXML
                else:
                    method, path, body = "OPTIONS", target(user, "Options", tag), None
                status, hdrs, data = dev.request(method, path, body)
                if status != 200:
                    failures.append((user, n, method, status))
                    continue
                got = seen_user(method, status, hdrs, data)
                if got != principal(user):
                    mixups.append((user, n, method, got))
                done.append(user)
        finally:
            dev.close()
        return dev.connections

    with concurrent.futures.ThreadPoolExecutor(len(devs)) as ex:
        reconnects = list(ex.map(drive, devs))
    total = len(users) * conns_per_user * per_conn
    assert not mixups, f"answers for another user: {mixups[:10]}"
    assert not failures, f"requests not answered 200: {failures[:10]}"
    assert len(done) == total
    assert reconnects == [1] * len(devs), (
        f"connections per device: {reconnects} (keep-alive expected)")
    # each fresh user cost one KDC exchange, whatever the load
    for u in fresh:
        after = kdc_counts(lab, u)
        assert (after[0] - before[u][0], after[1] - before[u][1]) == (1, 1), \
            (u, before[u], after)
    # Exchange's side: every backend connection carried one user only
    by_port = {}
    for e in lab.apache_access():
        if "DeviceId=ILV" in e["uri"]:
            by_port.setdefault(e["remote_port"], set()).add(e["user"])
    assert by_port and all(len(v) == 1 for v in by_port.values()), by_port


# ---------------------------------------------------- privilege separation --

def _workers(p):
    ws = [c for c in p.children() if c["comm"].startswith("ekp-worker")]
    assert ws, f"no workers among {p.children()}"
    return ws


def test_workers_are_unprivileged_and_never_hold_or_can_read_the_keytab(
        lab, kp, fresh_users):
    keytab = os.path.realpath(lab.keytab(PROXY))
    st = os.stat(keytab)
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600), (
        f"{keytab}: uid {st.st_uid} mode {oct(st.st_mode & 0o777)}, "
        "expected root 0600")
    workers = _workers(kp)
    for w in workers:
        status = open(f"/proc/{w['pid']}/status").read()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
        assert "0" not in uids and "0" not in gids, (w, uids, gids)
    # traffic, including a user kcd has never seen (a KDC exchange), while
    # the workers' descriptors are watched
    stop, seen, scans = threading.Event(), [], [0]

    def scan():
        while not stop.is_set():
            for w in workers:
                try:
                    fds = os.listdir(f"/proc/{w['pid']}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        link = os.readlink(f"/proc/{w['pid']}/fd/{fd}")
                    except OSError:
                        continue
                    if link == keytab or "keytab" in link:
                        seen.append((w["comm"], fd, link))
            scans[0] += 1
            time.sleep(0.005)

    watcher = threading.Thread(target=scan)
    watcher.start()
    try:
        for user in ("alice", "bob", "carol", fresh_users[0]):
            dev = Device(kp, user)
            try:
                for _ in range(15):
                    assert as_user(dev, "OPTIONS") == principal(user)
            finally:
                dev.close()
    finally:
        stop.set()
        watcher.join()
    assert scans[0] > 10, "the descriptor scan hardly ran"
    assert not seen, f"a worker had the keytab open: {seen}"
    # and a worker could not open it anyway: try as the workers' uid/gid
    w = workers[0]
    p = subprocess.run(["/usr/bin/python3", "-I", "-c",
                        f"open({keytab!r}, 'rb').read(1)"],
                       user=w["uid"], group=w["gid"], extra_groups=[],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=30)
    assert p.returncode != 0 and "PermissionError" in p.stderr, (
        f"uid {w['uid']} could read {keytab}: rc {p.returncode} {p.stderr}")


# ----------------------------------------------------- channel bindings ----

@pytest.fixture(scope="module")
def cb_lab():
    """A lab whose Exchange (cb_backend.py) requires channel bindings, like
    Exchange with Extended Protection on."""
    world = Lab(require_cb=True)
    world.start()
    try:
        yield world
    finally:
        world.stop()


@pytest.mark.parametrize("mode,status", [("auto", 200), ("on", 200),
                                         ("off", 502)])
def test_channel_bindings_satisfy_extended_protection(cb_lab, small_proxies,
                                                      mode, status):
    p = small_proxies(lab=cb_lab, settings={
        "kerberos": {"channel_bindings": mode},
        "backend": {"servers": f"exchange.example.test:{cb_lab.cb_backend_port}",
                    "connect_to": f"127.0.0.1:{cb_lab.cb_backend_port}"}})
    n0 = len(cb_lab.cb_backend_requests())
    dev = Device(p, "alice")
    try:
        got = []
        for method in ("GET", "POST"):      # bodyless (retried) and with body
            st, hdrs, body = (dev.get() if method == "GET" else dev.post())
            got.append(st)
            if st == 200:
                assert json.loads(body)["remote_user"] == principal("alice")
    finally:
        dev.close()
    assert got == [status, status], (mode, got, tail(p.log_text()))
    logged = [e["cb"] for e in cb_lab.cb_backend_requests()[n0:]]
    if status == 200:
        assert logged == ["bound", "bound"], logged
    else:
        # no bindings: refused; the bodyless request once more with a fresh
        # credential, then 502 backend_auth
        assert logged == ["cb_missing"] * 3, logged
        recs = wait_access(p, lambda r: r["status"] == 502, "two 502", 2)
        assert {r["reason"] for r in recs} == {"backend_auth"}, recs


# ------------------------------------------------ mutual authentication ----

class FakeExchange:
    """An HTTPS 'Exchange' with the lab's certificate that accepts any
    Authorization and answers 200 with a WWW-Authenticate header of our
    choosing: what a man in the middle without Exchange's key could send."""

    def __init__(self, lab, www_authenticate):
        import http.server
        import socketserver
        value = www_authenticate

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                body = json.dumps({"remote_user": "whoever@" + REALM}).encode()
                self.send_response(200)
                if value is not None:
                    self.send_header("WWW-Authenticate", value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST = do_OPTIONS = do_any

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.srv = S(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(lab.backend_cert, lab.backend_key)
        self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever)
        self.thread.start()

    def settings(self):
        return {"backend": {"servers": f"exchange.example.test:{self.port}",
                            "connect_to": f"127.0.0.1:{self.port}"}}

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join()


def test_backend_mutual_authentication_token_is_verified_and_stripped(lab, kp):
    dev = Device(kp, "alice")
    try:
        for method in ("GET", "OPTIONS"):
            status, hdrs, body = (dev.get() if method == "GET" else
                                  dev.options())
            assert status == 200, (status, body)
            assert seen_user(method, status, hdrs, body) == principal("alice")
            # Apache (mod_auth_gssapi) answers with WWW-Authenticate:
            # Negotiate <AP-REP> and Persistent-Auth: never for the device
            assert "www-authenticate" not in hdrs, hdrs
            assert "persistent-auth" not in hdrs, hdrs
    finally:
        dev.close()
    # kcd verified Apache's reply token for each of them
    wait_until(lambda: len(re.findall(
        r"alice@EXAMPLE\.TEST: backend .* mutual authentication verified",
        kp.log_text())) >= 2, 10, "two 'mutual authentication verified' lines")


@pytest.mark.parametrize("header,status,reason", [
    (None, 200, "ok"),                      # no token: nothing to verify
    ("Negotiate " + base64.b64encode(b"\x6f\x0bnot-an-ap-rep").decode(),
     502, "backend_mutual_auth"),           # a token that does not verify
    ("Negotiate !!!", 502, "backend_mutual_auth"),   # not even base64
    # a SPNEGO NegTokenResp cut short
    ("Negotiate oYGBMH+gAwoBAKELBgkqhkiG9xIBAgKiawRp", 502, "backend_mutual_auth"),
])
def test_backend_mutual_token_that_does_not_verify_is_refused(
        lab, small_proxies, header, status, reason):
    fake = FakeExchange(lab, header)
    try:
        p = small_proxies(settings=fake.settings())
        dev = Device(p, "alice")
        try:
            st, hdrs, body = dev.get()
        finally:
            dev.close()
    finally:
        fake.stop()
    assert st == status, (st, body, tail(p.log_text()))
    assert "www-authenticate" not in hdrs
    if status != 200:
        assert body == b""
    rec = wait_access(p, lambda r: r["username"] == principal("alice"),
                      "alice's line")[-1]
    assert (rec["status"], rec["reason"]) == (status, reason), rec


# ------------------------------------------------------ stale tickets ----
# (last in the module: rotating Exchange's key makes every ticket cached by
# the module's proxy stale)

def apache_saw(lab, tag, count):
    """(method, status) of Apache's requests with DeviceId=tag, once there
    are count of them (Apache logs a request after answering it)."""
    def seen():
        got = [(e["method"], e["status"]) for e in lab.apache_access()
               if f"DeviceId={tag}" in e["uri"]]
        return got if len(got) >= count else None
    return wait_until(seen, 10, f"{count} requests with DeviceId={tag} in "
                      "Apache's access log")


def test_backend_401_for_a_stale_ticket_is_retried_once_without_a_body(
        lab, small_proxies):
    p = small_proxies()
    dev = Device(p, "alice")
    tag = "STALE1"
    try:
        assert as_user(dev, "OPTIONS") == principal("alice")   # ticket cached
        before = kdc_counts(lab, "alice")
        lab.rotate_exchange_key()
        # bodyless: Exchange's 401, then once more with a fresh credential
        st, hdrs, body = dev.get(target("alice", "Sync", tag))
        assert st == 200, (st, body, tail(p.log_text()))
        assert json.loads(body)["remote_user"] == principal("alice")
        after = kdc_counts(lab, "alice")
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1), (
            "the retry must ask the KDC anew (KCD_F_REFRESH)", before, after)
        assert apache_saw(lab, tag, 2) == [("GET", 401), ("GET", 200)]
        assert re.search(r"alice@EXAMPLE\.TEST: backend \S+ answered 401; "
                         r"retrying once", p.log_text())
        # with a body: never replayed, the device gets 502 backend_auth
        lab.rotate_exchange_key()
        tag = "STALE2"
        st, hdrs, body = dev.request("POST", target("alice", "Sync", tag),
                                     WBXML)
        assert st == 502, (st, body)
        assert apache_saw(lab, tag, 1) == [("POST", 401)]
    finally:
        dev.close()
    recs = wait_access(p, lambda r: r["username"] == principal("alice"),
                       "three lines", 3)
    assert [(r["status"], r["reason"]) for r in recs] == \
        [(200, "ok"), (200, "ok"), (502, "backend_auth")], recs


# ------------------------------------------------------- tokens asked ahead --

def ahead_counts(p):
    """eas_kcd_proxy_tokens_ahead_total by result, and kcd's tokens made."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/metrics",
                                timeout=10) as r:
        text = r.read().decode()

    def val(name):
        m = re.search(r"^" + re.escape(name) + r" (\d+)$", text, re.M)
        assert m, f"{name} not in /metrics"
        return int(m.group(1))
    a = {k: val(f'eas_kcd_proxy_tokens_ahead_total{{result="{k}"}}')
         for k in ("ready", "waited", "unused")}
    a["made"] = (val('eas_kcd_proxy_kcd_tokens_total{route="fast"}') +
                 val('eas_kcd_proxy_kcd_tokens_total{route="gss"}'))
    return a


def test_the_next_token_is_asked_ahead_on_a_kept_alive_connection(
        lab, small_proxies):
    p = small_proxies()
    zero = {"ready": 0, "waited": 0, "unused": 0}
    # one request per connection (a handshake-bound device): nothing ahead
    for _ in range(2):
        dev = Device(p, "alice")
        assert as_user(dev) == principal("alice")
        dev.close()
    a = ahead_counts(p)
    assert {k: a[k] for k in zero} == zero and a["made"] == 2, a
    # six on one connection: the 2nd asks for the 3rd's token, and so on;
    # Apache takes each (a replayed authenticator would be refused)
    dev = Device(p, "alice")
    try:
        for _ in range(6):
            assert as_user(dev) == principal("alice")
        a = ahead_counts(p)
        assert a["ready"] + a["waited"] == 4, a
        assert a["made"] == 2 + 6 + 1, a        # the 7th's, not used yet
        # an idle connection does not keep it: dropped within a second or
        # two of being made (AHEAD_MAX_MS, swept every second)
        wait_until(lambda: ahead_counts(p)["unused"] == 1, 10,
                   "the token asked ahead dropped while the connection idles")
        # the 7th asks for itself, and ahead for an 8th
        assert as_user(dev) == principal("alice")
        b = ahead_counts(p)
        assert b["ready"] + b["waited"] == 4 and b["made"] == a["made"] + 2, (a, b)
        assert dev.connections == 1
    finally:
        dev.close()
    # the connection ends: the token asked for an 8th request is dropped
    wait_until(lambda: ahead_counts(p)["unused"] == 2, 10,
               "the unused token asked ahead dropped at close")
    # a Ping parks for up to an hour: nothing is asked during it
    a = ahead_counts(p)
    dev = Device(p, "alice")
    try:
        assert as_user(dev) == principal("alice")
        st, _, body = dev.request("POST", target("alice", "Ping"), WBXML)
        assert st == 200, (st, body)
        b = ahead_counts(p)
        assert b["ready"] + b["waited"] == a["ready"] + a["waited"], (a, b)
        assert b["made"] == a["made"] + 2, (a, b)
        # the request after it asks for itself, and ahead for the next
        assert as_user(dev) == principal("alice")
        b = ahead_counts(p)
        assert b["ready"] + b["waited"] == a["ready"] + a["waited"], (a, b)
        assert b["made"] == a["made"] + 4, (a, b)
    finally:
        dev.close()
    wait_until(lambda: ahead_counts(p)["unused"] == 3, 10,
               "the token asked ahead after the Ping dropped")
    recs = wait_access(p, lambda r: r["username"] == principal("alice"),
                       "every request's line", 2 + 7 + 3)
    assert all(r["status"] == 200 and r["reason"] == "ok" for r in recs), recs
