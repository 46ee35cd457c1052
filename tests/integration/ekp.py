"""Drive the real eas-kcd-proxy daemon from tests, in the manner of MIT
krb5's k5test.py: a throwaway directory with a config file, the daemon on
free 127.0.0.1 ports, helpers to run the binary and check exit codes and
messages, and a stop that always works (by pid).

    from ekp import Proxy, run

    p = Proxy(workers=2)              # writes DIR/eas-kcd-proxy.conf
    p.start()                         # waits for "generation 1 ready"
    p.children()                      # [{'pid':..,'comm':'ekp-kcd','uid':0}, ...]
    p.wait_for_log(r"worker 0 .* ready")
    p.stop()                          # SIGTERM, bounded wait, SIGKILL

    run(["-t", "-c", p.conf], expected_code=0, expected_msg="configuration OK")

Independent of lab.py (KDC, slapd, Apache): the proxy's TLS material is
generated for every Proxy with tests/certs.py (a server CA and a proxy
certificate, a device CA whose certificates tests can issue with
Proxy.device_cert()); the keytab is a placeholder until a test passes a real
one in `files` (kcd opens it only when it is asked for a token).

Sanitizer builds: ASAN_OPTIONS/UBSAN_OPTIONS from the environment are kept
and get a log_path inside the proxy's directory, so reports of every process
(including a daemon whose stderr is /dev/null) end up in files that
Proxy.stop() checks: a sanitizer report fails the test.
"""

import glob
import json
import os
import sys
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

SRCDIR = os.environ.get("EKP_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EKP_BIN = os.environ.get("EKP_BIN") or os.path.join(SRCDIR, "build", "san", "eas-kcd-proxy")

sys.path.insert(0, os.path.join(SRCDIR, "tests"))
import certs  # noqa: E402  (tests/certs.py)

READY_RE = r"generation (\d+) ready: kcd pid (\d+), (\d+) workers"


class ProxyError(AssertionError):
    """A proxy did not do what a test expected; the message says what."""


def stop_all(made):
    """Teardown for fixtures that make proxies: stop every one in made (a
    proxy that would not stop or left a sanitizer report raises an
    AssertionError), remove its directory unless EKP_KEEP=1, then fail once
    naming every problem."""
    import pytest

    problems = []
    for p in made:
        try:
            p.stop()
        except AssertionError as e:
            problems.append(f"{p.dir}: {e}")
        finally:
            if not os.environ.get("EKP_KEEP"):
                shutil.rmtree(p.dir, ignore_errors=True)
    if problems:
        pytest.fail("at teardown:\n" + "\n".join(problems))


def binary():
    """The daemon under test; a missing binary fails the test, never skips."""
    if not os.access(EKP_BIN, os.X_OK):
        raise ProxyError(f"no executable eas-kcd-proxy at {EKP_BIN}: build it "
                         f"(make san) or set EKP_BIN")
    return EKP_BIN


def free_port():
    """A TCP port free on 127.0.0.1 right now (bind to 0, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, expected_code=0, expected_msg=None, env=None, timeout=60,
        cwd=None):
    """Run the binary with args; check the exit code and, when given, that
    expected_msg (a string, or a compiled regex) appears in stdout+stderr.
    Returns the CompletedProcess (text)."""
    p = subprocess.run([binary()] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=env,
                       timeout=timeout, cwd=cwd)
    out = p.stdout + p.stderr
    if p.returncode != expected_code:
        raise ProxyError(f"eas-kcd-proxy {' '.join(args)}: exit {p.returncode}, "
                         f"expected {expected_code}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    if expected_msg is not None:
        found = (expected_msg.search(out) if hasattr(expected_msg, "search")
                 else expected_msg in out)
        if not found:
            raise ProxyError(f"eas-kcd-proxy {' '.join(args)}: expected "
                             f"{getattr(expected_msg, 'pattern', expected_msg)!r} in "
                             f"the output\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def proc_status(pid):
    """Fields of /proc/PID/status as a dict, or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    st = {}
    for line in lines:
        k, _, v = line.partition(":")
        st[k] = v.strip()
    return st


def alive(pid):
    """True while pid exists and is not a zombie."""
    st = proc_status(pid)
    return st is not None and not st.get("State", "").startswith("Z")


def listening_inodes(port):
    """Inodes of TCP/TCP6 sockets in LISTEN state on port."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except FileNotFoundError:
            pass
    return inodes


def socket_inodes(pid):
    """Inodes of the sockets pid holds open."""
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def wait_until(cond, timeout, what):
    """Poll cond() until it returns something true; ProxyError naming `what`
    after timeout seconds."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise ProxyError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


DEFAULTS = {
    "server": {
        "workers": "2",
        "user": "nobody",
        "shutdown_timeout": "10s",
    },
    "tls": {
        "certificate": "server.pem",
        "key": "server.key",
        "client_ca": "device-ca.pem",
    },
    "identity": {"realm": "EXAMPLE.TEST"},
    "kerberos": {
        "keytab": "proxy.keytab",
        "principal": "HTTP/proxy.example.test@EXAMPLE.TEST",
    },
    "backend": {
        "servers": "exchange.example.test:443",
        "spn": "HTTP/exchange.example.test",
    },
    "log": {
        "level": "debug",
        "access_log": "off",
    },
}

PLACEHOLDERS = ("proxy.keytab",)


class Proxy:
    """One eas-kcd-proxy in a directory of its own.

    settings: {section: {key: value}} merged over DEFAULTS (value None drops
    the key). files: {name: path} copied into the directory instead of the
    placeholders. The error log goes to DIR/error.log unless settings say
    otherwise; stdout/stderr of the daemon go to DIR/console.log.
    """

    def __init__(self, workers=2, settings=None, files=None, keep=False,
                 binary=None):
        self.dir = tempfile.mkdtemp(prefix="ekp-")
        # another build of the daemon (e.g. the release one) for this proxy
        self.binary = binary
        # workers run as `nobody`; they read nothing from here after the drop
        os.chmod(self.dir, 0o711)
        self.keep = keep
        self.port = free_port()
        self.admin_port = free_port()
        self.conf = self.path("eas-kcd-proxy.conf")
        self.error_log = self.path("error.log")
        self.console = self.path("console.log")
        self.pid_file = None
        self.proc = None
        self._pid = None
        self._console_fh = None
        self.known_children = set()
        for name in PLACEHOLDERS:
            self._write(name, f"placeholder {name}: config.c checks readability only\n", 0o600)
        self._make_tls()
        for name, src in (files or {}).items():
            shutil.copyfile(src, self.path(name))
            os.chmod(self.path(name), 0o600)
        self.settings = self._merge(workers, settings or {})
        self.write_config()

    # ---- files ---------------------------------------------------------
    def _make_tls(self):
        """server.pem (leaf + chain), server.key, device-ca.pem: real ones."""
        d = self.path("pki")
        os.makedirs(d, exist_ok=True)
        self.server_ca = certs.server_ca(d)
        self.device_ca = certs.device_ca(d)
        srv = certs.proxy_server(d, self.server_ca)
        with open(self.path("server.pem"), "wb") as out:
            for f in (srv.cert, self.server_ca.cert):
                with open(f, "rb") as src:
                    out.write(src.read())
        shutil.copyfile(srv.key, self.path("server.key"))
        os.chmod(self.path("server.key"), 0o600)
        shutil.copyfile(self.device_ca.cert, self.path("device-ca.pem"))

    def device_cert(self, user="alice", **kw):
        """A device certificate for user@EXAMPLE.TEST issued by this proxy's
        device CA; returns certs.Issued (cert, key paths)."""
        return certs.good_user(self.path("pki"), self.device_ca, user=user, **kw)

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def _write(self, name, text, mode=0o644):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        return p

    def _merge(self, workers, settings):
        merged = {s: dict(kv) for s, kv in DEFAULTS.items()}
        merged["server"]["listen"] = f"127.0.0.1:{self.port}"
        merged["server"]["admin_listen"] = f"127.0.0.1:{self.admin_port}"
        merged["server"]["workers"] = str(workers)
        merged["log"]["error_log"] = self.error_log
        for sec, kv in settings.items():
            for k, v in kv.items():
                if v is None:
                    merged.setdefault(sec, {}).pop(k, None)
                else:
                    merged.setdefault(sec, {})[k] = str(v)
        return merged

    def config_text(self, settings=None):
        s = settings if settings is not None else self.settings
        out = []
        for sec, kv in s.items():
            out.append(f"[{sec}]")
            out.extend(f"{k} = {v}" for k, v in kv.items())
            out.append("")
        return "\n".join(out)

    def write_config(self, text=None, settings=None):
        """Write the config file: text as given, or rendered from settings
        (merged over the current ones), or the current settings."""
        if settings is not None:
            for sec, kv in settings.items():
                for k, v in kv.items():
                    if v is None:
                        self.settings.setdefault(sec, {}).pop(k, None)
                    else:
                        self.settings.setdefault(sec, {})[k] = str(v)
        if text is None:
            text = self.config_text()
        return self._write(os.path.basename(self.conf), text)

    # ---- environment ---------------------------------------------------
    def san_dir(self):
        """Where every process writes its sanitizer reports: a sticky,
        world-writable directory, because workers run as nobody and could
        not create a file in DIR (0711, root) — a report lost that way
        would let a crashing worker pass a test."""
        d = self.path("sanlogs")
        if not os.path.isdir(d):
            os.makedirs(d)
            os.chmod(d, 0o1777)
        return d

    def env(self):
        """The daemon's environment: sanitizer reports into DIR/sanlogs/san.*."""
        env = dict(os.environ)
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            opts = [o for o in env.get(var, "").split(":") if o and not o.startswith("log_path=")]
            opts.append("log_path=" + os.path.join(self.san_dir(), "san"))
            env[var] = ":".join(opts)
        # a test's own additions: sanitizer options are appended (the last
        # occurrence of an option wins), other variables replaced
        for k, v in getattr(self, "extra_env", {}).items():
            env[k] = env[k] + ":" + v if k.endswith("_OPTIONS") and env.get(k) else v
        return env

    def sanitizer_reports(self):
        """Every sanitizer report of this proxy's processes. A file that
        says only that LeakSanitizer could not run its exit-time leak scan
        ("has encountered a fatal error": its ptrace-based stop of the
        process failed) holds no finding — ASan/UBSan errors abort at the
        moment they happen — so it is not a report; it is surfaced as a
        pytest warning instead, so it stays visible."""
        import warnings
        out = []
        for f in sorted(glob.glob(self.path("san.*")) +
                        glob.glob(os.path.join(self.san_dir(), "san.*"))):
            with open(f, errors="replace") as fh:
                text = fh.read()
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if lines and all("LeakSanitizer has encountered a fatal error" in ln or
                             "HINT: " in ln for ln in lines):
                warnings.warn(f"{f}: LeakSanitizer could not run its leak scan at exit")
                continue
            out.append(f"{f}:\n{text}")
        return out

    # ---- running -------------------------------------------------------
    def run(self, args, expected_code=0, expected_msg=None, timeout=60):
        """run() with this proxy's environment (sanitizer logs included)."""
        return run(args, expected_code, expected_msg, env=self.env(), timeout=timeout)

    def start(self, args=(), wait_ready=True, timeout=30):
        """Start `EKP_BIN -c CONF [args]` and wait for generation 1 to be
        ready (every child reported IPC_READY)."""
        if self.proc is not None:
            raise ProxyError("proxy already started")
        self._console_fh = open(self.console, "ab")
        self.proc = subprocess.Popen([self.binary or binary(), "-c", self.conf] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=self._console_fh,
                                     stderr=subprocess.STDOUT, env=self.env(),
                                     cwd=self.dir)
        self._pid = self.proc.pid
        if wait_ready:
            self.wait_ready(1, timeout)
        return self

    def start_daemon(self, pid_file=None, timeout=30):
        """`-d`: the launcher must exit 0 once the daemon is up; the pid is
        then read from pid_file (set in the config)."""
        self.pid_file = pid_file or self.path("ekp.pid")
        self.write_config(settings={"server": {"pid_file": self.pid_file}})
        p = self.run(["-d", "-c", self.conf], expected_code=0, timeout=timeout)
        with open(self.pid_file) as f:
            self._pid = int(f.read().strip())
        self.wait_ready(1, timeout)
        return p

    def wait_ready(self, generation, timeout=30):
        m = self.wait_for_log(rf"generation {generation} ready: kcd pid (\d+), (\d+) workers",
                              timeout)
        self.known_children.update(c["pid"] for c in self.children())
        return m

    @property
    def pid(self):
        return self._pid

    def log_text(self, path=None):
        """The error log (or another file of this proxy) as text; '' when
        it does not exist yet."""
        try:
            with open(path or self.error_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def console_text(self):
        return self.log_text(self.console)

    def _tail(self, text, n=40):
        return "\n".join(text.splitlines()[-n:])

    def wait_for_log(self, regex, timeout=10, path=None, count=1):
        """Wait until regex matches in the error log (at least count times);
        returns the last match. Fails with the log's tail, and notes when
        the daemon died meanwhile."""
        rx = re.compile(regex, re.M)
        end = time.monotonic() + timeout
        while True:
            text = self.log_text(path)
            found = list(rx.finditer(text))
            if len(found) >= count:
                return found[-1]
            if self.proc is not None and self.proc.poll() is not None:
                raise ProxyError(f"eas-kcd-proxy exited ({self.proc.returncode}) before "
                                 f"logging {regex!r}\nlog:\n{self._tail(text)}\n"
                                 f"console:\n{self._tail(self.console_text())}")
            if time.monotonic() > end:
                raise ProxyError(f"no {regex!r} in the log after {timeout}s "
                                 f"({len(found)} of {count})\nlog:\n{self._tail(text)}")
            time.sleep(0.05)

    def children(self):
        """The parent's live children from /proc: dicts with pid, comm
        (ekp-kcd, ekp-worker-N), uid (real), euid, gid and state."""
        out = []
        if self._pid is None:
            return out
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            st = proc_status(d)
            if st is None or st.get("PPid") != str(self._pid) or st.get("State", "").startswith("Z"):
                continue
            uids = st["Uid"].split()
            gids = st["Gid"].split()
            out.append({"pid": int(d), "comm": st.get("Name", ""), "uid": int(uids[0]),
                        "euid": int(uids[1]), "gid": int(gids[0]),
                        "groups": st.get("Groups", ""), "state": st.get("State", "")})
        out.sort(key=lambda c: c["comm"])
        self.known_children.update(c["pid"] for c in out)
        return out

    def child(self, comm):
        """The one live child named comm (ekp-kcd, ekp-worker-0)."""
        found = [c for c in self.children() if c["comm"] == comm]
        if len(found) != 1:
            raise ProxyError(f"expected one {comm} child, found {found}")
        return found[0]

    def wait_children(self, expect, timeout=15):
        """Wait until the children are exactly the comm names in expect
        (a list); returns them."""
        want = sorted(expect)

        def ok():
            ch = self.children()
            return ch if sorted(c["comm"] for c in ch) == want else None
        return wait_until(ok, timeout, f"children {want} (have "
                          f"{[c['comm'] for c in self.children()]})")

    def expected_comms(self, workers):
        return ["ekp-kcd"] + [f"ekp-worker-{i}" for i in range(workers)]

    def signal(self, sig):
        os.kill(self._pid, sig)

    def exited(self):
        """Exit status when the daemon has exited, else None."""
        if self.proc is not None:
            return self.proc.poll()
        return None if alive(self._pid) else 0

    def wait_exit(self, timeout):
        """Wait for the daemon to exit; returns its status (for -d, where
        the daemon is not our child, 0 once the pid is gone)."""
        if self.proc is not None:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise ProxyError(f"eas-kcd-proxy pid {self._pid} still running after {timeout}s")
        wait_until(lambda: not alive(self._pid), timeout, f"pid {self._pid} to exit")
        return 0

    def stop(self, timeout=30, check_sanitizers=True):
        """SIGTERM, wait up to timeout, then SIGKILL (by pid) the parent and
        any child seen so far that is still alive. Returns the exit status
        (None when it had to be killed). A sanitizer report fails."""
        rc = None
        if self._pid is not None and self.exited() is None:
            try:
                os.kill(self._pid, signal.SIGTERM)
                rc = self.wait_exit(timeout)
            except ProxyError:
                os.kill(self._pid, signal.SIGKILL)
                if self.proc is not None:
                    self.proc.wait(10)
                rc = None
            except ProcessLookupError:
                pass
        elif self.proc is not None:
            rc = self.proc.poll()
        for pid in self.known_children:
            st = proc_status(pid)
            if st is not None and st.get("PPid") in (str(self._pid), "1") and \
                    st.get("Name", "").startswith("ekp-"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._console_fh is not None:
            self._console_fh.close()
            self._console_fh = None
        reports = self.sanitizer_reports() if check_sanitizers else []
        if reports:
            raise ProxyError("sanitizer reports:\n" + "\n".join(reports))
        return rc

    def cleanup(self):
        """Stop (without raising) and remove the directory unless keep."""
        try:
            self.stop(check_sanitizers=False)
        finally:
            if not self.keep:
                shutil.rmtree(self.dir, ignore_errors=True)


def lab_settings(lab):
    """Settings that put a Proxy in front of a started lab.Lab: the proxy's
    keytab and the lab's krb5.conf for kcd, Apache (HTTPS, verified against
    the lab's server CA) as the one backend server."""
    return {
        "kerberos": {"keytab": lab.keytab(lab.PROXY),
                     "principal": lab.PROXY + "@" + lab.realm,
                     "krb5_conf": lab.krb5_conf},
        "backend": {"servers": f"{lab.BACKEND_HOST}:{lab.backend_port}",
                    "connect_to": f"127.0.0.1:{lab.backend_port}",
                    "ca": lab.backend_ca,
                    "spn": lab.EXCHANGE},
    }


def lab_proxy(lab, workers=1, settings=None, access_format="json", **kw):
    """A Proxy (not started) in front of lab (see lab_settings), with its
    access log at p.access_log (JSON lines by default; read them with
    access_records(p)). settings are merged over the lab's. Other keyword
    arguments go to Proxy()."""
    merged = lab_settings(lab)
    for sec, kv in (settings or {}).items():
        merged.setdefault(sec, {}).update(kv)
    p = Proxy(workers=workers, settings=merged, **kw)
    p.access_log = p.path("access.log")
    p.write_config(settings={"log": {"access_log": p.access_log,
                                     "access_format": access_format}})
    return p


def access_records(p):
    """The JSON access-log records of p so far (a list of dicts). Workers
    write their lines about once a second: wait for what you expect."""
    try:
        with open(p.access_log) as f:
            return [json.loads(ln) for ln in f if ln.startswith("{")]
    except FileNotFoundError:
        return []


def nobody_uid():
    return pwd.getpwnam("nobody").pw_uid
