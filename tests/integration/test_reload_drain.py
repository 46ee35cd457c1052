"""Reload (SIGHUP) and drain (SIGTERM) with requests parked at the backend
(SPEC §2, docs/architecture.md "Reload is a new generation"), against the
lab's real KDC and Apache, whose /sleep handler answers after N seconds
like a Ping that is answered.

Each device connection comes from its own loopback address (127.0.0.x), so
the error log's "[pid] worker debug stream: 127.0.0.x: certificate maps
to ..." line names the worker process that served it.

A reload whose new kcd fails at start (a keytab readable by every user,
which config.c only warns about and kcd refuses; a kcd that never reports
ready) is abandoned before any worker of the new generation exists: devices
connecting in a loop all through it are answered by the old generation.
A reload whose new worker cannot start (a certificate that does not load)
is abandoned as well. The "reload failed" line names the child's cause
(its own error line's text), so an admin reading or grepping that line
alone sees why; so does the restart line of a worker that cannot start
when there is no older generation to keep serving.
"""
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.request

import pytest

import device
from ekp import access_records, alive, lab_proxy, listening_inodes, stop_all, wait_until
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

PARK_SECONDS = 7


@pytest.fixture
def make_lab_proxy(lab):  # noqa: F811
    made = []

    def make(**kw):
        p = lab_proxy(lab, **kw)
        made.append(p)
        return p

    yield make
    stop_all(made)


class Parked:
    """A request parked at the backend for `seconds`, sent from source in a
    thread; .result is a device.Response or the exception it ended with."""

    def __init__(self, p, source, seconds=PARK_SECONDS, dev="PARKED"):
        self.p = p
        self.source = source
        self.dev = dev
        self.result = None
        self.conn = device.Connection(p.port, p.device_cert("alice"), p.server_ca.cert,
                                      source=source, timeout=seconds + 60)
        self.target = device.sleep_target(seconds, device=dev)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            self.result = self.conn.request(self.target)
        except Exception as e:      # the test inspects it
            self.result = e
        finally:
            self.conn.close()

    def wait(self, timeout=PARK_SECONDS + 60):
        self.t.join(timeout)
        assert not self.t.is_alive(), f"the parked request from {self.source} never ended"
        return self.result


def metric(p, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def wait_parked(p, n=1):
    """Until n requests wait for their answer at the backend."""
    def ok():
        try:
            return metric(p, "eas_kcd_proxy_parked_requests") == n
        except OSError:
            return False
    wait_until(ok, 20, f"{n} parked request(s) in /metrics")


def served_by(p, source):
    """The pid of the worker that mapped the certificate of source's
    connection."""
    m = p.wait_for_log(rf"\[(\d+)\] worker debug stream: {re.escape(source)}: certificate maps to")
    return int(m.group(1))


def workers(p):
    return {c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")}


def record(p, dev):
    return wait_until(lambda: [r for r in access_records(p) if r["device_id"] == dev], 15,
                      f"the access record of {dev}")[-1]


def header(resp, name):
    return next((v for k, v in resp.headers if k.lower() == name.lower()), None)


def test_a_parked_request_survives_a_reload_and_new_connections_use_the_new_generation(
        make_lab_proxy):
    p = make_lab_proxy(workers=2, settings={"server": {"shutdown_timeout": "60s"}}).start()
    gen1 = workers(p)
    parked = Parked(p, "127.0.0.2")
    wait_parked(p)
    old = served_by(p, "127.0.0.2")
    assert old in gen1

    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    p.wait_for_log(r"generation 1: draining")
    gen2 = workers(p) - gen1
    assert len(gen2) == 2, f"generation 2 workers: {workers(p)} (generation 1: {gen1})"

    # a new device connection goes to a new worker
    r = device.request(p.port, p.device_cert("bob"), p.server_ca.cert,
                       device.eas_target("Sync", user="bob", device="AFTER"), source="127.0.0.3")
    assert r.status == 200 and r.json()["remote_user"] == "bob@EXAMPLE.TEST"
    assert served_by(p, "127.0.0.3") in gen2

    # the parked request is answered by the old worker, on its old connection
    res = parked.wait()
    assert isinstance(res, device.Response), f"parked request failed: {res!r}"
    assert res.status == 200, res.body[:300]
    assert res.json()["remote_user"] == "alice@EXAMPLE.TEST"
    assert res.json()["path_info"] == "/sleep"
    # the draining worker keeps nothing alive: it says so
    assert (header(res, "Connection") or "").lower() == "close", res.headers
    rec = record(p, "PARKED")
    assert rec["status"] == 200 and rec["reason"] == "ok", rec
    assert rec["c_ip"] == "127.0.0.2", rec

    # then the old worker, and generation 1, are gone; it exited cleanly
    p.wait_for_log(rf"worker \d \(pid {old}, generation 1\) exited with status 0")
    p.wait_for_log(r"generation 1 finished")
    wait_until(lambda: not alive(old), 10, f"old worker {old} to exit")
    assert workers(p) == gen2
    assert "killing it" not in p.log_text()


def test_an_invalid_config_on_reload_changes_nothing_while_a_request_is_parked(make_lab_proxy):
    p = make_lab_proxy(workers=2).start()
    before = {c["pid"] for c in p.children()}
    parked = Parked(p, "127.0.0.4")
    wait_parked(p)

    good = p.config_text()
    lines = good.splitlines()
    i = lines.index("[server]")
    lines.insert(i + 1, "listen_backlog = 128")
    p.write_config("\n".join(lines) + "\n")
    p.signal(signal.SIGHUP)
    p.wait_for_log(rf"error config: {re.escape(p.conf)}:{i + 2}: .*listen_backlog")
    p.wait_for_log(r"reload refused: the configuration has errors; generation 1 keeps serving")

    # the old generation serves a new device ...
    r = device.request(p.port, p.device_cert("bob"), p.server_ca.cert,
                       device.eas_target("Sync", user="bob", device="DURING"), source="127.0.0.5")
    assert r.status == 200 and r.json()["remote_user"] == "bob@EXAMPLE.TEST"
    assert served_by(p, "127.0.0.5") in before
    # ... and answers the parked one, keeping its connection
    res = parked.wait()
    assert isinstance(res, device.Response), f"parked request failed: {res!r}"
    assert res.status == 200 and res.json()["remote_user"] == "alice@EXAMPLE.TEST"
    assert (header(res, "Connection") or "").lower() != "close", res.headers
    assert {c["pid"] for c in p.children()} == before
    assert "generation 2" not in p.log_text()


def test_sigterm_lets_a_parked_request_finish_within_shutdown_timeout(make_lab_proxy):
    p = make_lab_proxy(workers=1, settings={"server": {"shutdown_timeout": "60s"}}).start()
    kids = [c["pid"] for c in p.children()]
    parked = Parked(p, "127.0.0.6", seconds=PARK_SECONDS, dev="DRAINED")
    wait_parked(p)
    p.signal(signal.SIGTERM)
    p.wait_for_log(r"SIGTERM: draining")
    # the listening socket is closed at once, while the parked request
    # still waits: a load balancer sees the instance refuse new connections
    # instead of queueing them where nobody accepts any more
    wait_until(lambda: not listening_inodes(p.port), 10, "the listening socket to close")
    assert parked.t.is_alive(), "the listener closed only after the parked request ended"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p.port), timeout=5).close()
    res = parked.wait()
    assert isinstance(res, device.Response), f"parked request failed: {res!r}"
    assert res.status == 200 and res.json()["remote_user"] == "alice@EXAMPLE.TEST"
    assert (header(res, "Connection") or "").lower() == "close", res.headers
    assert p.wait_exit(30) == 0
    rec = record(p, "DRAINED")
    assert rec["status"] == 200 and rec["reason"] == "ok", rec
    for pid in kids:
        assert not alive(pid)
    assert "killing it" not in p.log_text()
    assert re.search(r"info proc: stopped$", p.log_text(), re.M)


def test_sigterm_closes_a_request_still_parked_at_shutdown_timeout(make_lab_proxy):
    p = make_lab_proxy(workers=1, settings={"server": {"shutdown_timeout": "2s"}}).start()
    kids = [c["pid"] for c in p.children()]
    parked = Parked(p, "127.0.0.7", seconds=30, dev="CUTOFF")
    wait_parked(p)
    p.signal(signal.SIGTERM)
    assert p.wait_exit(30) == 0
    res = parked.wait()
    assert isinstance(res, device.Refused), f"expected the connection closed, got {res!r}"
    rec = record(p, "CUTOFF")
    assert rec["reason"] == "shutdown", rec
    assert rec["status"] == 0 and rec["username"] == "alice@EXAMPLE.TEST", rec
    log = p.log_text()
    assert re.search(r"worker 0\b.*: drain deadline reached with 1 connections open", log), log[-3000:]
    assert re.search(r"127\.0\.0\.7: connection closed: shutdown", log), log[-3000:]
    # the worker closed it and exited by itself: nothing had to be killed
    assert "killing it" not in log, log[-3000:]
    assert re.search(r"info proc: stopped$", log, re.M)
    for pid in kids:
        assert not alive(pid)


def test_sigterm_during_a_reload_drain_shortens_the_old_generations_deadline(make_lab_proxy):
    """Generation 1 drains a parked request with its 60 s shutdown_timeout
    when SIGTERM comes under the reloaded 2 s one: the old worker must learn
    the earlier deadline and close (and log) the request itself, not be
    killed with it."""
    p = make_lab_proxy(workers=1, settings={"server": {"shutdown_timeout": "60s"}}).start()
    parked = Parked(p, "127.0.0.8", seconds=30, dev="OLDGEN")
    wait_parked(p)
    old = served_by(p, "127.0.0.8")
    p.write_config(settings={"server": {"shutdown_timeout": "2s"}})
    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    p.wait_for_log(r"generation 1: draining, deadline in \d+ ms")
    p.signal(signal.SIGTERM)
    assert p.wait_exit(30) == 0
    res = parked.wait()
    assert isinstance(res, device.Refused), f"expected the connection closed, got {res!r}"
    rec = record(p, "OLDGEN")
    assert rec["reason"] == "shutdown", rec
    log = p.log_text()
    assert re.search(r"generation 1: drain deadline now in \d+ ms", log), log[-3000:]
    assert re.search(rf"worker 0 \(pid {old}, generation 1\) exited with status 0", log), log[-3000:]
    assert "killing it" not in log, log[-3000:]


# ---------------------------------------------------- a reload whose kcd fails --

class DeviceLoop:
    """New device connections from source, one after another, in a thread,
    until stop(): .results holds a device.Response or the exception of each
    request. Every request is a fresh connection (so a worker that accepts
    anything during the reload would get some of them)."""

    def __init__(self, p, source, dev):
        self.p = p
        self.source = source
        self.dev = dev
        self.results = []
        self.stopping = False
        self.cert = p.device_cert("alice")
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping:
            try:
                r = device.request(self.p.port, self.cert, self.p.server_ca.cert,
                                   device.eas_target("Sync", user="alice", device=self.dev),
                                   source=self.source, timeout=30)
            except Exception as e:      # the test inspects it
                r = e
            self.results.append(r)

    def wait_for(self, n, timeout=30):
        wait_until(lambda: len(self.results) >= n, timeout, f"{n} device requests from {self.source}")

    def stop(self):
        self.stopping = True
        self.t.join(60)
        assert not self.t.is_alive(), "the device loop did not end"
        return self.results


def metrics_text(p):
    with urllib.request.urlopen(f"http://127.0.0.1:{p.admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


def answered_by_old_generation(p, loop, gen1):
    """Every request of loop answered 200 by a worker of gen1 (pids), each
    exactly once in the error log and the access log, nothing else counted."""
    results = loop.results
    bad = [r for r in results if not (isinstance(r, device.Response) and r.status == 200)]
    assert not bad, f"{len(bad)} of {len(results)} device requests failed: {bad[:3]}"
    served = [int(m.group(1)) for m in re.finditer(
        rf"\[(\d+)\] worker debug stream: {re.escape(loop.source)}: certificate maps to",
        p.log_text(), re.M)]
    assert len(served) == len(results), (len(served), len(results))
    assert set(served) <= gen1, f"served by {set(served) - gen1}, not generation 1 {gen1}"
    recs = wait_until(lambda: (lambda r: r if len(r) == len(results) else None)(
        [r for r in access_records(p) if r["device_id"] == loop.dev]), 15,
        f"{len(results)} access records of {loop.dev}")
    assert all(r["status"] == 200 and r["reason"] == "ok" for r in recs), \
        [r for r in recs if r["status"] != 200][:3]
    # nothing accepted anywhere else: every handshake and request counted
    # is one of the loop's, answered ok
    text = metrics_text(p)
    hs = re.search(r"^eas_kcd_proxy_tls_handshakes_total (\d+)$", text, re.M)
    assert hs and int(hs.group(1)) == len(results), (hs and hs.group(0), len(results))
    reqs = re.findall(r'^eas_kcd_proxy_requests_total\{reason="([^"]+)",status="([^"]+)"\} (\d+)$',
                      text, re.M)
    assert {(r, s) for r, s, n in reqs if int(n)} == {("ok", "2xx")}, reqs
    assert sum(int(n) for *_, n in reqs) == len(results), (reqs, len(results))


def own_refusal(ln):
    """(pid, message) of a kcd's or a worker's own error line, ln."""
    m = re.search(r"\[(\d+)\] (?:kcd error kcd|worker error front: worker \d+): (.*)$", ln)
    assert m, f"not a kcd or worker error line: {ln}"
    return int(m.group(1)), m.group(2)


def failed_reload(p, generation, child):
    """(pid, cause) of the child (kcd, worker K) of generation whose start
    failed: once that generation is finished, the error lines since the
    SIGHUP are the child's own line and the parent's "reload failed" line,
    which names the same pid and the same cause, word for word."""
    p.wait_for_log(rf"reload failed: {child} \(pid \d+\) of generation {generation} ", 20)
    p.wait_for_log(rf"generation {generation} finished", 20)
    errors = errors_after_sighup(p)
    assert len(errors) == 2, errors
    pid, cause = own_refusal(errors[0])
    m = re.search(rf"proc: reload failed: {child} \(pid (\d+)\) of generation {generation} "
                  r"exited with status 1 during start-up: (.*); the previous generation "
                  r"keeps serving$", errors[1])
    assert m and (int(m.group(1)), m.group(2)) == (pid, cause), errors
    return pid, cause


def errors_after_sighup(p):
    """The error-level lines of the log from the (last) SIGHUP on."""
    log = p.log_text()
    log = log[log.rindex("SIGHUP: reloading"):]
    return [ln for ln in log.splitlines() if re.search(r"\] \w+ error ", ln)]


def no_worker_of(p, generation):
    log = p.log_text()
    assert not re.search(rf"started worker \d+ \(pid \d+, generation {generation}\)", log), \
        f"a worker of generation {generation} was started:\n{log[-3000:]}"
    assert not re.search(rf"\(generation {generation}\) accepting", log), log[-3000:]


def good_reload_works(p, settings, generation, gen1):
    """A later reload to settings starts generation, whose new workers
    answer a new device."""
    p.write_config(settings=settings)
    p.signal(signal.SIGHUP)
    p.wait_ready(generation, timeout=30)
    p.wait_for_log(rf"generation {generation} ready")
    fresh = workers(p) - gen1
    r = device.request(p.port, p.device_cert("bob"), p.server_ca.cert,
                       device.eas_target("Sync", user="bob", device="LATER"), source="127.0.0.12")
    assert r.status == 200 and r.json()["remote_user"] == "bob@EXAMPLE.TEST", r.status
    assert served_by(p, "127.0.0.12") in fresh


def test_a_reload_whose_kcd_refuses_the_keytab_never_accepts_a_device(make_lab_proxy):
    """The new kcd refuses a keytab readable by every user (config.c only
    warns). The reload is abandoned before any worker of generation 2 is
    started, so no device lands on a worker without a kcd: devices
    connecting in a loop throughout are all answered 200 by generation 1;
    the error log names the cause once and the failure once; a later good
    reload works."""
    p = make_lab_proxy(workers=2).start()
    good = p.settings["kerberos"]["keytab"]
    before = {c["pid"] for c in p.children()}
    gen1 = workers(p)
    bad = p.path("world-readable.keytab")
    shutil.copyfile(good, bad)
    os.chmod(bad, 0o644)
    loop = DeviceLoop(p, "127.0.0.10", "LOOPKEYTAB")
    try:
        loop.wait_for(3)
        p.write_config(settings={"kerberos": {"keytab": bad}})
        p.signal(signal.SIGHUP)
        _, cause = failed_reload(p, 2, "kcd")
        n = len(loop.results)
        loop.wait_for(n + 3)
    finally:
        loop.stop()
    answered_by_old_generation(p, loop, gen1)
    no_worker_of(p, 2)
    assert cause.startswith(f"keytab '{bad}' is readable by every user "), cause
    assert len(errors_after_sighup(p)) == 2, errors_after_sighup(p)
    assert {c["pid"] for c in p.children()} == before
    good_reload_works(p, {"kerberos": {"keytab": good}}, 3, gen1)


def test_every_failed_reload_names_its_kcds_cause(make_lab_proxy):
    """A kcd that refuses to start says why on its control channel just
    before it exits; the parent may see the exit (SIGCHLD) before it reads
    the channel, or after. Over several failed reloads in a row, each
    "reload failed" line names its own kcd's cause, the text of that kcd's
    error line (here: two keytabs, each named on its own reload's line);
    generation 1 serves throughout."""
    p = make_lab_proxy(workers=1).start()
    good = p.settings["kerberos"]["keytab"]
    before = {c["pid"] for c in p.children()}
    bad = []
    for i, mode in enumerate((0o644, 0o606)):
        path = p.path(f"open-{i}.keytab")
        shutil.copyfile(good, path)
        os.chmod(path, mode)
        bad.append(path)
    for generation in range(2, 8):
        path = bad[generation % 2]
        p.write_config(settings={"kerberos": {"keytab": path}})
        p.signal(signal.SIGHUP)
        _, cause = failed_reload(p, generation, "kcd")
        assert cause.startswith(f"keytab '{path}' is "), cause
        assert "by every user" in cause, cause
    assert {c["pid"] for c in p.children()} == before
    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       device.eas_target("Sync", user="alice", device="AFTER"),
                       source="127.0.0.15")
    assert r.status == 200, r.status


def junk_certificate(p, name):
    """A file in p's directory that is no certificate (the parent does not
    read TLS files; a worker does, at start)."""
    path = p.path(name)
    with open(path, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    return path


def test_a_reload_whose_worker_cannot_start_names_its_cause(make_lab_proxy):
    """The new generation's kcd starts, its worker cannot load the server
    certificate (the parent never reads TLS files). The worker tells the
    parent why before it exits: the "reload failed" line names that worker
    and its cause, the text of its own error line; generation 1 keeps
    serving; a later good reload works."""
    p = make_lab_proxy(workers=1).start()
    gen1 = workers(p)
    good = p.settings["tls"]["certificate"]
    bad = junk_certificate(p, "junk.pem")
    p.write_config(settings={"tls": {"certificate": bad}})
    p.signal(signal.SIGHUP)
    _, cause = failed_reload(p, 2, "worker 0")
    assert cause.startswith(f"certificate {bad}: "), cause
    assert workers(p) == gen1
    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       device.eas_target("Sync", user="alice", device="STILLONE"),
                       source="127.0.0.16")
    assert r.status == 200, r.status
    assert served_by(p, "127.0.0.16") in gen1
    good_reload_works(p, {"tls": {"certificate": good}}, 3, gen1)


def test_a_worker_that_cannot_start_is_restarted_naming_its_cause_until_it_can(make_lab_proxy):
    """At start-up there is no older generation to fall back on: a worker
    that cannot load the server certificate is restarted with back-off,
    and each restart line names its cause, the text of the worker's own
    error line. Once the file is good, the next restart comes up and
    devices are served."""
    p = make_lab_proxy(workers=1)
    good = p.settings["tls"]["certificate"]
    good = good if os.path.isabs(good) else p.path(good)
    cert = junk_certificate(p, "later.pem")
    p.write_config(settings={"tls": {"certificate": cert}})
    p.start(wait_ready=False)
    rx = (r"\[\d+\] main error proc: worker 0 \(pid (\d+), generation 1\) exited with status 1 "
          r"after \d+ ms during start-up: (.*); restarting in \d+ ms$")
    p.wait_for_log(rx, 20, count=2)
    text = p.log_text()
    for m in re.finditer(rx, text, re.M):
        own = re.search(rf"\[{m.group(1)}\] worker error front: worker 0: (.*)$", text, re.M)
        assert own and own.group(1) == m.group(2) and cert in m.group(2), text[-3000:]
    shutil.copyfile(good, cert)
    p.wait_ready(1, timeout=30)
    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       device.eas_target("Sync", user="alice", device="CAMEUP"),
                       source="127.0.0.17")
    assert r.status == 200, r.status


def test_a_reload_whose_kcd_never_reports_ready_is_abandoned_in_time(make_lab_proxy, lab):  # noqa: F811
    """The new kcd hangs at start (its krb5.conf includes a FIFO nobody
    writes: libkrb5 blocks opening it). No worker of generation 2 is
    started while its kcd is not ready; after the bound the reload is
    abandoned, the hung kcd killed, and generation 1 answered every device
    throughout; a later good reload works."""
    p = make_lab_proxy(workers=2).start()
    before = {c["pid"] for c in p.children()}
    gen1 = workers(p)
    fifo = p.path("hang.fifo")
    os.mkfifo(fifo, 0o600)
    hang = p.path("krb5-hang.conf")
    with open(lab.krb5_conf) as src, open(hang, "w") as out:
        out.write(f"include {fifo}\n\n" + src.read())
    loop = DeviceLoop(p, "127.0.0.11", "LOOPHANG")
    try:
        loop.wait_for(3)
        p.write_config(settings={"kerberos": {"krb5_conf": hang}})
        p.signal(signal.SIGHUP)
        m = p.wait_for_log(r"started kcd \(pid (\d+), generation 2\)", 20)
        kcd2 = int(m.group(1))
        time.sleep(2)
        # kcd 2 is stuck before READY: nothing of generation 2 but it runs
        assert {c["pid"] for c in p.children()} == before | {kcd2}, p.children()
        no_worker_of(p, 2)
        p.wait_for_log(r"reload failed: generation 2: kcd \(pid \d+\) not ready within \d+ ms, "
                       r"killed; the previous generation keeps serving", 30)
        p.wait_for_log(r"generation 2 finished", 20)
        n = len(loop.results)
        loop.wait_for(n + 3)
    finally:
        loop.stop()
    answered_by_old_generation(p, loop, gen1)
    no_worker_of(p, 2)
    errors = errors_after_sighup(p)
    assert len(errors) == 1 and "reload failed" in errors[0], errors
    assert {c["pid"] for c in p.children()} == before
    good_reload_works(p, {"kerberos": {"krb5_conf": lab.krb5_conf}}, 3, gen1)


# ------------------------------------- the same through the embedding library --

def embedded_answered_by_old_generation(p, loop):
    results = loop.results
    bad = [r for r in results if not (isinstance(r, device.Response) and r.status == 200)]
    assert not bad, f"{len(bad)} of {len(results)} device requests failed: {bad[:3]}"
    recs = wait_until(lambda: (lambda r: r if len(r) == len(results) else None)(
        [r for r in access_records(p) if r["device_id"] == loop.dev]), 15,
        f"{len(results)} access records of {loop.dev}")
    assert all(r["status"] == 200 and r["reason"] == "ok" for r in recs), recs[:3]
    assert not re.search(r"embed: generation 2 serving", p.log_text()), p.log_text()[-3000:]


@pytest.mark.parametrize("case", ["world_readable_keytab_process", "world_readable_keytab_thread",
                                  "hung_kcd_process"])
def test_an_embedded_reload_whose_kcd_fails_keeps_the_serving_generation(lab, case):  # noqa: F811
    """mdm-gateway (the embedding library on the example's loop): a reload
    whose kcd refuses the keytab (kcd as a helper process or a thread), or
    whose kcd process hangs before READY, is abandoned; its worker never
    accepts, devices looping throughout are answered by generation 1, the
    failure is logged once; a later good reload serves."""
    from test_embed import start_gateway, built
    args = ["-t"] if case.endswith("_thread") else []
    p = start_gateway(lab, built("san", "examples", "mdm-gateway"), args=args,
                      allow=("LOOPEMBED", "LATER"))
    try:
        good = dict(p.settings["kerberos"])
        if case.startswith("world_readable"):
            bad = p.path("world-readable.keytab")
            shutil.copyfile(good["keytab"], bad)
            os.chmod(bad, 0o644)
            change = {"kerberos": {"keytab": bad}}
            # kcd refuses at once: the reload call may still be handing it
            # the worker's channel (and fail), or have returned already
            # the line names kcd's own cause either way
            failed = (r"reload failed: generation 2: kcd exited (before it was ready "
                      r"\([^)]*\)|at start, before it took its channel to the worker): "
                      r"keytab '" + re.escape(bad) + r"' is readable by every user .*; "
                      r"generation 1 keeps serving")
        else:
            fifo = p.path("hang.fifo")
            os.mkfifo(fifo, 0o600)
            hang = p.path("krb5-hang.conf")
            with open(lab.krb5_conf) as src, open(hang, "w") as out:
                out.write(f"include {fifo}\n\n" + src.read())
            change = {"kerberos": {"krb5_conf": hang}}
            failed = (r"reload failed: generation 2: kcd not ready within \d+ ms, killed; "
                      r"generation 1 keeps serving")
        loop = DeviceLoop(p, "127.0.0.13", "LOOPEMBED")
        try:
            loop.wait_for(3)
            p.write_config(settings=change)
            p.signal(signal.SIGHUP)
            m = p.wait_for_log(failed, 30)
            if "exited at start" not in m.group(0):
                # given up after the call returned (else it freed it at once)
                p.wait_for_log(r"embed: generation 2 finished", 20)
            n = len(loop.results)
            loop.wait_for(n + 3)
        finally:
            loop.stop()
        embedded_answered_by_old_generation(p, loop)
        log = p.log_text()
        assert len(re.findall(r"reload failed", log)) == 1, log[-3000:]
        if case.startswith("world_readable"):
            assert len(re.findall(r"kcd: keytab '" + re.escape(bad) +
                                  r"' is readable by every user", log)) == 1, log[-3000:]
        p.write_config(settings={"kerberos": good})
        p.signal(signal.SIGHUP)
        p.wait_for_log(r"embed: generation 3 serving", 30)
        r = device.request(p.port, p.device_cert("bob"), p.server_ca.cert,
                           device.eas_target("Sync", user="bob", device="LATER"),
                           source="127.0.0.14")
        assert r.status == 200 and r.json()["remote_user"] == "bob@EXAMPLE.TEST", r.status
    finally:
        stop_all([p])
