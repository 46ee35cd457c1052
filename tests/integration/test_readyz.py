"""/readyz and the proxy's own TGT (SPEC §8, issue #7): ready means "kcd
holds the proxy's TGT and a backend server is up".

kcd acquires the TGT at start, on its KDC pool (an AS exchange for the
[kerberos] principal from the keytab), keeps retrying while it has none and
renews it before its end; the admin listener reads the result from kcd's
metrics slot. Pinned down against the lab's real KDC: ready with a good
keytab and no device traffic at all, and the first device request then
needs no AS exchange of its own; not ready, with the cause in the body,
when the keytab's key is stale, the principal unknown or the KDC down at
start; ready without any device traffic once the KDC is back; the
eas_kcd_proxy_kcd_tgt_* gauges agree; the proxy's AS exchanges are counted
in eas_kcd_proxy_kcd_tgt_acquisitions_total (by result), never among the S4U
exchanges of eas_kcd_proxy_kdc_requests_total; the error log says when the
TGT was obtained and why there is none.

Across a SIGHUP reload (a new generation of kcd and workers): /readyz stays
200 with a good config; a keytab the KDC refuses is never ready once its
generation serves, though the draining generation's kcd still holds a TGT;
a keytab refused before anything serves with it (missing, world-readable)
fails the reload whole and /readyz stays 200 on the old generation.
"""

import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

import device
from ekp import lab_proxy, stop_all, wait_until
from lab import PROXY, principal
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

# generous: the retry backs off to 30 s while there is no TGT
DEADLINE = 90


@pytest.fixture
def proxies():
    """Start lab proxies (one worker); stopped at teardown, sanitizer
    reports checked."""
    made = []

    def make(lab_, **kw):
        kw.setdefault("workers", 1)
        p = lab_proxy(lab_, **kw)
        made.append(p)
        return p.start()

    yield make
    stop_all(made)


def admin(p, path):
    req = urllib.request.Request(f"http://127.0.0.1:{p.admin_port}{path}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def gauge(p, name):
    """The value of an unlabelled sample in /metrics; fails when absent."""
    status, body = admin(p, "/metrics")
    assert status == 200, (status, body)
    assert f"# HELP {name} " in body and f"# TYPE {name} gauge\n" in body, body
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, f"no {name} sample in /metrics:\n{body}"
    return float(m.group(1))


def counter(p, sample):
    """The value of a counter sample ('name' or 'name{label="v"}') in
    /metrics; fails when absent."""
    status, body = admin(p, "/metrics")
    assert status == 200, (status, body)
    name = sample.split("{")[0]
    assert f"# HELP {name} " in body and f"# TYPE {name} counter\n" in body, body
    m = re.search(rf"^{re.escape(sample)} (\S+)$", body, re.M)
    assert m, f"no {sample} sample in /metrics:\n{body}"
    return float(m.group(1))


TGT_OK = 'eas_kcd_proxy_kcd_tgt_acquisitions_total{result="ok"}'
TGT_ERR = 'eas_kcd_proxy_kcd_tgt_acquisitions_total{result="error"}'
S4U_EXCHANGES = "eas_kcd_proxy_kdc_requests_total"


def wait_readyz(p, status, timeout=DEADLINE):
    """Poll /readyz until it answers status; returns the body."""
    got = []

    def check():
        got[:] = admin(p, "/readyz")
        return got[0] == status

    try:
        wait_until(check, timeout, f"/readyz {status}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last answer {got}\n{tail(p)}") from None
    return got[1]


def tail(p, n=25):
    return "\n".join(p.log_text().splitlines()[-n:])


def keytab_for(lab_, tmp_path, name):
    """A principal of the lab's with a keytab of its own under tmp_path."""
    kt = str(tmp_path / (name.split("/")[1].split(".")[0] + ".keytab"))
    lab_.kadmin_local(f"addprinc -randkey {name}", check=False)
    lab_.kadmin_local(f"ktadd -k {kt} {name}")
    return kt


def settings_for(keytab, name):
    return {"kerberos": {"keytab": keytab, "principal": principal(name)}}


def requests_seen(p):
    return re.findall(r"^eas_kcd_proxy_requests_total\{.*\} (\d+)$",
                      admin(p, "/metrics")[1], re.M)


# ------------------------------------------------------------------ ready --

def test_ready_with_a_good_keytab_before_any_device_and_the_gauges_agree(
        lab, proxies):
    as0 = lab.count_kdc_requests("AS", PROXY, status="ISSUE")
    p = proxies(lab)
    assert wait_readyz(p, 200) == "ready\n"
    now = time.time()
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 1
    end = gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds")
    # the lab's krb5.conf asks for 10-hour tickets
    assert now + 9 * 3600 < end <= now + 10 * 3600 + 60, (end, now)
    assert requests_seen(p) == [], "a device request was made"
    # exactly one AS exchange for the proxy, before any device asked, and
    # /metrics counts it as such (not as an S4U exchange)
    assert lab.count_kdc_requests("AS", PROXY, status="ISSUE") == as0 + 1
    assert (counter(p, TGT_OK), counter(p, TGT_ERR)) == (1, 0)
    assert counter(p, S4U_EXCHANGES) == 0
    assert re.search(r"obtained the TGT for " + re.escape(principal(PROXY)) +
                     r" from the keytab, valid until \d{4}-\d\d-\d\dT", p.log_text()), tail(p)
    # the first device request uses that TGT: S4U, no AS exchange of its own
    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       target=device.eas_target("Sync", "alice"), method="OPTIONS")
    assert r.status == 200, (r.status, r.body, tail(p))
    assert lab.count_kdc_requests("AS", PROXY, status="ISSUE") == as0 + 1
    assert (counter(p, TGT_OK), counter(p, TGT_ERR)) == (1, 0)
    assert counter(p, S4U_EXCHANGES) == 1
    assert counter(p, 'eas_kcd_proxy_kcd_tokens_total{route="gss"}') == 1
    assert admin(p, "/healthz") == (200, "ok\n")


# -------------------------------------------------------------- not ready --

@pytest.mark.parametrize("case,names", [
    # the keytab holds an older key than the KDC's
    ("stale_key", r"(PREAUTH_FAILED|BAD_INTEGRITY)"),
    # the principal was deleted from the KDC's database
    ("unknown_principal", r"C_PRINCIPAL_UNKNOWN"),
])
def test_not_ready_without_a_tgt_names_the_cause(lab, proxies, tmp_path, case,
                                                 names):
    name = f"HTTP/readyz-{case.replace('_', '-')}.example.test"
    kt = keytab_for(lab, tmp_path, name)
    if case == "stale_key":
        lab.kadmin_local(f"cpw -randkey {name}")
    else:
        lab.kadmin_local(f"delprinc -force {name}")
    p = proxies(lab, settings=settings_for(kt, name))
    # kcd runs and the backend is up: only the TGT is missing
    p.wait_for_log(r"no TGT for " + re.escape(principal(name)), timeout=DEADLINE)
    status, body = admin(p, "/readyz")
    assert status == 503, (status, body)
    assert re.match(r"not ready: kcd: no TGT for " + re.escape(principal(name)) +
                    r": " + names + r": ", body), body
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 0
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds") == 0
    # an error-level line with the principal and the krb5 error
    lines = [ln for ln in p.log_text().splitlines()
             if "no TGT for " + principal(name) in ln]
    assert lines and " error " in lines[0] and re.search("kdc_" + names, lines[0]), lines
    # it keeps trying, and stays not ready (never a 200 by accident)
    p.wait_for_log(r"still no TGT for " + re.escape(principal(name)), timeout=DEADLINE)
    assert admin(p, "/readyz")[0] == 503
    assert admin(p, "/healthz") == (200, "ok\n")
    # each try is a failed acquisition, none an S4U exchange
    assert counter(p, TGT_ERR) >= 2 and counter(p, TGT_OK) == 0
    assert counter(p, S4U_EXCHANGES) == 0


def test_kdc_down_at_start_then_ready_without_device_traffic(lab, proxies):
    lab.stop_kdc()
    try:
        p = proxies(lab)
        p.wait_for_log(r"no TGT for " + re.escape(principal(PROXY)), timeout=DEADLINE)
        status, body = admin(p, "/readyz")
        assert status == 503, (status, body)
        assert body.startswith("not ready: kcd: no TGT for " + principal(PROXY) + ": "), body
        assert re.search(r"KDC_UNREACH|ECONNREFUSED|TIMEOUT|SVC_UNAVAILABLE", body), body
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 0
    finally:
        lab.start_kdc()
    # no device request: kcd's own retries find the KDC again
    assert wait_readyz(p, 200) == "ready\n"
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 1
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds") > time.time()
    assert requests_seen(p) == [], "a device request was made"
    p.wait_for_log(r"obtained the TGT for " + re.escape(principal(PROXY)))
    # the tries while the KDC was down failed; the one after got it
    assert counter(p, TGT_ERR) >= 1 and counter(p, TGT_OK) == 1


# ---------------------------------------------------------------- renewal --

def short_lived(lab_, tmp_path, name, maxlife):
    """A principal whose tickets live at most maxlife (kadmin duration)."""
    kt = keytab_for(lab_, tmp_path, name)
    lab_.kadmin_local(f'modprinc -maxlife "{maxlife}" {name}')
    return kt


def test_tgt_is_renewed_before_its_end_without_device_traffic(lab, proxies,
                                                              tmp_path):
    # 310-second TGTs: kcd renews 5 minutes before the end, i.e. after about
    # 10 s, by itself, and stays ready
    name = "HTTP/readyz-renew.example.test"
    kt = short_lived(lab, tmp_path, name, "310 seconds")
    as0 = lab.count_kdc_requests("AS", name, status="ISSUE")
    p = proxies(lab, settings=settings_for(kt, name))
    assert wait_readyz(p, 200) == "ready\n"
    first = gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds")
    p.wait_for_log(r"renewed the TGT for " + re.escape(principal(name)) +
                   r", valid until \d{4}-", timeout=DEADLINE)
    assert lab.count_kdc_requests("AS", name, status="ISSUE") >= as0 + 2
    assert admin(p, "/readyz") == (200, "ready\n")
    assert counter(p, TGT_OK) >= 2 and counter(p, S4U_EXCHANGES) == 0
    assert wait_until(lambda: gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds") > first,
                      DEADLINE, "a later TGT end in /metrics")
    assert requests_seen(p) == [], "a device request was made"


def test_expired_tgt_with_the_kdc_down_is_not_ready_until_a_new_one(lab, proxies,
                                                                     tmp_path):
    # 20-second TGTs and the KDC stopped once kcd has one: the renewal
    # fails, the TGT runs out, /readyz says so; the KDC back, ready again
    name = "HTTP/readyz-expire.example.test"
    kt = short_lived(lab, tmp_path, name, "20 seconds")
    p = proxies(lab, settings=settings_for(kt, name))
    assert wait_readyz(p, 200) == "ready\n"
    lab.stop_kdc()
    try:
        expired = (r"not ready: kcd: the proxy's TGT expired at "
                   r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; renewing the TGT for " +
                   re.escape(principal(name)) + r" failed: KDC_UNREACH: ")
        body = wait_readyz(p, 503)
        assert re.match(expired, body), body
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 0
        end = gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds")
        assert 0 < end <= time.time()
        p.wait_for_log(r"error kcd: lost the TGT for " + re.escape(principal(name)) +
                       r" \(it expired at .*kdc_KDC_UNREACH", timeout=DEADLINE)
        # kcd's later retries say the same, and keep the end it had
        p.wait_for_log(r"still no TGT for " + re.escape(principal(name)), timeout=DEADLINE)
        status, body = admin(p, "/readyz")
        assert status == 503 and re.match(expired, body), (status, body)
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds") == end
    finally:
        lab.start_kdc()
    assert wait_readyz(p, 200) == "ready\n"
    p.wait_for_log(r"obtained the TGT for " + re.escape(principal(name)), count=2)
    assert requests_seen(p) == [], "a device request was made"


# -------------------------------------------------------------- embedding --

@pytest.mark.parametrize("mode", ["kcd_process", "kcd_thread"])
def test_embedded_gateway_is_ready_once_its_kcd_holds_the_tgt(lab, mode):
    # the library's admin listener reads the same kcd slot; a kcd thread
    # publishes into its own slot, not the worker's it shares a process with
    import test_embed
    p = test_embed.start_gateway(lab, test_embed.built("san", "examples", "mdm-gateway"),
                                 args=["-t"] if mode == "kcd_thread" else [])
    try:
        assert wait_readyz(p, 200) == "ready\n"
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 1
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds") > time.time()
    finally:
        stop_all([p])


# ----------------------------------------------------------------- reload --

class ReadyzPoller:
    """Asks /readyz every 10 ms in a thread; .answers is every (monotonic
    time, status, body) seen."""

    def __init__(self, p):
        self.p = p
        self.answers = []
        self.stopping = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping:
            try:
                st, body = admin(self.p, "/readyz")
            except OSError as e:
                st, body = None, f"{type(e).__name__}: {e}"
            self.answers.append((time.monotonic(), st, body))
            time.sleep(0.01)

    def stop(self):
        self.stopping = True
        self.t.join(10)
        return self.answers


def wrong_key_keytab(lab_, path, name):
    """A keytab for principal name whose key the KDC never had (made with
    ktutil from a random password): a readable, well-formed keytab that
    config.c accepts, refused by the KDC at the first AS exchange."""
    kvno = re.search(r"kvno = (\d+)|Key: vno (\d+)",
                     lab_.kadmin_local(f"getprinc {name}"))
    vno = next(g for g in kvno.groups() if g) if kvno else "1"
    script = (f"addent -password -p {principal(name)} -k {vno} -e aes256-cts-hmac-sha1-96\n"
              f"{secrets.token_hex(16)}\nwkt {path}\nquit\n")
    subprocess.run(["ktutil"], input=script, text=True, check=True, env=lab_.env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(path, 0o600)
    return path


def serving_pids(p):
    return sorted(c["pid"] for c in p.children())


def reload_to(p, settings, generation):
    """Write settings into p's config, SIGHUP, wait until generation serves
    and the previous one drains (its slots are marked by then)."""
    p.write_config(settings=settings)
    p.signal(signal.SIGHUP)
    p.wait_ready(generation)
    p.wait_for_log(rf"generation {generation - 1}: draining", 15)
    return time.monotonic()


def test_readyz_stays_200_across_a_sighup_reload(lab, proxies):
    """A reload with a good config (a new generation: new kcd, new workers,
    the old ones drained) keeps /readyz at 200: asked every 10 ms, it never
    says anything but ready, except, for as long as it takes, that the new
    kcd is still acquiring its TGT; once settled it is 200 on the new
    generation, whose kcd got its own TGT."""
    p = proxies(lab, workers=2)
    assert wait_readyz(p, 200) == "ready\n"
    before = serving_pids(p)
    poll = ReadyzPoller(p)
    try:
        time.sleep(0.2)
        reload_to(p, {"server": {"idle_timeout": "121s"}}, 2)
        p.wait_for_log(r"generation 1 finished", 20)
        p.wait_for_log(r"obtained the TGT for " + re.escape(principal(PROXY)), count=2,
                       timeout=DEADLINE)
        time.sleep(0.5)
    finally:
        answers = poll.stop()
    acquiring = "not ready: kcd: no TGT for " + principal(PROXY) + " yet: acquiring"
    odd = [a for a in answers if a[1:] != (200, "ready\n") and
           not (a[1] == 503 and a[2].startswith(acquiring))]
    assert not odd, f"/readyz during the reload: {odd[:5]}\n{tail(p)}"
    assert answers[-1][1:] == (200, "ready\n"), answers[-5:]
    assert len(answers) > 50, "the poller hardly ran"
    assert admin(p, "/readyz") == (200, "ready\n")
    after = serving_pids(p)
    assert len(after) == 3 and not set(after) & set(before), (before, after)
    # each generation's kcd made its own AS exchange; none failed
    assert (counter(p, TGT_OK), counter(p, TGT_ERR)) == (2, 0)
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 1
    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       target=device.eas_target("Sync", "alice"), method="OPTIONS")
    assert r.status == 200, (r.status, tail(p))


def test_reload_to_a_keytab_the_kdc_refuses_is_never_ready(lab, proxies):
    """A reload to a keytab config.c accepts (readable, mode 0600, a real
    keytab) but whose key the KDC never had starts a new generation whose
    kcd gets no TGT. From the moment it serves, /readyz answers 503 naming
    the cause, also while the old generation, whose kcd still holds a good
    TGT, drains a parked request (answered 200 on the old config); the TGT
    gauges follow the serving kcd. A reload back to the good keytab is
    ready again."""
    p = proxies(lab)
    assert wait_readyz(p, 200) == "ready\n"
    good = p.settings["kerberos"]["keytab"]
    wrong_key_keytab(lab, p.path("wrong.keytab"), PROXY)
    parked = {}

    def park():
        try:
            parked["r"] = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                                         target=device.sleep_target(6), timeout=60)
        except Exception as e:      # the test looks at it
            parked["r"] = e
        parked["end"] = time.monotonic()
    t = threading.Thread(target=park, daemon=True)
    t.start()
    wait_until(lambda: gauge(p, "eas_kcd_proxy_backend_connections_open") == 1, 30,
               "the Ping at the backend")
    poll = ReadyzPoller(p)
    try:
        serving = reload_to(p, {"kerberos": {"keytab": p.path("wrong.keytab")}}, 2)
        p.wait_for_log(r"kcd: no TGT for " + re.escape(principal(PROXY)), timeout=DEADLINE)
        assert "end" not in parked, "the parked request ended before the check"
        status, body = admin(p, "/readyz")
        assert status == 503, (status, body, tail(p))
        assert re.match(r"not ready: kcd: no TGT for " + re.escape(principal(PROXY)) +
                        r": (BAD_INTEGRITY|PREAUTH_FAILED): ", body), body
        # the draining kcd's TGT is not shown as the proxy's
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 0
        assert gauge(p, "eas_kcd_proxy_kcd_tgt_end_seconds") == 0
        t.join(60)
        p.wait_for_log(r"generation 1 finished", 20)
        assert admin(p, "/readyz")[0] == 503
    finally:
        answers = poll.stop()
    r = parked["r"]
    assert getattr(r, "status", None) == 200, f"the parked request: {r}"
    assert parked["end"] > serving + 1, "the old generation drained too early to matter"
    late = [a for a in answers if a[0] > serving]
    assert late and all(a[1] == 503 for a in late), \
        [a for a in late if a[1] != 503][:5]
    assert any(a[0] < parked["end"] for a in late), "no answer while the old generation drained"

    # back to the good keytab: ready again, on generation 3
    reload_to(p, {"kerberos": {"keytab": good}}, 3)
    assert wait_readyz(p, 200) == "ready\n"
    assert gauge(p, "eas_kcd_proxy_kcd_tgt_valid") == 1


@pytest.mark.parametrize("case", ["missing", "world_readable"])
def test_reload_with_a_refused_keytab_keeps_the_old_generation_ready(lab, proxies, case):
    """A keytab that is refused before anything serves with it fails the
    reload whole: a missing one in config.c (the configuration has
    errors), one readable by anyone in the new kcd's start-up (config.c only
    warns; kcd will not open it). The error log says so, the same children
    serve, and /readyz stays 200 throughout."""
    p = proxies(lab, workers=1)
    assert wait_readyz(p, 200) == "ready\n"
    before = serving_pids(p)
    bad = p.path("bad.keytab")
    if case == "world_readable":
        shutil.copyfile(p.settings["kerberos"]["keytab"], bad)
        os.chmod(bad, 0o644)
    poll = ReadyzPoller(p)
    try:
        time.sleep(0.2)
        p.write_config(settings={"kerberos": {"keytab": bad}})
        p.signal(signal.SIGHUP)
        if case == "missing":
            p.wait_for_log(r"reload refused: the configuration has errors; generation 1 "
                           r"keeps serving", 15)
        else:
            p.wait_for_log(r"kcd: keytab '" + re.escape(bad) + r"' is readable by every user", 15)
            p.wait_for_log(r"reload failed: kcd \(pid \d+\) of generation 2 exited with "
                           r"status 1 during start-up: keytab '" + re.escape(bad) + r"' is "
                           r"readable by every user .*; the previous generation keeps serving", 15)
            p.wait_for_log(r"generation 2 finished", 15)
        time.sleep(1.0)
    finally:
        answers = poll.stop()
    assert re.search(r"keytab", tail(p)), tail(p)
    assert "generation 2 ready" not in p.log_text(), tail(p)
    odd = [a for a in answers if a[1:] != (200, "ready\n")]
    assert not odd and len(answers) > 50, (odd[:5], len(answers))
    assert serving_pids(p) == before
    assert (counter(p, TGT_OK), counter(p, TGT_ERR)) == (1, 0)
    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       target=device.eas_target("Sync", "alice"), method="OPTIONS")
    assert r.status == 200, (r.status, tail(p))
