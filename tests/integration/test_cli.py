"""The command line (SPEC §2): -t, -V, -h, usage errors, start-up failures."""

import os
import re
import socket

import pytest

from ekp import SRCDIR, ProxyError, run


def test_check_good_config_says_configuration_ok(make_proxy):
    p = make_proxy()
    r = p.run(["-t", "-c", p.conf], expected_code=0)
    assert r.stdout == "configuration OK\n", f"stdout was {r.stdout!r}"
    assert "error" not in r.stderr.lower(), r.stderr


def test_check_bad_config_prints_every_error_with_file_and_line(make_proxy):
    p = make_proxy()
    text = p.config_text().splitlines()
    # three independent mistakes at known lines (1-based)
    i_workers = text.index("workers = 2")
    text[i_workers] = "workers = lots"
    i_level = text.index("level = debug")
    text[i_level] = "level = chatty"
    text.insert(i_level + 1, "bogus = 1")
    p.write_config("\n".join(text) + "\n")
    r = p.run(["-t", "-c", p.conf], expected_code=1)
    assert "configuration OK" not in r.stdout + r.stderr
    lines = r.stderr.splitlines()
    want = [
        (i_workers + 1, "workers"),
        (i_level + 1, "chatty"),
        (i_level + 2, "bogus"),
    ]
    for line_no, word in want:
        prefix = f"{p.conf}:{line_no}: "
        hits = [ln for ln in lines if ln.startswith(prefix) and word in ln]
        assert hits, f"expected a line starting {prefix!r} naming {word!r} in:\n{r.stderr}"
    assert len([ln for ln in lines if ln.startswith(p.conf + ":")]) == 3, r.stderr


def test_check_missing_file_names_the_file(tmp_path):
    missing = str(tmp_path / "nope.conf")
    r = run(["-t", "-c", missing], expected_code=1)
    assert r.stderr.startswith(missing + ": "), r.stderr
    assert "configuration OK" not in r.stdout


def test_version_names_the_libraries():
    with open(os.path.join(SRCDIR, "VERSION")) as f:
        version = f.read().strip()
    r = run(["-V"], expected_code=0)
    out = r.stdout
    assert out.splitlines()[0] == f"eas-kcd-proxy {version}", out
    assert re.search(r"^OpenSSL: OpenSSL 3\.", out, re.M), out
    assert re.search(r"^krb5: MIT krb5 1\.\d+", out, re.M), out
    assert re.search(r"^libevent: 2\.1\.", out, re.M), out
    assert re.search(r"^libldap: OpenLDAP 2\.\d+\.\d+", out, re.M), out


def test_help_prints_usage_and_the_default_config_path():
    r = run(["-h"], expected_code=0)
    assert r.stdout.startswith("usage: eas-kcd-proxy"), r.stdout
    assert "/etc/eas-kcd-proxy/eas-kcd-proxy.conf" in r.stdout


def test_unknown_option_is_a_usage_error():
    r = run(["-x"], expected_code=2)
    assert "usage: eas-kcd-proxy" in r.stderr


def test_unknown_subcommand_is_a_usage_error():
    r = run(["frobnicate", "-c", "/dev/null"], expected_code=2)
    assert "unknown command 'frobnicate'" in r.stderr
    assert "usage: eas-kcd-proxy" in r.stderr


def test_stray_argument_is_a_usage_error(make_proxy):
    p = make_proxy()
    r = p.run(["-t", "-c", p.conf, "extra"], expected_code=2)
    assert "unexpected argument 'extra'" in r.stderr


def test_start_with_a_bad_config_exits_1_with_file_line(make_proxy):
    p = make_proxy()
    text = p.config_text().replace("workers = 2", "workers = 0")
    p.write_config(text)
    line_no = text.splitlines().index("workers = 0") + 1
    r = p.run(["-c", p.conf], expected_code=1)
    assert f"{p.conf}:{line_no}: " in r.stderr, r.stderr


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "reuseport"])
def test_start_fails_when_the_port_is_taken(make_proxy, reuseport):
    # the workers' sockets form a SO_REUSEPORT group; a holder that is one
    # too (same user: root) must still make the start fail, not be joined
    p = make_proxy()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuseport:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind(("127.0.0.1", p.port))
        holder.listen(1)
        r = p.run(["-c", p.conf], expected_code=1)
    finally:
        holder.close()
    log = p.log_text() + r.stderr
    assert f"cannot listen on 127.0.0.1:{p.port}: bind: Address already in use" in log, log


def test_run_helper_reports_a_wrong_exit_code():
    """The harness itself: a wrong expectation must fail, not pass."""
    try:
        run(["-V"], expected_code=1)
    except ProxyError as e:
        assert "exit 0, expected 1" in str(e)
    else:
        raise AssertionError("run() accepted a wrong exit code")
