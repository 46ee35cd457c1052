"""The process model (docs/architecture.md): parent + kcd + workers, the
privilege drop, restarts, reload as a new generation, drain on SIGTERM,
daemon mode, log reopening."""

import os
import re
import signal
import socket

import pytest

from ekp import (alive, free_port, listening_inodes, nobody_uid, socket_inodes, wait_until)


def test_process_tree_is_parent_kcd_and_workers(make_proxy):
    p = make_proxy(workers=3).start()
    kids = p.wait_children(p.expected_comms(3))
    assert len(kids) == 4
    # nothing else hangs off the parent, and the parent itself is one process
    assert all(c["state"][0] in "SR" for c in kids), kids


def test_workers_run_as_the_configured_user_and_kcd_as_root(started_proxy):
    p = started_proxy
    assert os.geteuid() == 0, "the integration suite runs as root (the parent binds as root)"
    nobody = nobody_uid()
    kids = p.wait_children(p.expected_comms(2))
    for c in kids:
        if c["comm"] == "ekp-kcd":
            assert c["uid"] == 0 and c["euid"] == 0, c
        else:
            assert c["uid"] == nobody and c["euid"] == nobody, c
            assert c["gid"] != 0, c
            assert c["groups"] == "", f"worker kept supplementary groups: {c}"
    st = open(f"/proc/{p.pid}/status").read()
    assert re.search(r"^Uid:\s+0\s", st, re.M), "the parent stays root to bind on reload"


def worker_listeners(p, listen):
    """{worker comm: the listening sockets it holds} (kcd must hold none)."""
    out = {}
    for c in p.children():
        held = socket_inodes(c["pid"]) & listen
        if c["comm"] == "ekp-kcd":
            assert not held, "kcd must never hold a listening socket"
        else:
            out[c["comm"]] = held
    return out


def test_each_worker_holds_a_listening_socket_of_its_own_and_kcd_none(started_proxy):
    # one socket per worker slot in a SO_REUSEPORT group: the kernel hands
    # each connection to one worker
    p = started_proxy
    p.wait_children(p.expected_comms(2))
    listen = listening_inodes(p.port)
    assert len(listen) == 2, f"want one listening socket per worker on 127.0.0.1:{p.port}: {listen}"
    held = worker_listeners(p, listen)
    assert sorted(held) == ["ekp-worker-0", "ekp-worker-1"], held
    assert all(len(h) == 1 for h in held.values()), held
    assert held["ekp-worker-0"] != held["ekp-worker-1"], held


def test_connections_are_spread_over_the_workers(started_proxy):
    # 64 connections from 64 source ports: each worker accepts some (the
    # group's hash sends all 64 to one socket with probability 2**-63)
    p = started_proxy
    kids = [c for c in p.wait_children(p.expected_comms(2)) if c["comm"] != "ekp-kcd"]
    before = {c["pid"]: len(socket_inodes(c["pid"])) for c in kids}
    conns = [socket.create_connection(("127.0.0.1", p.port), timeout=5) for _ in range(64)]
    try:
        wait_until(lambda: sum(len(socket_inodes(pid)) - n for pid, n in before.items()) >= 64,
                   10, "the workers to accept 64 connections")
        for c in kids:
            assert len(socket_inodes(c["pid"])) > before[c["pid"]], \
                f"{c['comm']} accepted none of 64 connections"
    finally:
        for s in conns:
            s.close()


def test_a_killed_worker_is_restarted_with_a_fresh_pid(started_proxy):
    p = started_proxy
    old = p.child("ekp-worker-1")
    os.kill(old["pid"], signal.SIGKILL)
    p.wait_for_log(rf"error proc: worker 1 \(pid {old['pid']}, generation 1\) "
                       rf"killed by signal 9")
    # the new worker loads its TLS material as root, then drops privileges
    new = wait_until(lambda: [c for c in p.children()
                              if c["comm"] == "ekp-worker-1" and c["pid"] != old["pid"]
                              and c["uid"] == nobody_uid()],
                     15, "a new worker 1 running as nobody")[0]
    assert new["uid"] == nobody_uid()
    assert not alive(old["pid"])
    # the new worker got its own channel to kcd
    p.wait_for_log(rf"\[{new['pid']}\] worker info front: worker 1 \(generation 1\) accepting")
    # the others were left alone
    assert p.child("ekp-worker-0")["pid"] in p.known_children


def test_restart_back_off_doubles_while_a_child_keeps_dying(started_proxy):
    p = started_proxy
    delays = []
    for _ in range(3):
        w = p.child("ekp-worker-0")
        os.kill(w["pid"], signal.SIGKILL)
        m = p.wait_for_log(rf"worker 0 \(pid {w['pid']}, generation 1\) killed by signal 9 \(Killed\) "
                           rf"after \d+ ms; restarting in (\d+) ms")
        delays.append(int(m.group(1)))
        wait_until(lambda: [c for c in p.children()
                            if c["comm"] == "ekp-worker-0" and c["pid"] != w["pid"]],
                   15, "worker 0 to be restarted")
    assert delays == [100, 200, 400], delays


def test_a_killed_kcd_is_restarted_and_every_worker_gets_a_new_channel(started_proxy):
    p = started_proxy
    old = p.child("ekp-kcd")
    workers = {c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")}
    os.kill(old["pid"], signal.SIGKILL)
    p.wait_for_log(rf"kcd \(pid {old['pid']}, generation 1\) killed by signal 9")
    new = wait_until(lambda: [c for c in p.children()
                              if c["comm"] == "ekp-kcd" and c["pid"] != old["pid"]],
                     15, "a new kcd")[0]
    assert new["uid"] == 0
    for w in workers:
        p.wait_for_log(rf"\[{w}\] worker info front: worker \d: new channel to kcd")
    p.wait_for_log(rf"\[{new['pid']}\] kcd debug kcd: channel of worker 0 ready")
    p.wait_for_log(rf"\[{new['pid']}\] kcd debug kcd: channel of worker 1 ready")
    assert {c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")} == workers


def test_sighup_with_a_broken_config_logs_the_error_and_keeps_serving(started_proxy):
    p = started_proxy
    before = {c["pid"] for c in p.children()}
    text = p.config_text().splitlines()
    i = text.index("workers = 2")
    text[i] = "workers = many"
    p.write_config("\n".join(text) + "\n")
    p.signal(signal.SIGHUP)
    p.wait_for_log(rf"error config: {re.escape(p.conf)}:{i + 1}: bad workers 'many'")
    p.wait_for_log(r"reload refused: the configuration has errors; generation 1 keeps serving")
    assert {c["pid"] for c in p.children()} == before
    assert "generation 2" not in p.log_text()
    assert listening_inodes(p.port), "the listener went away"
    with socket.create_connection(("127.0.0.1", p.port), timeout=5):
        pass


def test_sighup_with_a_good_config_replaces_the_generation(started_proxy):
    p = started_proxy
    old = {c["pid"] for c in p.children()}
    listen_before = listening_inodes(p.port)
    p.write_config(settings={"server": {"workers": 3}})
    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    p.wait_for_log(r"generation 1 finished")
    kids = p.wait_children(p.expected_comms(3))
    assert not (old & {c["pid"] for c in kids}), "an old child survived the reload"
    for pid in old:
        assert not alive(pid), f"old child {pid} still running"
    # workers 0 and 1 kept their sockets (no new bind, nothing in their
    # backlogs lost); worker 2 joined the group with a socket of its own
    after = listening_inodes(p.port)
    assert listen_before < after and len(after) == 3, (listen_before, after)
    held = worker_listeners(p, after)
    assert sorted(held) == ["ekp-worker-0", "ekp-worker-1", "ekp-worker-2"], held
    assert held["ekp-worker-0"] | held["ekp-worker-1"] == listen_before, held
    assert len(held["ekp-worker-2"]) == 1 and not (held["ekp-worker-2"] & listen_before), held
    assert p.exited() is None


def test_a_reloads_workers_are_started_only_once_its_kcd_is_ready(started_proxy):
    """A new worker accepts on the serving generation's own sockets, so the
    parent forks a reload's workers only after the new kcd reported READY:
    in the log, kcd 2 starts, the parent gets its READY, then starts the
    workers of generation 2; none is started before."""
    p = started_proxy
    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    log = p.log_text()
    kcd = re.search(r"started kcd \(pid (\d+), generation 2\)", log)
    assert kcd, log[-3000:]
    ready = re.search(rf"proc: kcd \(pid {kcd.group(1)}, generation 2\) ready", log)
    go = re.search(r"info proc: generation 2: kcd ready; starting 2 workers", log)
    started = [m.start() for m in
               re.finditer(r"started worker \d \(pid \d+, generation 2\)", log)]
    assert ready and go and len(started) == 2, log[-3000:]
    assert kcd.start() < ready.start() < go.start() < min(started), log[-3000:]


def test_sighup_to_fewer_workers_closes_the_dropped_slot_socket(started_proxy):
    # a slot the reload drops must not keep a socket in the group: the
    # kernel would queue its share of connections where nobody accepts
    p = started_proxy
    p.wait_children(p.expected_comms(2))
    listen_before = listening_inodes(p.port)
    p.write_config(settings={"server": {"workers": 1}})
    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    p.wait_for_log(r"generation 1 finished")
    after = listening_inodes(p.port)
    assert len(after) == 1 and after < listen_before, (listen_before, after)
    assert worker_listeners(p, after) == {"ekp-worker-0": after}
    # every connection reaches the worker left (a dropped slot's backlog
    # would leave some waiting): it answers plain HTTP by closing (EOF or
    # RST), never by silence
    for _ in range(16):
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass


def test_reload_binds_a_new_listen_address_and_drops_the_old_one(started_proxy):
    p = started_proxy
    new_port = free_port()
    p.write_config(settings={"server": {"listen": f"127.0.0.1:{new_port}"}})
    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    p.wait_for_log(r"generation 1 finished")
    new_listen = listening_inodes(new_port)
    assert new_listen, f"nothing listens on the new port {new_port}"
    assert not listening_inodes(p.port), f"the old port {p.port} still listens"
    for c in p.wait_children(p.expected_comms(2)):
        if c["comm"].startswith("ekp-worker"):
            assert socket_inodes(c["pid"]) & new_listen, c


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_drains_exits_0_and_leaves_no_children(make_proxy, sig):
    p = make_proxy(settings={"server": {"shutdown_timeout": "5s"}}).start()
    kids = [c["pid"] for c in p.wait_children(p.expected_comms(2))]
    p.signal(sig)
    assert p.wait_exit(5 + 5) == 0
    for pid in kids:
        assert not alive(pid), f"child {pid} outlived the parent"
    log = p.log_text()
    assert f"{sig.name}: draining" in log
    assert re.search(r"info proc: stopped$", log, re.M), log[-2000:]
    assert not listening_inodes(p.port)


def test_a_child_that_does_not_drain_is_killed_at_shutdown_timeout(make_proxy):
    p = make_proxy(settings={"server": {"shutdown_timeout": "1s"}}).start()
    w = p.child("ekp-worker-0")
    os.kill(w["pid"], signal.SIGSTOP)     # cannot read its SHUTDOWN
    p.signal(signal.SIGTERM)
    assert p.wait_exit(15) == 0
    p.wait_for_log(rf"worker 0 \(pid {w['pid']}, generation 1\) still running at "
                   rf"shutdown_timeout; killing it")
    assert not alive(w["pid"])


def test_daemon_mode_writes_and_removes_the_pid_file(make_proxy):
    p = make_proxy()
    p.start_daemon()
    assert os.path.exists(p.pid_file)
    assert alive(p.pid)
    # detached: a new session (setsid), yet not its leader (second fork: it
    # can never acquire a controlling terminal), cwd /
    assert os.getsid(p.pid) != os.getsid(0)
    assert os.getsid(p.pid) != p.pid
    assert os.readlink(f"/proc/{p.pid}/cwd") == "/"
    p.wait_children(p.expected_comms(2))
    # the config path was made absolute: a reload from / still finds it
    p.signal(signal.SIGHUP)
    p.wait_ready(2)
    p.signal(signal.SIGTERM)
    p.wait_exit(20)
    wait_until(lambda: not os.path.exists(p.pid_file), 5, "the pid file to be removed")


def test_daemon_mode_fails_loudly_when_the_pid_file_cannot_be_written(make_proxy):
    p = make_proxy()
    bad = p.path("no-such-dir", "ekp.pid")
    p.write_config(settings={"server": {"pid_file": bad}})
    r = p.run(["-d", "-c", p.conf], expected_code=1)
    assert f"cannot write pid_file {bad}" in r.stderr + p.log_text()


def test_sigusr1_reopens_a_moved_error_log_in_every_process(started_proxy):
    p = started_proxy
    moved = p.error_log + ".1"
    os.rename(p.error_log, moved)
    p.signal(signal.SIGUSR1)
    p.wait_for_log(r"SIGUSR1: error log reopened")
    # the workers (uid nobody) cannot open the root-owned file themselves;
    # they must write into the new one too: make each of them log a line
    workers = [c["pid"] for c in p.children() if c["comm"].startswith("ekp-worker")]
    kcd = p.child("ekp-kcd")
    os.kill(kcd["pid"], signal.SIGKILL)
    for w in workers:
        p.wait_for_log(rf"\[{w}\] worker info front: worker \d: new channel to kcd")
    assert "SIGUSR1" not in open(moved).read()
    assert os.stat(p.error_log).st_uid == 0
