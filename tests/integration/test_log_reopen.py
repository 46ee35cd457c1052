"""SIGUSR1 reopens the access log the way logrotate needs it (SPEC §2, §8):
the file is moved away, the parent opens a new one (root-owned, 0640, W3C
directives first) and hands it to the workers, which run as `nobody` and
could not open it themselves. Lines the workers still buffered go to the old
file: nothing is lost, nothing written twice.
"""
import os
import re
import shutil
import signal

import pytest

import device
from ekp import lab_proxy, wait_until
from lab_fixtures import lab, lab_session  # noqa: F401  (fixtures)

DIRECTIVES = ("#Software: eas-kcd-proxy ", "#Version: 1.0", "#Date: ", "#Fields: date time s-ip ")


@pytest.fixture
def w3c_proxy(lab):  # noqa: F811
    p = lab_proxy(lab, workers=2, access_format="w3c")
    try:
        yield p.start()
    finally:
        p.stop()
        if not os.environ.get("EKP_KEEP"):
            shutil.rmtree(p.dir, ignore_errors=True)


def read(path):
    with open(path) as f:
        return f.read()


def devices_in(text):
    """x-device-id of each request line (W3C field 15)."""
    return [ln.split(" ")[14] for ln in text.splitlines() if ln and not ln.startswith("#")]


def open_by(pid, path):
    """True when pid holds path open (by name as /proc shows it)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return path in out


def requests(p, names, source="127.0.0.1"):
    for name in names:
        r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                           device.eas_target("Sync", device=name), source=source)
        assert r.status == 200, (name, r.status)


def test_sigusr1_moves_the_access_log_to_a_new_file_with_directives_and_loses_nothing(w3c_proxy):
    p = w3c_proxy
    log = p.access_log
    moved = log + ".1"
    before = [f"BEFORE{i}" for i in range(6)]
    after = [f"AFTER{i}" for i in range(6)]
    workers = [c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")]
    assert len(workers) == 2
    assert read(log).startswith(DIRECTIVES[0]), read(log)[:200]

    # the workers flush about once a second: some of these lines are still
    # in their buffers when the file is moved and SIGUSR1 arrives
    requests(p, before)
    os.rename(log, moved)
    p.signal(signal.SIGUSR1)
    p.wait_for_log(r"SIGUSR1: access log reopened")
    # every worker writes to the new file now, none to the moved one
    for pid in workers:
        wait_until(lambda pid=pid: open_by(pid, log) and not open_by(pid, moved), 10,
                   f"worker {pid} to hold the new access log instead of {moved}")
    requests(p, after)

    wait_until(lambda: sorted(devices_in(read(log))) == sorted(after), 10,
               f"the new log to have exactly {after} (has {devices_in(read(log))})")
    new = read(log).splitlines()
    for line, directive in zip(new[:4], DIRECTIVES):
        assert line.startswith(directive), new[:5]
    assert sum(ln.startswith("#Fields:") for ln in new) == 1, new
    st = os.stat(log)
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o640, oct(st.st_mode)

    old = read(moved)
    assert sorted(devices_in(old)) == sorted(before), old
    assert sum(ln.startswith("#Fields:") for ln in old.splitlines()) == 1
    # the parent does not keep it open either
    assert not open_by(p.pid, log) and not open_by(p.pid, moved)


def test_a_second_sigusr1_without_a_move_adds_no_directives(w3c_proxy):
    p = w3c_proxy
    requests(p, ["ONE"])
    p.signal(signal.SIGUSR1)
    p.wait_for_log(r"SIGUSR1: access log reopened")
    requests(p, ["TWO"])
    wait_until(lambda: sorted(devices_in(read(p.access_log))) == ["ONE", "TWO"], 10,
               "both lines in the one file")
    assert len(re.findall(r"^#Fields:", read(p.access_log), re.M)) == 1


def test_an_access_log_the_parent_cannot_open_fails_the_start_and_refuses_a_reload(make_proxy):
    p = make_proxy(workers=1)
    bad = p.path("no-such-dir", "access.log")
    p.write_config(settings={"log": {"access_log": bad}})
    p.start(wait_ready=False)
    assert p.wait_exit(30) == 1
    assert f"cannot open access_log {bad}: No such file or directory" in p.log_text()

    q = make_proxy(workers=1)
    q.write_config(settings={"log": {"access_log": q.path("access.log")}})
    q.start()
    before = {c["pid"] for c in q.children()}
    q.write_config(settings={"log": {"access_log": q.path("no-such-dir", "access.log")}})
    q.signal(signal.SIGHUP)
    q.wait_for_log(r"reload refused: cannot open access_log .*no-such-dir/access\.log")
    assert {c["pid"] for c in q.children()} == before
    assert "generation 2" not in q.log_text()
