"""Reload (SIGHUP) and drain (SIGTERM) with requests parked at the backend
(SPEC §2, docs/architecture.md "Reload is a new generation"), against the
lab's real KDC and Apache, whose /sleep handler answers after N seconds
like a Ping that is answered.

Each device connection comes from its own loopback address (127.0.0.x), so
the error log's "[pid] worker debug stream: 127.0.0.x: certificate maps
to ..." line names the worker process that served it.
"""
import re
import signal
import socket
import threading
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
