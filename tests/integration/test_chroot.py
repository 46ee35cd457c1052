"""[server] chroot (issue 7, hardening): workers enter the directory after
loading their TLS material, logs and DNS configuration, and still serve."""
import os

import pytest

from ekp import Proxy, wait_until
from test_front import request


def test_workers_serve_from_inside_an_empty_chroot(tmp_path):
    jail = tmp_path / "jail"
    jail.mkdir()
    os.chmod(tmp_path, 0o755)
    p = Proxy(workers=1)
    p.write_config(settings={"server": {"chroot": str(jail)}})
    # LeakSanitizer needs /proc at exit, which an empty chroot lacks
    p.extra_env = {"ASAN_OPTIONS": "detect_leaks=0"}
    p.start()
    try:
        worker = wait_until(lambda: [c for c in p.children() if c["comm"] == "ekp-worker-0"
                                     and c["uid"] != 0], 15, "worker running as nobody")[0]
        assert os.readlink(f"/proc/{worker['pid']}/root") == str(jail)
        kcd = [c for c in p.children() if c["comm"] == "ekp-kcd"][0]
        assert os.readlink(f"/proc/{kcd['pid']}/root") == "/", "kcd keeps the keytab's view"
        status, text = request(p, p.device_cert("alice"), path="/owa/")
        assert status == 404, text
    finally:
        p.stop()


def test_a_chroot_that_is_not_a_directory_is_a_config_error(tmp_path):
    p = Proxy(workers=1)
    p.write_config(settings={"server": {"chroot": str(tmp_path / "missing")}})
    r = p.run(["-t", "-c", p.conf], expected_code=1)
    assert "chroot" in (r.stdout + r.stderr) and "not a directory" in (r.stdout + r.stderr)
    p.cleanup()
