"""End-to-end acceptance: `scripts/demo.py --once` against the sanitizer
build. The demo starts the lab (KDC, slapd, Apache as Exchange) and the
proxy, sends alice's OPTIONS, FolderSync and Sync through it, and exits 0
only when all three got a 2xx and Exchange saw alice@EXAMPLE.TEST.

The demo runs once per module; one test pins the success, the other that it
cleans up after itself whatever the outcome (no process, no directory left).
"""

import os
import re
import subprocess

import pytest

SRCDIR = os.environ.get("EKP_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EKP_BIN = os.environ.get("EKP_BIN") or os.path.join(
    SRCDIR, "build", "san", "eas-kcd-proxy")
DEMO = os.path.join(SRCDIR, "scripts", "demo.py")
TIMEOUT = 300       # a bound for a hung demo, not a timing assertion


@pytest.fixture(scope="module")
def demo_run():
    assert os.access(EKP_BIN, os.X_OK), (
        f"no executable eas-kcd-proxy at {EKP_BIN}: build it (make san) or "
        "set EKP_BIN")
    try:
        p = subprocess.run(["/usr/bin/python3", DEMO, "--once", "--bin",
                            EKP_BIN], cwd=SRCDIR, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace", timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = e.output or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        pytest.fail(f"scripts/demo.py --once did not finish within "
                    f"{TIMEOUT}s (it must never hang):\n{out}")
    return p.returncode, p.stdout


def _cmdlines():
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                out.append((int(d), f.read().replace(b"\0", b" ").decode(
                    errors="replace")))
        except OSError:
            pass
    return out


def test_demo_once_alice_reaches_exchange_through_the_proxy(demo_run):
    rc, out = demo_run
    assert rc == 0, f"scripts/demo.py --once exited {rc}, expected 0:\n{out}"
    seen = re.findall(r"^\s*Exchange saw user alice@EXAMPLE\.TEST\b", out,
                      re.M)
    assert len(seen) == 3, (
        "expected 'Exchange saw user alice@EXAMPLE.TEST' for each of "
        f"OPTIONS, FolderSync and Sync, found {len(seen)}:\n{out}")
    assert "DEMO OK" in out, out


def test_demo_leaves_no_process_and_no_directory_behind(demo_run):
    rc, out = demo_run
    m = re.search(r"lab in (/tmp/ekp-lab-\S+):", out)
    assert m, f"the demo did not say where its lab was (exit {rc}):\n{out}"
    labdir = m.group(1)
    left = [(pid, cmd) for pid, cmd in _cmdlines() if labdir in cmd]
    assert not left, f"processes of the demo's lab still running: {left}"
    assert not os.path.exists(labdir), (
        f"the demo left its directory {labdir} behind")
