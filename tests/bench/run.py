#!/usr/bin/python3
"""make bench: eas-kcd-proxy side by side with nginx (SPEC §9).

Builds a world on 127.0.0.1 in one temp directory, then measures each mode
of build/eas-loadgen against both fronts, alternating A/B runs:

* certificates: device CA, server CA, the fronts' certificate
  (proxy.example.test), and a fleet of --fleet device certificates
  (tests/certs.py, one key each), NAME.pem + NAME.key, UPN NAME@EXAMPLE.TEST;
* the lab KDC (tests/integration/lab.py `Lab`) with one principal per
  device: eas-kcd-proxy always runs its real path (S4U2Self + S4U2Proxy
  through kcd), there is no switch to turn Kerberos off;
* two backends that need no Kerberos (they ignore Authorization):
  nginx (`return 200` with a 2 KiB body; a --stream-size file for
  downloads) for rps, handshake, cold and stream down; tests/bench/backend.py
  for park (Pings held until released) and stream up (body hashed);
  each stream round is --stream-repeat transfers on one connection, after
  every worker of both fronts has served a few small requests;
* the fronts: eas-kcd-proxy (build/eas-kcd-proxy, release build) and nginx
  configured equivalently: TLS with the same certificate,
  `ssl_verify_client on` with the same device CA, `proxy_pass` to the same
  backend over keep-alive upstream connections, streaming request bodies,
  the same worker count, an access log each.

Prints a table and, last, one line:
  bench: rps_ratio_vs_nginx=X handshake_ratio_vs_nginx=Y stream_ratio_vs_nginx=Z
         park_kib_per_ping=P cold_failures=F kdc_req_per_user=K
(ratios are ours / nginx's; a figure that could not be measured is
`failed`, with the reason in the table — nothing is ever estimated).

Nothing listens anywhere but 127.0.0.1; every process started here is
stopped by its pid. See docs/performance.md.
"""
import argparse
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import certs  # noqa: E402
import lab as labmod  # noqa: E402

PYTHON = "/usr/bin/python3"
NGINX = "/usr/sbin/nginx"
SERVER_NAME = "proxy.example.test"
BACKEND_HOST = "exchange.example.test"
PROXY_PRINCIPAL = "HTTP/proxy.example.test@EXAMPLE.TEST"
BODY_2K = ("eas-bench-backend-" * 114)[:2048]
FD_MARGIN = 0.8         # use at most this share of a process' descriptor limit
PARK_POOL_IDLE = 5      # s: idle backend connections expire before parking
WARM_CONNS = 16         # requests in flight while warming every device
WARM_WORKER_CONNS = 8   # connections per worker before the stream rounds


def log(msg):
    print(f"bench: {msg}", flush=True)


def free_port():
    return labmod.free_port()


# ---- processes -------------------------------------------------------------

def _ppid_map():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        # comm may contain blanks: the ppid is the second field after ')'
        rest = st[st.rfind(")") + 2:].split()
        out[int(d)] = int(rest[1])
    return out


def process_tree(root):
    """root and all its descendants (pids)."""
    pm = _ppid_map()
    tree, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in tree:
            continue
        tree.append(p)
        todo.extend(c for c, pp in pm.items() if pp == p)
    return tree


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root):
    return sum(rss_kib(p) for p in process_tree(root))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of pid (all its threads), seconds; 0 when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return 0.0
    rest = st[st.rfind(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def tree_cpu(root):
    """{role: CPU seconds} over root's process tree: parent, kcd, workers."""
    out = {}
    for p in process_tree(root):
        role = "parent" if p == root else ("kcd" if comm(p) == "ekp-kcd" else "workers")
        out[role] = out.get(role, 0.0) + cpu_seconds(p)
    return out


def stop_proc(proc, sig=signal.SIGTERM, timeout=15):
    """Stop a process we started, by pid; SIGKILL its whole tree when it
    lingers."""
    if proc is None or proc.poll() is not None:
        return
    tree = process_tree(proc.pid)
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def die_with_parent():
    """preexec_fn: SIGTERM when the harness dies without its finally (a
    safety net; cleanup() stops everything by pid)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG


def spawn(args, out, **kw):
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, preexec_fn=die_with_parent, **kw)


def wait_listening(port, proc, what, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            rc = proc.returncode
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else \
                f"exited with status {rc}"
            raise RuntimeError(f"{what} {how} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {timeout}s")


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except OSError:
        return ""


def fd_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# ---- the fronts ------------------------------------------------------------

class Front:
    """A TLS front under test; `failed` holds why it cannot be measured."""
    label = "?"

    def __init__(self, bench, workers, backend_port, tag, pool_idle=60):
        self.b = bench
        self.pool_idle = pool_idle      # idle backend connections kept (s)
        self.workers = workers
        self.backend_port = backend_port
        self.tag = tag
        self.port = free_port()
        self.proc = None
        self.failed = None
        self.dir = os.path.join(bench.dir, f"{self.label}-{tag}")
        os.makedirs(self.dir, 0o711, exist_ok=True)

    def rss_kib(self):
        return tree_rss_kib(self.proc.pid) if self.proc and self.proc.poll() is None else 0

    def cpu(self):
        return tree_cpu(self.proc.pid) if self.proc and self.proc.poll() is None else {}

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        stop_proc(self.proc)


class Ours(Front):
    label = "eas-kcd-proxy"

    def config(self):
        b = self.b
        return f"""; written by tests/bench/run.py
[server]
listen = 127.0.0.1:{self.port}
workers = {self.workers}
user = nobody
admin_listen = 127.0.0.1:{free_port()}
request_timeout = 3660s
idle_timeout = 120s
shutdown_timeout = 5s
max_body_size = {max(b.a.stream_size * 2, 64 << 20)}

[tls]
certificate = {b.pki['server'].cert}
key = {b.pki['server'].key}
client_ca = {b.pki['device_ca'].cert}

[identity]
realm = EXAMPLE.TEST

[kerberos]
keytab = {b.lab.keytab(labmod.PROXY)}
principal = {PROXY_PRINCIPAL}
krb5_conf = {b.lab.krb5_conf}

[backend]
servers = {BACKEND_HOST}:{self.backend_port}
tls = off
connect_to = 127.0.0.1:{self.backend_port}
spn = HTTP/{BACKEND_HOST}
pool_idle = {self.pool_idle}s

[log]
error_log = {os.path.join(self.dir, 'error.log')}
level = warn
access_log = {os.path.join(self.dir, 'access.log')}
"""

    def start(self):
        b = self.b
        if b.lab is None:
            self.failed = f"no lab KDC: {b.lab_error}"
            return self
        binary = os.path.join(b.build, "eas-kcd-proxy")
        if not os.access(binary, os.X_OK):
            self.failed = f"no {binary} (make all)"
            return self
        conf = os.path.join(self.dir, "eas-kcd-proxy.conf")
        with open(conf, "w") as f:
            f.write(self.config())
        t = subprocess.run([binary, "-t", "-c", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        if t.returncode != 0:
            self.failed = "configuration refused: " + " | ".join(t.stdout.splitlines()[-3:])
            return self
        out = open(os.path.join(self.dir, "console.log"), "ab")
        self.proc = spawn([binary, "-c", conf], out, cwd=self.dir, env=b.lab.env)
        out.close()
        try:
            wait_listening(self.port, self.proc, "eas-kcd-proxy")
            # every worker and kcd up (a connection waits in the backlog until then)
            end = time.monotonic() + 20
            while len(process_tree(self.proc.pid)) < self.workers + 2:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise RuntimeError(f"eas-kcd-proxy: {len(process_tree(self.proc.pid)) - 1} "
                                       f"children, expected {self.workers + 1}")
                time.sleep(0.05)
        except RuntimeError as e:
            said = (tail(os.path.join(self.dir, "error.log"), 3) or
                    tail(os.path.join(self.dir, "console.log"), 3) or "nothing logged")
            self.failed = f"{e}; {' | '.join(said.splitlines())}"
            self.stop()
        return self


class Nginx(Front):
    label = "nginx"

    def config(self):
        b = self.b
        d = self.dir
        conns = int(fd_limit() * 0.95)
        return f"""# written by tests/bench/run.py: the comparison front
daemon off;
master_process on;
worker_processes {self.workers};
worker_rlimit_nofile {fd_limit()};
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {conns}; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    access_log {d}/access.log;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_header_timeout 30s;
    client_max_body_size {max(b.a.stream_size * 2, 64 << 20)};
    upstream exchange {{
        server 127.0.0.1:{self.backend_port};
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout {self.pool_idle}s;
    }}
    server {{
        listen 127.0.0.1:{self.port} ssl reuseport;
        ssl_certificate {b.pki['server'].cert};
        ssl_certificate_key {b.pki['server'].key};
        ssl_client_certificate {b.pki['device_ca'].cert};
        ssl_verify_client on;
        ssl_verify_depth 4;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /Microsoft-Server-ActiveSync {{
            proxy_pass http://exchange;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {BACKEND_HOST};
            proxy_set_header Authorization "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_request_buffering off;
            proxy_max_temp_file_size 0;
            proxy_read_timeout 3660s;
            proxy_send_timeout 3660s;
        }}
        location / {{ return 404; }}
    }}
}}
"""

    def start(self):
        if not os.access(NGINX, os.X_OK):
            self.failed = f"no {NGINX} (scripts/bootstrap installs nginx)"
            return self
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.dir, "tmp", sub), exist_ok=True)
            os.chmod(os.path.join(self.dir, "tmp", sub), 0o777)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self.config())
        out = open(os.path.join(self.dir, "console.log"), "ab")
        self.proc = spawn([NGINX, "-p", self.dir, "-c", conf], out, cwd=self.dir)
        out.close()
        try:
            wait_listening(self.port, self.proc, "nginx")
        except RuntimeError as e:
            self.failed = f"{e}; {tail(os.path.join(self.dir, 'error.log'), 3)}"
            self.stop()
        return self


# ---- results -----------------------------------------------------------------

class Run:
    """One eas-loadgen run: ok, the last line's fields, why it failed."""

    def __init__(self, args, proc, elapsed):
        self.args = args
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed
        self.fields = {}
        self.extra = {}
        lines = proc.stdout.strip().splitlines()
        m = re.match(r"^loadgen: mode=(\w+) (.*)$", lines[-1]) if lines else None
        if m:
            self.fields = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
        self.ok = self.rc == 0 and bool(self.fields)
        self.reason = None
        if not self.ok:
            first = [ln for ln in lines if ln.startswith("first error")]
            why = first[0][len("first error"):].strip() if first else \
                (proc.stderr.strip().splitlines() or ["no output"])[-1]
            self.reason = f"loadgen exit {self.rc}: {why}"

    def f(self, key):
        return float(self.fields[key])


def median(xs):
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self, a):
        self.a = a
        self.build = os.path.abspath(a.build)
        self.loadgen_bin = os.path.join(self.build, "eas-loadgen")
        self.dir = tempfile.mkdtemp(prefix="ekp-bench-", dir="/tmp")
        os.chmod(self.dir, 0o711)
        self.lab = None
        self.lab_error = None
        self.procs = []
        self.results = {}       # (mode, front label) -> list of Run
        self.notes = {}         # (mode, front label) -> failure reason
        self.extra = {}         # named figures
        self.loads = []         # 1-minute load average after each run

    # -- setup -------------------------------------------------------------
    def make_pki(self):
        t = time.monotonic()
        pki = os.path.join(self.dir, "pki")
        fleet = os.path.join(self.dir, "fleet")
        dca = certs.device_ca(pki)
        sca = certs.server_ca(pki)
        server = certs.proxy_server(pki, sca)
        self.users = [f"u{i:05d}" for i in range(self.a.fleet)]
        for u in self.users:
            certs.good_user(fleet, dca, u)
        # the probe request's device is not in the fleet: the cold start
        # must find every fleet user cold
        self.probe_dir = os.path.join(self.dir, "probe")
        certs.good_user(self.probe_dir, dca, "probe")
        self.pki = {"device_ca": dca, "server_ca": sca, "server": server}
        self.fleet = fleet
        # the workers (nobody) and nginx's workers read nothing of this after
        # start, but the fronts' masters read the server key as root
        log(f"{len(self.users)} device certificates in {time.monotonic() - t:.1f}s")

    def start_lab(self):
        t = time.monotonic()
        try:
            self.lab = labmod.Lab(os.path.join(self.dir, "lab"))
            self.lab.start()
            names = self.users + ["probe"]
            for i in range(0, len(names), 1000):
                cmds = "\n".join(f"addprinc -randkey {u}" for u in names[i:i + 1000])
                p = subprocess.run(["kadmin.local", "-r", labmod.REALM], input=cmds + "\nquit\n",
                                   env=self.lab.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, timeout=300)
                bad = [ln for ln in p.stderr.splitlines()
                       if ln.strip() and "No policy specified" not in ln]
                if p.returncode != 0 or bad:
                    raise RuntimeError("kadmin.local addprinc: " + " | ".join(bad[:3]))
            log(f"lab KDC with {len(self.users)} device principals in "
                f"{time.monotonic() - t:.1f}s")
        except Exception as e:      # the nginx figures still run
            self.lab_error = f"{type(e).__name__}: {e}"
            log(f"lab failed: {self.lab_error}")
            if self.lab is not None:
                self.lab.stop()
            self.lab = None

    def start_backends(self):
        d = os.path.join(self.dir, "backend-nginx")
        os.makedirs(d, 0o755)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(d, "tmp", sub))
            os.chmod(os.path.join(d, "tmp", sub), 0o777)
        blob = os.path.join(d, "blob.bin")
        pattern = bytes(range(256)) * 4096
        with open(blob, "wb") as f:
            left = self.a.stream_size
            while left:
                n = min(left, len(pattern))
                f.write(pattern[:n])
                left -= n
        os.chmod(blob, 0o644)
        self.fast_port = free_port()
        conns = int(fd_limit() * 0.95)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(f"""# bench backend: answers like a fast Exchange that needs no Kerberos
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {fd_limit()};
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {conns}; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    access_log off;
    sendfile on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_max_body_size 0;
    # a request through a KCD front has a head of about 1.5 KB (its
    # Negotiate header); in nginx's default 1 KiB header buffer every such
    # request is copied into a second, larger one. Exchange (http.sys)
    # reads a whole head into one buffer; so does this stand-in, for
    # either front.
    client_header_buffer_size 4k;
    server {{
        listen 127.0.0.1:{self.fast_port};
        location /Microsoft-Server-ActiveSync {{
            if ($arg_Cmd = GetAttachment) {{ rewrite ^ /blob last; }}
            default_type application/vnd.ms-sync.wbxml;
            return 200 "{BODY_2K}";
        }}
        location = /blob {{
            internal;
            default_type application/octet-stream;
            alias {blob};
        }}
    }}
}}
""")
        out = open(os.path.join(d, "console.log"), "ab")
        p = spawn([NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf")], out)
        out.close()
        self.procs.append(p)
        wait_listening(self.fast_port, p, "backend nginx")

        self.py_dir = os.path.join(self.dir, "backend-py")
        os.makedirs(self.py_dir)
        self.py_port = free_port()
        self.py_procs = max(2, math.ceil(self.a.park / (fd_limit() * FD_MARGIN)) + 1)
        out = open(os.path.join(self.py_dir, "console.log"), "ab")
        self.py = spawn([PYTHON, os.path.join(HERE, "backend.py"),
                         "--port", str(self.py_port), "--dir", self.py_dir,
                         "--procs", str(self.py_procs), "--hold", "900"], out)
        out.close()
        self.procs.append(self.py)
        end = time.monotonic() + 20
        while len(self.py_state_files()) < self.py_procs:
            if self.py.poll() is not None or time.monotonic() > end:
                raise RuntimeError("backend.py did not start: " +
                                   tail(os.path.join(self.py_dir, "console.log")))
            time.sleep(0.05)
        log(f"backends: nginx :{self.fast_port}, backend.py :{self.py_port} "
            f"({self.py_procs} processes)")

    def py_state_files(self):
        return [f for f in os.listdir(self.py_dir) if re.fullmatch(r"state\.\d+", f)]

    def py_state(self):
        tot = {"parked": 0, "answered": 0, "requests": 0}
        for f in self.py_state_files():
            try:
                with open(os.path.join(self.py_dir, f)) as fh:
                    for kv in fh.read().split():
                        k, _, v = kv.partition("=")
                        tot[k] = tot.get(k, 0) + int(v)
            except (OSError, ValueError):
                pass
        return tot

    # -- running the load generator ------------------------------------------
    def loadgen(self, mode, front, *args, timeout=900, background=False, certs_dir=None):
        cmd = [self.loadgen_bin, mode, "--port", str(front.port), "--certs",
               certs_dir or self.fleet, "--server-name", SERVER_NAME] + [str(x) for x in args]
        if background:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, preexec_fn=die_with_parent), cmd
        import resource
        cpu0 = front.cpu()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.monotonic()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
        r = Run(cmd, p, time.monotonic() - t)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = front.cpu()
        r.extra["cpu"] = {k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu1}
        r.extra["cpu"]["loadgen"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        self.loads.append(os.getloadavg()[0])
        return r

    def record(self, key, front, run):
        self.results.setdefault((key, front.label), []).append(run)
        if run.ok:
            log(f"{key:<12} {front.label:<14} {run.stdout.strip().splitlines()[-1]}")
        else:
            self.notes.setdefault((key, front.label), run.reason)
            log(f"{key:<12} {front.label:<14} FAILED {run.reason}")

    def skip(self, key, front, reason):
        self.notes.setdefault((key, front.label), reason)
        log(f"{key:<12} {front.label:<14} not run: {reason}")

    def usable(self, front, key):
        if front.failed:
            self.skip(key, front, front.failed)
            return False
        if not front.alive():
            front.failed = f"{front.label} is no longer running " \
                           f"({tail(os.path.join(front.dir, 'error.log'), 2)})"
            self.skip(key, front, front.failed)
            return False
        return True

    def probe(self, front):
        """One request through the front; a front that cannot answer it is
        marked failed with the load generator's reason (the proxy's request
        path may not exist yet)."""
        if front.failed:
            return
        end = time.monotonic() + 10
        while True:
            r = self.loadgen("rps", front, "-c", "1", "--requests", "1", "-d", "5",
                             "--timeout", "10", certs_dir=self.probe_dir)
            if r.ok:
                return
            if time.monotonic() > end:
                front.failed = f"probe request failed: {r.reason}"
                log(f"{front.label}: {front.failed}")
                return
            time.sleep(0.5)

    def ab(self, key, fronts, runner):
        """Alternate: round i runs the fronts in turn, reversed every other
        round (ABBA), so drift hits both alike."""
        for i in range(self.a.rounds):
            order = fronts if i % 2 == 0 else list(reversed(fronts))
            for fr in order:
                if self.usable(fr, key):
                    runner(fr)

    # -- modes --------------------------------------------------------------
    def run_cold(self, front):
        n = min(self.a.cold, len(self.users))
        before = len(self.lab.kdc_requests()) if (self.lab and isinstance(front, Ours)) else 0
        r = self.loadgen("cold", front, "-c", n, "-d", "300", "--timeout", "120",
                         "--max-handshakes", self.a.max_handshakes)
        if self.lab and isinstance(front, Ours):
            time.sleep(0.5)     # the KDC log is written after the answer
            reqs = self.lab.kdc_requests()[before:]
            r.extra["kdc_requests"] = len(reqs)
            r.extra["kdc_req_per_user"] = len(reqs) / n
            kinds = {}
            for e in reqs:
                kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            r.extra["kdc_kinds"] = kinds
        r.extra["failures"] = int(r.fields.get("failures", n)) if r.fields else n
        self.record("cold", front, r)

    def run_rps(self, front):
        self.record("rps", front, self.loadgen("rps", front, "-c", self.a.rps_conns,
                                               "-d", self.a.duration))

    def run_handshake(self, front):
        self.record("handshake", front, self.loadgen("handshake", front, "-c",
                                                     self.a.hs_conns, "-d", self.a.duration))

    def run_stream(self, front, direction):
        """One round of a front: --stream-repeat transfers of --stream-size
        back to back on one keep-alive connection (one load generator run,
        --requests); its MiB/s is all their bytes over all their time. The
        RSS growth is the peak of the front's processes during the round
        minus their RSS just before it."""
        base = front.rss_kib()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], front.rss_kib())
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        r = self.loadgen("stream", front, "--direction", direction, "--size",
                         self.a.stream_size, "--requests", self.a.stream_repeat,
                         "-d", "900", "--timeout", "60", certs_dir=self.probe_dir)
        stop.set()
        t.join()
        r.extra["rss_growth_kib"] = max(peak[0], front.rss_kib()) - base
        r.extra["rss_base_kib"] = base
        r.extra["transfers"] = self.a.stream_repeat
        self.record(f"stream_{direction}", front, r)

    def run_park(self, front):
        n = self.a.park
        procs = max(1, math.ceil(n / (fd_limit() * FD_MARGIN)))
        before = self.py_state()
        if before["parked"]:
            self.skip("park", front, f"backend still holds {before['parked']} Pings")
            return
        # Every device once, gently: credentials (ours) and allocator arenas
        # (both) are warm, so the figure is the cost of parking, not of a
        # cold start (which "cold" measures). Then the idle backend
        # connections this left expire (pool_idle), so every parked Ping
        # pays for its own backend connection.
        w = self.warm_fleet(front)
        time.sleep(front.pool_idle + 2)
        base = front.rss_kib()
        lg, cmd = self.loadgen("park", front, "-c", n, "--procs", procs, "-d", "900",
                               "--max-handshakes", self.a.max_handshakes, "--progress", "5",
                               background=True)
        t0 = time.monotonic()
        peak_parked, parked_rss, stalled = 0, None, None
        last_change = time.monotonic()
        while True:
            st = self.py_state()
            if st["parked"] > peak_parked:
                peak_parked = st["parked"]
                last_change = time.monotonic()
            if st["parked"] >= n:
                time.sleep(1)   # let the fronts settle their buffers
                parked_rss = front.rss_kib()
                break
            if lg.poll() is not None:
                stalled = "the load generator ended before every Ping was parked"
                break
            if time.monotonic() - last_change > 60:
                stalled = f"parking stalled at {peak_parked} of {n} for 60 s"
                parked_rss = front.rss_kib()
                break
            time.sleep(0.25)
        park_s = time.monotonic() - t0
        self.py.send_signal(signal.SIGUSR1)     # answer every parked Ping
        try:
            out, err = lg.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            stop_proc(lg)
            out, err = lg.communicate()
        r = Run(cmd, subprocess.CompletedProcess(cmd, lg.returncode, out, err),
                time.monotonic() - t0)
        r.extra.update(backend_parked=peak_parked, park_seconds=park_s, rss_base_kib=base,
                       rss_parked_kib=parked_rss, warmup_errors=w.fields.get("errors"))
        if parked_rss is not None and peak_parked:
            r.extra["kib_per_ping"] = (parked_rss - base) / peak_parked
        if stalled and r.ok:
            r.ok = False
        if stalled:
            r.reason = f"{stalled}; {r.reason or 'loadgen exit 0'}"
        self.record("park", front, r)
        # wait until the backend has nothing parked before the next front
        end = time.monotonic() + 60
        while self.py_state()["parked"] and time.monotonic() < end:
            self.py.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

    # -- groups -------------------------------------------------------------
    def group(self, workers, backend_port, tag, body, pool_idle=60):
        fronts = [Ours(self, workers, backend_port, tag, pool_idle),
                  Nginx(self, workers, backend_port, tag, pool_idle)]
        try:
            for fr in fronts:
                fr.start()
                if fr.failed:
                    log(f"{fr.label} ({tag}): {fr.failed}")
            for fr in fronts:
                self.probe(fr)
            body(fronts)
        finally:
            for fr in fronts:
                fr.stop()
            for fr in fronts:
                if fr.failed and not any(k[1] == fr.label for k in self.notes):
                    self.notes[("start", fr.label)] = fr.failed

    def fast_group(self, fronts):
        modes = self.a.modes
        if "stream" in modes:
            # first, on fresh fronts: memory growth is measured from a small
            # base; the probe device streams, so the fleet stays cold
            self.warm_workers(fronts)
            self.ab("stream_down", fronts, lambda fr: self.run_stream(fr, "down"))
        if "cold" in modes:
            # fresh fronts: the proxy's first requests for every user
            for fr in fronts:
                if self.usable(fr, "cold"):
                    self.run_cold(fr)
        if "rps" in modes:
            self.warm(fronts)
            self.ab("rps", fronts, self.run_rps)
        if "handshake" in modes:
            if "cold" not in modes:
                # handshake mode rotates through the whole fleet: without the
                # cold start before it, every device's credentials first (the
                # figure is the handshake's cost, not the KDC's)
                for fr in fronts:
                    if self.usable(fr, "handshake"):
                        self.warm_fleet(fr)
            self.ab("handshake", fronts, self.run_handshake)

    def warm(self, fronts):
        """Credentials for the rps devices (SPEC §9: warm); a short run,
        not measured."""
        for fr in fronts:
            if not fr.failed and fr.alive():
                r = self.loadgen("rps", fr, "-c", self.a.rps_conns, "-d", "1")
                if not r.ok:
                    log(f"warm-up {fr.label}: {r.reason}")

    def warm_workers(self, fronts):
        """Before the stream rounds, the same for both fronts: the probe
        device makes WARM_WORKER_CONNS small requests per worker, on
        connections of their own (SO_REUSEPORT spreads them by the client's
        port), so every worker has served a TLS connection and the first-use
        pages of libssl/libcrypto and OpenSSL's lazily built state (0.5-0.9
        MiB) are in the base, not in a stream's growth. The fleet stays
        cold."""
        for fr in fronts:
            if not fr.failed and fr.alive():
                r = self.loadgen("rps", fr, "-c", WARM_WORKER_CONNS * fr.workers,
                                 "--requests", 2, "-d", "30", "--timeout", "10",
                                 certs_dir=self.probe_dir)
                if not r.ok:
                    log(f"warm-up {fr.label}: {r.reason}")

    def warm_fleet(self, front):
        """One request per fleet device with at most WARM_CONNS requests in
        flight (handshake mode rotates the devices: slot i uses devices i,
        i + WARM_CONNS, ...), so even a slow KDC is not overrun."""
        per = math.ceil(len(self.users) / WARM_CONNS)
        w = self.loadgen("handshake", front, "-c", WARM_CONNS, "--requests", per, "-d", "600")
        if not w.ok:
            log(f"warm-up {front.label}: {w.reason} ({w.fields.get('errors')} errors)")
        return w

    def park_group(self, fronts):
        if "stream" in self.a.modes:
            # before parking: 20,000 closed connections leave the heap large
            self.warm_workers(fronts)
            self.ab("stream_up", fronts, lambda fr: self.run_stream(fr, "up"))
        if "park" in self.a.modes:
            for fr in fronts:
                if self.usable(fr, "park"):
                    self.run_park(fr)

    # -- report ---------------------------------------------------------------
    def figure(self, key, label, field):
        runs = [r for r in self.results.get((key, label), []) if r.ok]
        vals = [r.f(field) for r in runs if field in r.fields]
        return median(vals), vals

    def extra_of(self, key, label, name):
        runs = [r for r in self.results.get((key, label), []) if r.ok and name in r.extra]
        return runs[-1].extra[name] if runs else None

    def cpu_per_k(self, key, label, field):
        """Front CPU per 1000 requests (handshakes), by role, from the last
        good run: 'workers+kcd+parent (loadgen)'."""
        runs = [r for r in self.results.get((key, label), []) if r.ok and "cpu" in r.extra]
        if not runs:
            return "-"
        r = runs[-1]
        n = int(r.fields.get("requests", 0))
        if n == 0:
            return "-"
        c = r.extra["cpu"]
        parts = [f"{1e6 * c.get(k, 0) / n:.0f}" for k in ("workers", "kcd") if k in c]
        return "+".join(parts) + f" (lg {1e6 * c.get('loadgen', 0) / n:.0f})"

    def why(self, key, label):
        return self.notes.get((key, label)) or self.notes.get(("start", label)) or "not run"

    def ratio(self, key, field):
        ours, _ = self.figure(key, Ours.label, field)
        theirs, _ = self.figure(key, Nginx.label, field)
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    def report(self):
        rows = [("rps", "rps", "requests/s"), ("handshake", "hps", "handshakes/s"),
                ("stream_down", "mib_s", "MiB/s down"), ("stream_up", "mib_s", "MiB/s up")]
        print()
        print(f"{'figure':<26} {'eas-kcd-proxy':>22} {'nginx':>22} {'ratio':>7}")
        for key, field, what in rows:
            cells = []
            for label in (Ours.label, Nginx.label):
                m, vals = self.figure(key, label, field)
                cells.append(f"{m:,.1f} ({len(vals)} runs)" if m is not None else
                             "failed" if (key, label) in self.notes or
                             ("start", label) in self.notes else "not run")
            r = self.ratio(key, field)
            print(f"{what:<26} {cells[0]:>22} {cells[1]:>22} "
                  f"{(f'{r:.2f}' if r is not None else '-'):>7}")
            for lat in ("p50_ms", "p99_ms", "p999_ms"):
                c2 = []
                for label in (Ours.label, Nginx.label):
                    m, _ = self.figure(key, label, lat)
                    c2.append(f"{m:.3f}" if m is not None else "-")
                print(f"  {lat:<24} {c2[0]:>22} {c2[1]:>22}")
            if key.startswith("stream"):
                c3 = []
                for label in (Ours.label, Nginx.label):
                    runs = [r for r in self.results.get((key, label), [])
                            if r.ok and "rss_growth_kib" in r.extra]
                    if runs:
                        worst = max(runs, key=lambda r: r.extra["rss_growth_kib"])
                        c3.append(f"+{worst.extra['rss_growth_kib']:,} of "
                                  f"{worst.extra['rss_base_kib']:,} KiB")
                    else:
                        c3.append("-")
                print(f"  {'RSS growth (worst round)':<24} {c3[0]:>22} {c3[1]:>22}")
            if key in ("rps", "handshake"):
                c4 = []
                for label in (Ours.label, Nginx.label):
                    c4.append(self.cpu_per_k(key, label, field))
                print(f"  {'CPU ms per 1000':<24} {c4[0]:>22} {c4[1]:>22}")
        for label in (Ours.label, Nginx.label):
            kib = self.extra_of("park", label, "kib_per_ping")
            parked = self.extra_of("park", label, "backend_parked")
            base = self.extra_of("park", label, "rss_base_kib")
            if kib is not None:
                print(f"park {label:<21} {parked:,} parked, RSS {base:,} -> "
                      f"{self.extra_of('park', label, 'rss_parked_kib'):,} KiB: "
                      f"{kib:.1f} KiB per parked Ping")
            else:
                print(f"park {label:<21} {self.why('park', label)}")
        for label in (Ours.label, Nginx.label):
            runs = [r for r in self.results.get(("cold", label), [])]
            if runs and runs[-1].fields:
                r = runs[-1]
                line = (f"cold {label:<21} {self.a.cold} users at once: "
                        f"{r.fields.get('answered')} answered, {r.extra.get('failures')} "
                        f"failures, {r.fields.get('seconds')} s, p99 {r.fields.get('p99_ms')} ms")
                if "kdc_requests" in r.extra:
                    line += (f"; KDC requests {r.extra['kdc_requests']} "
                             f"{r.extra['kdc_kinds']}")
                print(line)
            else:
                print(f"cold {label:<21} {self.why('cold', label)}")
        if self.loads:
            print(f"1-minute load average after the runs: {min(self.loads):.1f} to "
                  f"{max(self.loads):.1f} on {os.cpu_count()} CPUs (above the CPU count, "
                  f"something else competed for the machine)")
        reasons = sorted({v for (k, lab_), v in self.notes.items()})
        if reasons:
            print("\nwhy figures are missing:")
            for (k, lab_), v in sorted(self.notes.items()):
                print(f"  {k:<12} {lab_:<14} {v}")

        def fmt(v, spec, mode):
            if v is not None:
                return format(v, spec)
            return "failed" if mode in self.a.modes else "not_run"
        rps = self.ratio("rps", "rps")
        hs = self.ratio("handshake", "hps")
        up, down = self.ratio("stream_up", "mib_s"), self.ratio("stream_down", "mib_s")
        stream = min(up, down) if up is not None and down is not None else None
        park = self.extra_of("park", Ours.label, "kib_per_ping")
        cold_runs = self.results.get(("cold", Ours.label), [])
        cold_f = cold_runs[-1].extra.get("failures") if cold_runs and cold_runs[-1].fields \
            else None
        kdc = cold_runs[-1].extra.get("kdc_req_per_user") if cold_runs else None
        print()
        print(f"bench: rps_ratio_vs_nginx={fmt(rps, '.2f', 'rps')} "
              f"handshake_ratio_vs_nginx={fmt(hs, '.2f', 'handshake')} "
              f"stream_ratio_vs_nginx={fmt(stream, '.2f', 'stream')} "
              f"park_kib_per_ping={fmt(park, '.1f', 'park')} "
              f"cold_failures={fmt(cold_f, 'd', 'cold')} "
              f"kdc_req_per_user={fmt(kdc, '.2f', 'cold')}", flush=True)

    # -- all -------------------------------------------------------------------
    def machine(self):
        model = "unknown"
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
        ngv = subprocess.run([NGINX, "-v"], stderr=subprocess.PIPE, text=True).stderr.strip() \
            if os.access(NGINX, os.X_OK) else "nginx missing"
        osv = subprocess.run(["openssl", "version"], stdout=subprocess.PIPE,
                             text=True).stdout.strip()
        log(f"machine: {os.cpu_count()} CPUs, {model}, Linux {platform.release()}, {osv}, "
            f"{ngv}, descriptor limit {fd_limit()}")

    def run(self):
        self.machine()
        if not os.access(self.loadgen_bin, os.X_OK):
            raise SystemExit(f"bench: no {self.loadgen_bin} (make {self.loadgen_bin})")
        self.make_pki()
        self.start_lab()
        self.start_backends()
        w = self.a.workers
        if {"cold", "rps", "handshake", "stream"} & set(self.a.modes):
            log(f"group 1: nginx backend, {w} workers each")
            self.group(w, self.fast_port, "fast", self.fast_group)
        if {"park", "stream"} & set(self.a.modes):
            # each parked Ping holds a device and a backend descriptor in one
            # worker; the hard descriptor limit decides how many workers that
            # takes (the same count for both fronts)
            pw = max(w, math.ceil(2 * self.a.park / (fd_limit() * FD_MARGIN)))
            log(f"group 2: backend.py, {pw} workers each"
                + (f" (descriptor limit {fd_limit()} per process)" if pw != w else ""))
            self.group(pw, self.py_port, "py", self.park_group, pool_idle=PARK_POOL_IDLE)
        self.report()

    def cleanup(self):
        for p in reversed(self.procs):
            stop_proc(p)
        if self.lab is not None:
            self.lab.stop()
        if self.a.keep:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--modes", default="cold,rps,handshake,stream,park",
                    help="comma list of cold,rps,handshake,stream,park")
    ap.add_argument("--fleet", type=int, default=5000, help="device certificates")
    ap.add_argument("--cold", type=int, default=5000, help="users in the cold start")
    ap.add_argument("--park", type=int, default=20000, help="parked Pings")
    ap.add_argument("--duration", type=float, default=10, help="rps/handshake window (s)")
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds for rps, handshake, stream")
    ap.add_argument("--rps-conns", type=int, default=100)
    ap.add_argument("--hs-conns", type=int, default=32)
    ap.add_argument("--stream-size", type=int, default=100 * 1024 * 1024)
    ap.add_argument("--stream-repeat", type=int, default=10,
                    help="transfers of --stream-size per front and round, back to back")
    ap.add_argument("--max-handshakes", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true",
                    help="small and short (fleet 300, park 2000, 3 s, 1 round, "
                         "5 x 20 MiB streams)")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    a = ap.parse_args()
    if a.quick:
        a.fleet, a.cold, a.park, a.duration, a.rounds = 300, 300, 2000, 3, 1
        a.stream_size, a.stream_repeat = 20 * 1024 * 1024, 5
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.stream_repeat < 1:
        ap.error("--stream-repeat must be at least 1")
    bad = set(a.modes) - {"cold", "rps", "handshake", "stream", "park"}
    if bad:
        ap.error(f"unknown modes {sorted(bad)}")
    a.cold = min(a.cold, a.fleet)
    b = Bench(a)
    t = time.monotonic()

    def terminate(signum, _frame):
        raise SystemExit(f"bench: {signal.Signals(signum).name}: stopping")
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        b.run()
    finally:
        b.cleanup()
        log(f"total {time.monotonic() - t:.0f}s")


if __name__ == "__main__":
    main()
