#!/usr/bin/python3
"""Test runner for `make check`: every cmocka unit binary, then the pytest
integration suite, then one summary line `N passed, N failed[, N skipped]`.

Exit status is non-zero when anything failed or when no test ran at all.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAN_ENV = {
    # abort on the first report so a sanitizer finding is a failed test
    "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=1:strict_string_checks=1:"
                    "detect_stack_use_after_return=1:check_initialization_order=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


def run_unit(build):
    """Run each cmocka binary; returns (passed, failed, names_failed)."""
    tdir = os.path.join(build, "san", "tests")
    passed = failed = 0
    bad = []
    if not os.path.isdir(tdir):
        return 0, 0, []
    for name in sorted(os.listdir(tdir)):
        path = os.path.join(tdir, name)
        if not (name.startswith("test_") and os.access(path, os.X_OK)):
            continue
        env = dict(os.environ, **SAN_ENV)
        env["EKP_SRCDIR"] = ROOT
        t0 = time.monotonic()
        p = subprocess.run([path], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace")
        out = p.stdout
        ok = sum(int(m) for m in re.findall(r"^\[  PASSED  \] (\d+) test", out, re.M))
        ko = sum(int(m) for m in re.findall(r"^\[  FAILED  \] (\d+) test", out, re.M))
        if p.returncode != 0 and ko == 0:
            ko = 1          # crashed or a sanitizer fired outside a test
        if ok == 0 and ko == 0:
            ko = 1          # a binary that ran nothing is a failure
        passed += ok
        failed += ko
        status = "ok" if ko == 0 else "FAILED"
        print(f"unit  {name:<28} {ok:4d} passed {ko:3d} failed  "
              f"{time.monotonic() - t0:5.1f}s  {status}", flush=True)
        if ko:
            bad.append(name)
            sys.stdout.write(out[-6000:])
    return passed, failed, bad


def run_integration(build, extra):
    """Run pytest over tests/integration; returns (passed, failed, skipped)."""
    itdir = os.path.join(ROOT, "tests", "integration")
    if not any(f.startswith("test_") for f in os.listdir(itdir)):
        return 0, 0, 0
    env = dict(os.environ, **SAN_ENV)
    env["EKP_BUILD"] = os.path.abspath(build)
    env["EKP_BIN"] = os.path.abspath(os.path.join(build, "san", "eas-kcd-proxy"))
    env["EKP_TOOLS"] = os.path.abspath(os.path.join(build, "san", "tools"))
    env["EKP_SRCDIR"] = ROOT
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory(prefix="ekp-junit-") as td:
        xml = os.path.join(td, "junit.xml")
        cmd = ["/usr/bin/python3", "-m", "pytest", "-p", "no:cacheprovider",
               "-q", "-rfEs", f"--junitxml={xml}", itdir] + extra
        p = subprocess.run(cmd, cwd=ROOT, env=env)
        if not os.path.exists(xml):
            return 0, 1, 0
        suites = ET.parse(xml).getroot()
        tests = fails = skips = 0
        for s in suites.iter("testsuite"):
            tests += int(s.get("tests", 0))
            fails += int(s.get("failures", 0)) + int(s.get("errors", 0))
            skips += int(s.get("skipped", 0))
        if p.returncode not in (0, 5) and fails == 0:
            fails = 1
        return tests - fails - skips, fails, skips


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--unit-only", action="store_true")
    ap.add_argument("--integration-only", action="store_true")
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args()

    up = uf = ip = ifl = isk = 0
    bad = []
    if not a.integration_only:
        up, uf, bad = run_unit(a.build)
    if not a.unit_only:
        ip, ifl, isk = run_integration(a.build, a.pytest_args)
    passed, failed = up + ip, uf + ifl
    print()
    print(f"unit: {up} passed, {uf} failed" + (f" ({', '.join(bad)})" if bad else ""))
    print(f"integration: {ip} passed, {ifl} failed, {isk} skipped")
    line = f"{passed} passed, {failed} failed"
    if isk:
        line += f", {isk} skipped"
    print(line)
    if failed or passed == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
