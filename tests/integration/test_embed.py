"""The embedding library (SPEC §10, issue 9) and the built-in device policy,
end to end against the lab (MIT KDC with KCD, Apache + mod_auth_gssapi as
Exchange):

  * libeaskcdproxy.so exports exactly the eas_kcd_proxy_* functions of
    include/eas_kcd_proxy.h, under its soname;
  * examples/mdm-gateway (sanitizer build) serves devices through the
    library: a listed DeviceId reaches Exchange as its user, an unlisted one
    gets 403 device_denied before Exchange or the KDC are asked, the
    authorize hook may answer later (kcd as a process and as a thread), the
    program's own log sink gets every record, SIGHUP reloads the list and
    the proxy (a new generation);
  * the identity hook (tests/tools/embed_hooks.c) replaces a failed
    mapping (a certificate without UPN reaches Exchange as the user the
    hook names, through KCD for that user), refuses a good one (403
    identity_unmapped), or keeps ours;
  * the daemon's [devices] deny_file / allow_file, read again on SIGHUP; a
    list that does not parse keeps the running generation;
  * `make install PREFIX=DIR` installs binary, library, header, pkg-config
    file, man pages, example config and systemd unit, and the example
    compiled against the installed header with `pkg-config --cflags --libs
    eas-kcd-proxy` serves the lab the same way.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

import certs
from ekp import ProxyError, access_records, lab_proxy, socket_inodes, wait_until
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

SRCDIR = os.environ.get("EKP_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("EKP_BUILD") or os.path.join(SRCDIR, "build")
HEADER = os.path.join(SRCDIR, "include", "eas_kcd_proxy.h")
EAS = "/Microsoft-Server-ActiveSync"
GOOD, BAD, OTHER = "GOODPHONE1", "BADPHONE2", "OTHERPHONE3"
WBXML = bytes([0x03, 0x01, 0x6A, 0x00, 0x00, 0x07, 0x56, 0x52, 0x03, 0x30,
               0x00, 0x01, 0x01])          # FolderSync, SyncKey 0


def built(*parts):
    """A build output; missing means the build is broken: fail, never skip."""
    path = os.path.join(BUILD, *parts)
    if not os.path.exists(path):
        raise ProxyError(f"{path} does not exist: run `make all san` "
                         f"(BUILD={BUILD})")
    return path


# ------------------------------------------------------------------ devices --

class Phone:
    """One device with user's certificate; one request per connection."""

    def __init__(self, proxy, user="alice", cert=None):
        self.proxy = proxy
        self.user = user
        cert = cert or proxy.device_cert(user)
        self.ctx = ssl.create_default_context(cafile=proxy.server_ca.cert)
        self.ctx.check_hostname = False
        self.ctx.load_cert_chain(cert.cert, cert.key)

    def request(self, method, device=None, cmd="FolderSync"):
        """-> (status, {header: value}, body). No device: OPTIONS-like,
        no query at all."""
        path = EAS if device is None else (
            f"{EAS}?Cmd={cmd}&User={self.user}&DeviceId={device}&DeviceType=iPhone")
        conn = http.client.HTTPSConnection("proxy.example.test", self.proxy.port,
                                           timeout=60, context=self.ctx)
        conn.sock = self.ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", self.proxy.port), 60),
            server_hostname="proxy.example.test")
        try:
            body = WBXML if method == "POST" else None
            hdrs = {"MS-ASProtocolVersion": "14.1", "User-Agent": "embed-test/1"}
            if body:
                hdrs["Content-Type"] = "application/vnd.ms-sync.wbxml"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def sync(self, device):
        return self.request("POST", device)


def exchange_user(status, hdrs, body):
    """Who the lab's Exchange saw (its JSON echo, or OPTIONS' header)."""
    if "x-lab-remote-user" in hdrs:
        return hdrs["x-lab-remote-user"]
    try:
        return json.loads(body).get("remote_user")
    except ValueError:
        return None


def records(p, pred, count=1):
    return wait_until(lambda: (lambda r: r if len(r) >= count else None)(
        [r for r in access_records(p) if pred(r)]), 15,
        f"{count} matching access-log records in {p.access_log}")


def tcp_inodes():
    """Inodes of every TCP socket of this host (listening or connected)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            out.update(line.split()[9] for line in f)
    return out


def reached_exchange(lab, device):
    return [e for e in lab.apache_access() if f"DeviceId={device}" in e["uri"]]


# ------------------------------------------------------------------ the .so --

def exported(so):
    out = subprocess.run(["nm", "-D", "--defined-only", so], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    syms = set()
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[1] == "A" and "@" not in parts[2]:
            continue                # the version node itself (EASKCDPROXY_0)
        syms.add(parts[-1].split("@")[0])
    return syms


def declared_functions():
    text = open(HEADER).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return set(re.findall(r"\b(eas_kcd_proxy_\w+)\s*\(", text)) - set(
        re.findall(r"typedef\s+\w+\s+(eas_kcd_proxy_\w+)\s*\(", text))


def test_the_shared_library_exports_only_the_public_api():
    so = built("libeaskcdproxy.so")
    syms = exported(so)
    foreign = sorted(s for s in syms if not s.startswith("eas_kcd_proxy_"))
    assert not foreign, f"{so} exports symbols outside the API: {foreign[:20]}"
    missing = sorted(declared_functions() - syms)
    assert not missing, f"declared in eas_kcd_proxy.h but not exported: {missing}"
    extra = sorted(syms - declared_functions())
    assert not extra, f"exported but not declared in eas_kcd_proxy.h: {extra}"
    dyn = subprocess.run(["objdump", "-p", so], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    abi = re.search(r"#define EAS_KCD_PROXY_ABI_VERSION\s+(\d+)", open(HEADER).read())
    assert re.search(rf"SONAME\s+libeaskcdproxy\.so\.{abi.group(1)}\b", dyn), dyn


# --------------------------------------------------------- the example gateway --

def start_gateway(lab, binary, args=(), allow=(GOOD,), settings=None):
    """mdm-gateway in front of the lab: a lab_proxy's directory, config and
    certificates, run by the example instead of the daemon."""
    p = lab_proxy(lab, workers=1, binary=binary, settings=settings)
    p.allow = p.path("allowed-devices.txt")
    p.mdm_log = p.path("mdm.log")
    with open(p.allow, "w") as f:
        f.write("# devices the MDM says are compliant\n" + "".join(d + "\n" for d in allow))
    p.start(args=["-a", p.allow, "-l", p.mdm_log] + list(args), wait_ready=False)
    p.wait_for_log(r"embed: generation 1: kcd ready", 30)
    return p


def mdm_lines(p):
    try:
        return open(p.mdm_log).read().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def gateways():
    made = []
    yield made
    problems = []
    for p in made:
        try:
            p.stop()
        except ProxyError as e:
            problems.append(f"{p.dir}: {e}")
        finally:
            if not os.environ.get("EKP_KEEP"):
                shutil.rmtree(p.dir, ignore_errors=True)
    if problems:
        pytest.fail("at teardown:\n" + "\n".join(problems))


def check_allow_and_deny(lab, p):
    phone = Phone(p)
    status, hdrs, body = phone.request("OPTIONS")
    assert status == 200, f"OPTIONS without a DeviceId: {status}\n{p.log_text()[-3000:]}"
    status, hdrs, body = phone.sync(GOOD)
    assert status == 200, f"allowed device: {status} {body[:200]!r}\n{p.log_text()[-3000:]}"
    assert exchange_user(status, hdrs, body) == "alice@EXAMPLE.TEST"
    status, hdrs, body = phone.sync(BAD)
    assert status == 403, f"device not in the allow list: {status}"
    assert body == b"", "a refusal carries no body"
    rec = records(p, lambda r: r.get("device_id") == BAD)[0]
    assert (rec["status"], rec["reason"]) == (403, "device_denied"), rec
    assert rec["backend"] in (None, "-", ""), f"{BAD} was sent to a backend: {rec}"
    assert not reached_exchange(lab, BAD), "a denied device reached Exchange"
    p.wait_for_log(rf"policy: 127\.0\.0\.1 alice@EXAMPLE\.TEST: DeviceId {BAD} "
                   r"\(FolderSync\) denied by the authorize hook")
    # the program's own log sink saw both, with the library's reason tokens
    wait_until(lambda: any(f"device={BAD}" in ln and "status=403 reason=device_denied" in ln
                           for ln in mdm_lines(p)) and
               any(f"device={GOOD}" in ln and "status=200 reason=ok" in ln
                   for ln in mdm_lines(p)), 10, "both records in the gateway's log sink")
    return phone


def test_gateway_allows_listed_devices_and_denies_the_others(lab, gateways):
    p = start_gateway(lab, built("san", "examples", "mdm-gateway"))
    gateways.append(p)
    check_allow_and_deny(lab, p)
    # kcd is a helper process of the gateway (the default), holding only
    # its own channel: no listening socket, no device connection
    kcd = wait_until(lambda: [c for c in p.children() if c["comm"] == "ekp-kcd"], 10,
                     "the gateway's kcd helper process")
    assert len(kcd) == 1, kcd
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{kcd[0]['pid']}/fd"))
    tcp = {ino for ino in socket_inodes(kcd[0]["pid"])} & tcp_inodes()
    assert not tcp, f"kcd holds TCP sockets of the gateway: fds {fds}"
    # metrics read through the API (SIGUSR1 prints them)
    p.signal(signal.SIGUSR1)
    m = re.search(r"mdm-gateway: generation 1, (\d+) requests, (\d+) ok, (\d+) denied",
                  wait_until(lambda: re.search(r"mdm-gateway: generation 1, .*denied",
                                               p.console_text()) and p.console_text(),
                             10, "the gateway's metrics line"))
    assert int(m.group(3)) >= 1 and int(m.group(2)) >= 2, m.group(0)


def test_gateway_hook_answering_later_with_kcd_as_a_thread(lab, gateways):
    p = start_gateway(lab, built("san", "examples", "mdm-gateway"), args=["-t", "-d", "300"])
    gateways.append(p)
    check_allow_and_deny(lab, p)
    p.wait_for_log(r"policy: 127\.0\.0\.1: the authorize hook answered after it returned",
                   count=3)
    assert not [c for c in p.children() if c["comm"] == "ekp-kcd"], \
        "kcd runs as a thread: no helper process"


def test_gateway_sighup_reloads_the_list_and_the_proxy(lab, gateways):
    p = start_gateway(lab, built("san", "examples", "mdm-gateway"))
    gateways.append(p)
    phone = Phone(p)
    assert phone.sync(OTHER)[0] == 403
    with open(p.allow, "a") as f:
        f.write(OTHER + "\n")
    p.signal(signal.SIGHUP)
    p.wait_for_log(r"embed: generation 2 serving", 30)
    p.wait_for_log(r"embed: generation 1 finished", 30)
    status, hdrs, body = phone.sync(OTHER)
    assert status == 200, f"{OTHER} after the reload: {status}\n{p.log_text()[-2000:]}"
    assert exchange_user(status, hdrs, body) == "alice@EXAMPLE.TEST"


# --------------------------------------------------------- the identity hook --

def start_hooks(lab, mode, args=()):
    p = lab_proxy(lab, workers=1, binary=built("san", "tools", "embed_hooks"))
    p.start(args=["-i", mode] + list(args), wait_ready=False)
    p.wait_for_log(r"embed: generation 1: kcd ready", 30)
    return p


def test_identity_hook_replaces_a_failed_mapping_later(lab, gateways):
    p = start_hooks(lab, "replace=bob@example.test", ["-d", "200", "-t"])
    gateways.append(p)
    phone = Phone(p, user="bob", cert=certs.no_upn(p.path("pki"), p.device_ca))
    status, hdrs, body = phone.sync(GOOD)
    assert status == 200, f"{status} {body[:200]!r}\n{p.log_text()[-3000:]}"
    assert exchange_user(status, hdrs, body) == "bob@EXAMPLE.TEST", \
        "Exchange must see the user the hook named, through KCD for that user"
    rec = records(p, lambda r: r.get("device_id") == GOOD)[0]
    assert (rec["status"], rec["username"]) == (200, "bob@EXAMPLE.TEST"), rec
    assert re.search(r"identity: principal - detail no_upn der \d+ bytes -> replace",
                     p.console_text()), p.console_text()
    p.wait_for_log(r"policy: 127\.0\.0\.1: the identity hook answered after it returned")


def test_identity_hook_refuses_or_keeps(lab, gateways):
    p = start_hooks(lab, "refuse")
    gateways.append(p)
    status, _, _ = Phone(p).sync(GOOD)
    assert status == 403
    rec = records(p, lambda r: r.get("device_id") == GOOD)[0]
    assert rec["reason"] == "identity_unmapped" and rec["username"] in (None, "-"), rec
    p.wait_for_log(r"policy: 127\.0\.0\.1: the identity hook refused the certificate "
                   r"\(alice@EXAMPLE\.TEST\)")

    q = start_hooks(lab, "keep")
    gateways.append(q)
    status, hdrs, body = Phone(q).sync(OTHER)
    assert status == 200 and exchange_user(status, hdrs, body) == "alice@EXAMPLE.TEST"
    nu = Phone(q, user="bob", cert=certs.no_upn(q.path("pki"), q.device_ca))
    assert nu.sync(OTHER)[0] == 403, "our failed mapping stands when the hook keeps it"


# ----------------------------------------------------------- the metrics struct --

# eas_kcd_proxy_metrics field -> its sample in /metrics (the fields since the
# first version of the struct, and the first version's kcd/KDC ones)
STRUCT_SAMPLES = {
    "connections_accepted": "eas_kcd_proxy_connections_accepted_total",
    "kdc_requests": "eas_kcd_proxy_kdc_requests_total",
    "kdc_errors": "eas_kcd_proxy_kdc_errors_total",
    "kcd_cache_hits": 'eas_kcd_proxy_kcd_cache_total{result="hit"}',
    "kcd_cache_misses": 'eas_kcd_proxy_kcd_cache_total{result="miss"}',
    "kcd_cache_negative_hits": 'eas_kcd_proxy_kcd_cache_total{result="negative_hit"}',
    "kcd_tokens_fast": 'eas_kcd_proxy_kcd_tokens_total{route="fast"}',
    "kcd_tokens_gss": 'eas_kcd_proxy_kcd_tokens_total{route="gss"}',
    "kcd_fast_fallbacks": "eas_kcd_proxy_kcd_fast_fallbacks_total",
    "kcd_tgt_acquisitions_ok": 'eas_kcd_proxy_kcd_tgt_acquisitions_total{result="ok"}',
    "kcd_tgt_acquisitions_errors": 'eas_kcd_proxy_kcd_tgt_acquisitions_total{result="error"}',
    "kcd_tgt_valid": "eas_kcd_proxy_kcd_tgt_valid",
    "kcd_tgt_end": "eas_kcd_proxy_kcd_tgt_end_seconds",
    "tokens_ahead_ready": 'eas_kcd_proxy_tokens_ahead_total{result="ready"}',
    "tokens_ahead_waited": 'eas_kcd_proxy_tokens_ahead_total{result="waited"}',
    "tokens_ahead_unused": 'eas_kcd_proxy_tokens_ahead_total{result="unused"}',
}


def metrics_text(p):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/metrics", timeout=10) as r:
        return r.read().decode()


def text_sample(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"no {name} in /metrics:\n{text}"
    return int(m.group(1))


def struct_metrics(p, before):
    """SIGUSR1 to embed_hooks: its next 'metrics:' line (after `before`
    such lines) as {field: int}."""
    p.signal(signal.SIGUSR1)
    lines = wait_until(lambda: (lambda ls: ls if len(ls) > before else None)(
        re.findall(r"^metrics: (.*)$", p.console_text(), re.M)), 10,
        "embed_hooks' metrics line")
    return {k: int(v) for k, v in (kv.split("=") for kv in lines[before].split())}


@pytest.mark.parametrize("mode", ["kcd_process", "kcd_thread"])
def test_metrics_struct_has_the_kcd_counters_of_the_metrics_text(lab, gateways, mode):
    """eas_kcd_proxy_metrics_get's fields since the first version (tokens by
    route, fast fallbacks, negative hits, the TGT's acquisitions and gauges)
    hold what /metrics shows, with kcd as a process and as a thread."""
    p = start_hooks(lab, "keep", ["-t"] if mode == "kcd_thread" else [])
    gateways.append(p)
    wait_until(lambda: text_sample(metrics_text(p), "eas_kcd_proxy_kcd_tgt_valid") == 1,
               60, "kcd to hold the proxy's TGT")
    alice = Phone(p)
    for _ in range(3):
        status, hdrs, body = alice.sync(GOOD)
        assert status == 200, f"{status} {body[:200]!r}\n{p.log_text()[-3000:]}"
    # a user the KDC refuses, twice: the second refusal is a negative hit
    disabled = Phone(p, user="disabled")
    assert [disabled.sync(GOOD)[0] for _ in range(2)] == [403, 403]
    records(p, lambda r: r.get("device_id") == GOOD, count=5)

    # nothing moves now: two reads around the text agree, and match it
    seen = 0
    for _ in range(20):
        a = struct_metrics(p, seen)
        text = metrics_text(p)
        b = struct_metrics(p, seen + 1)
        seen += 2
        if a == b:
            break
    assert a == b, (a, b)
    for field, sample in STRUCT_SAMPLES.items():
        assert a[field] == text_sample(text, sample), (field, a[field], sample, text)
    assert a["kcd_tokens_gss"] >= 1 and a["kcd_tokens_fast"] >= 1, a
    assert a["kcd_cache_negative_hits"] == 1, a
    assert a["kcd_tgt_acquisitions_ok"] >= 1 and a["kcd_tgt_valid"] == 1, a
    assert a["kcd_tgt_end"] > time.time(), a
    assert a["requests"] == 5 and a["requests_ok"] == 3, a
    # a Phone connects anew for each request: no token is asked ahead
    assert a["connections_accepted"] == 5, a
    assert (a["tokens_ahead_ready"], a["tokens_ahead_waited"],
            a["tokens_ahead_unused"]) == (0, 0, 0), a


# ------------------------------------------------------- the daemon's lists --

def test_daemon_device_lists_and_their_reload(lab):
    p = lab_proxy(lab, workers=1)
    deny, allow = p.path("deny.txt"), p.path("allow.txt")
    with open(deny, "w") as f:
        f.write(f"# lost\n{BAD}\n")
    with open(allow, "w") as f:
        f.write(f"{GOOD}\n{BAD}\n{OTHER.lower()}\n")
    p.write_config(settings={"devices": {"deny_file": deny, "allow_file": allow}})
    p.start()
    try:
        phone = Phone(p)
        assert phone.request("OPTIONS")[0] == 200, "no DeviceId, no command: not judged"
        status, hdrs, body = phone.sync(GOOD)
        assert status == 200 and exchange_user(status, hdrs, body) == "alice@EXAMPLE.TEST"
        assert phone.sync(OTHER)[0] == 200, "allow_file compares case-insensitively"
        assert phone.sync(BAD)[0] == 403, "deny_file wins over allow_file"
        assert phone.sync("STRANGER9")[0] == 403, "not in allow_file"
        p.wait_for_log(rf"DeviceId {BAD} is listed in \[devices\] deny_file {re.escape(deny)}")
        p.wait_for_log(r"DeviceId STRANGER9 is not in \[devices\] allow_file")
        recs = records(p, lambda r: r.get("reason") == "device_denied", count=2)
        assert {r["device_id"] for r in recs} == {BAD, "STRANGER9"}, recs
        assert not reached_exchange(lab, BAD) and not reached_exchange(lab, "STRANGER9")

        # SIGHUP reads the lists again
        with open(deny, "a") as f:
            f.write(GOOD + "\n")
        p.signal(signal.SIGHUP)
        p.wait_ready(2, timeout=30)
        wait_until(lambda: phone.sync(GOOD)[0] == 403, 15,
                   f"{GOOD} refused once it is in deny_file")

        # a list that does not parse keeps generation 2 serving
        with open(deny, "a") as f:
            f.write("two words\n")
        p.signal(signal.SIGHUP)
        p.wait_for_log(rf"{re.escape(deny)}:4: byte 0x20 in a DeviceId", timeout=30)
        p.wait_for_log(r"reload failed: .* the previous generation keeps serving", timeout=30)
        assert phone.sync(GOOD)[0] == 403
        assert phone.sync(OTHER)[0] == 200
    finally:
        p.stop()
        shutil.rmtree(p.dir, ignore_errors=True)


# -------------------------------------------------------------- make install --

def test_make_install_then_build_the_example_with_pkg_config(lab, gateways):
    prefix = tempfile.mkdtemp(prefix="ekp-install-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ASAN_", "UBSAN_"))}
        r = subprocess.run(["make", "-C", SRCDIR, f"BUILD={BUILD}", "install",
                            f"PREFIX={prefix}"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=900)
        assert r.returncode == 0, f"make install failed:\n{r.stdout[-4000:]}"
        abi = re.search(r"#define EAS_KCD_PROXY_ABI_VERSION\s+(\d+)",
                        open(HEADER).read()).group(1)
        for rel in ("sbin/eas-kcd-proxy", "lib/libeaskcdproxy.a", f"lib/libeaskcdproxy.so.{abi}",
                    "lib/libeaskcdproxy.so", "include/eas_kcd_proxy.h",
                    "lib/pkgconfig/eas-kcd-proxy.pc",
                    "share/doc/eas-kcd-proxy/eas-kcd-proxy.conf.example",
                    "share/doc/eas-kcd-proxy/examples/mdm-gateway.c",
                    "lib/systemd/system/eas-kcd-proxy.service"):
            assert os.path.exists(os.path.join(prefix, rel)), f"{rel} not installed"
        for man in os.listdir(os.path.join(SRCDIR, "docs")):
            m = re.fullmatch(r".+\.([1-8])", man)
            if m:
                assert os.path.exists(os.path.join(prefix, "share", "man", "man" + m.group(1),
                                                   man)), f"man page {man} not installed"
        unit = open(os.path.join(prefix, "lib/systemd/system/eas-kcd-proxy.service")).read()
        assert f"ExecStart={prefix}/sbin/eas-kcd-proxy " in unit, unit
        out = subprocess.run([os.path.join(prefix, "sbin/eas-kcd-proxy"), "-V"],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
        assert out.startswith("eas-kcd-proxy "), out

        # a third party: only the installed header, library and .pc file
        penv = dict(env, PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"))
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "eas-kcd-proxy"],
                               env=penv, stdout=subprocess.PIPE, text=True, check=True).stdout
        assert f"-I{prefix}/include" in flags and "-leaskcdproxy" in flags, flags
        work = tempfile.mkdtemp(prefix="ekp-thirdparty-", dir=prefix)
        src = os.path.join(work, "mdm-gateway.c")
        shutil.copyfile(os.path.join(prefix, "share/doc/eas-kcd-proxy/examples/mdm-gateway.c"),
                        src)
        gw = os.path.join(work, "mdm-gateway")
        r = subprocess.run(f"cc -std=c11 -Wall -Werror -o {gw} {src} "
                           f"$(pkg-config --cflags --libs eas-kcd-proxy)", shell=True,
                           env=penv, cwd=work, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        assert r.returncode == 0, f"compiling against the installed library:\n{r.stdout}"
        ldd = subprocess.run(["ldd", gw], env=dict(penv, LD_LIBRARY_PATH=f"{prefix}/lib"),
                             stdout=subprocess.PIPE, text=True).stdout
        assert f"{prefix}/lib/libeaskcdproxy.so.{abi}" in ldd, ldd

        os.environ["LD_LIBRARY_PATH"] = os.path.join(prefix, "lib")
        try:
            p = start_gateway(lab, gw)
        finally:
            del os.environ["LD_LIBRARY_PATH"]
        gateways.append(p)
        check_allow_and_deny(lab, p)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
