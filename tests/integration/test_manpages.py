"""The man pages: docs/eas-kcd-proxy.8 and docs/eas-kcd-proxy.conf.5 render
with `man -l` without a single groff warning, the .5 page is what
scripts/gen-conf-man.py makes of eas-kcd-proxy.conf.example (so every key,
with its default, is in it), and the .8 page names every command-line
option, signal and doctor check the binary has."""

import os
import re
import subprocess

from ekp import binary

SRCDIR = os.environ.get("EKP_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGE8 = os.path.join(SRCDIR, "docs", "eas-kcd-proxy.8")
PAGE5 = os.path.join(SRCDIR, "docs", "eas-kcd-proxy.conf.5")
EXAMPLE = os.path.join(SRCDIR, "eas-kcd-proxy.conf.example")
GEN = os.path.join(SRCDIR, "scripts", "gen-conf-man.py")


def render(page):
    """The page as man shows it at 80 columns; fails on any warning."""
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    p = subprocess.run(["man", "--warnings", "-l", page], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert p.returncode == 0, f"man -l {page}: exit {p.returncode}\n{p.stderr}"
    assert p.stderr == "", f"man --warnings -l {page} warned:\n{p.stderr}"
    assert len(p.stdout.splitlines()) > 50, f"{page} rendered almost nothing:\n{p.stdout}"
    # the text without bold/underline overstrikes, whatever the pager settings
    return re.sub(r".\x08", "", p.stdout)


def example_keys():
    """[(section, key, value, required)] from the example file."""
    keys, sec = [], None
    with open(EXAMPLE, encoding="utf-8") as f:
        for ln in f:
            m = re.match(r"^\[([a-z]+)\]", ln)
            if m:
                sec = m.group(1)
                continue
            m = re.match(r"^([a-z_][a-z0-9_]*)\s*=\s*(.*?)\s*(?:(?<=\s);\s*(.*))?$",
                         ln.rstrip("\n"))
            if m and sec:
                keys.append((sec, m.group(1), m.group(2),
                             (m.group(3) or "").startswith("REQUIRED")))
    assert len(keys) > 50, f"only {len(keys)} keys parsed from {EXAMPLE}"
    return keys


def test_both_pages_render_without_warnings():
    render(PAGE8)
    render(PAGE5)


def test_conf_page_is_generated_from_the_example():
    p = subprocess.run(["/usr/bin/python3", GEN, "--check"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert p.returncode == 0, f"{p.stdout}(the example changed: run scripts/gen-conf-man.py)"


def test_every_key_of_the_example_is_in_the_conf_page_with_its_default():
    text = render(PAGE5)
    missing = []
    # each key's entry must come after its section's heading
    for sec, key, value, required in example_keys():
        head = text.find(f"   [{sec}]\n")
        if head < 0:
            missing.append(f"[{sec}] heading")
            continue
        nxt = re.search(r"^   \[[a-z]+\]$", text[head + 4:], re.M)
        body = text[head: head + 4 + nxt.start()] if nxt else text[head:]
        if required:
            want = f"{key} (REQUIRED), e.g. {value}"
        elif value:
            want = f"{key} = {value}"
        else:
            want = f"{key} = (empty)"
        if not re.search(r"^       " + re.escape(want) + "$", body, re.M):
            missing.append(f"[{sec}] {want}")
    assert not missing, "keys of eas-kcd-proxy.conf.example not in eas-kcd-proxy.conf(5): " + \
        ", ".join(missing)


def test_daemon_page_names_every_option_and_signal():
    text = render(PAGE8)
    usage = subprocess.run([binary(), "-h"], stdout=subprocess.PIPE, text=True,
                           timeout=30).stdout
    opts = set(re.findall(r"(?<![\w-])(-[a-zA-Z])\b", usage))
    assert {"-c", "-d", "-t", "-V", "-h"} <= opts, usage
    sections = re.split(r"^([A-Z][A-Z ]+)$", text, flags=re.M)
    by_name = dict(zip(sections[1::2], sections[2::2]))
    for o in opts:
        assert re.search(r"^       " + re.escape(o) + r"\b", by_name["OPTIONS"], re.M), \
            f"option {o} of `eas-kcd-proxy -h` is not described under OPTIONS"
    sigs = set(re.findall(r"\b(HUP|TERM|INT|USR1)\b", usage))
    assert sigs == {"HUP", "TERM", "INT", "USR1"}, usage
    for s in sigs:
        assert "SIG" + s in by_name["SIGNALS"], f"SIG{s} is not under SIGNALS"
    for name in ("SYNOPSIS", "DOCTOR", "FILES", "EXIT STATUS", "SEE ALSO"):
        assert name in by_name, f"no {name} section"


def test_daemon_page_describes_every_doctor_check_and_option():
    text = render(PAGE8)
    with open(os.path.join(SRCDIR, "src", "doctor.c"), encoding="utf-8") as f:
        src = f.read()
    checks = set(re.findall(r'report\(d, (?:D_\w+|[^,]+), "([a-z0-9-]+)"', src))
    assert len(checks) >= 14, f"doctor checks found in src/doctor.c: {sorted(checks)}"
    doctor = text.split("\nDOCTOR\n", 1)[1].split("\nSIGNALS\n", 1)[0]
    missing = [c for c in sorted(checks)
               if not re.search(r"^       " + re.escape(c) + r"(\s|$)", doctor, re.M)]
    assert not missing, f"doctor checks not described under DOCTOR: {missing}"
    usage = subprocess.run([binary(), "doctor", "-h"], stdout=subprocess.PIPE, text=True,
                           timeout=30).stdout
    for o in set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", usage)):
        assert o in doctor, f"doctor option {o} is not described under DOCTOR"
