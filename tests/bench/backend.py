#!/usr/bin/python3
"""Bench backend for the modes nginx cannot answer: parked Pings and checked
uploads (tests/bench/run.py starts it; plain HTTP/1.1 on 127.0.0.1).

* Cmd=Ping: the request is held ("parked") until the harness sends SIGUSR1
  (every parked Ping is then answered 200 with a small WBXML Ping response)
  or --hold seconds pass.
* anything else: the body (Content-Length or chunked) is read and hashed;
  the answer is 200 with X-Body-SHA256 and X-Body-Length, a small body.

Keep-alive, no Kerberos (the Authorization header is ignored). --procs N
forks N acceptors on one SO_REUSEPORT port: one process may hold fewer
descriptors than 20,000 parked Pings need. Each process writes its counters
to DIR/state.<i> (`parked=N answered=N requests=N`) every 0.2 s, so the
harness can tell when every Ping has arrived.
"""
import argparse
import asyncio
import hashlib
import os
import signal
import socket
import sys

PING_ANSWER = bytes([0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x47, 0x03, 0x31, 0x00,
                     0x01, 0x01])          # Ping/Status 1 (no changes)
HEAD_MAX = 65536


class State:
    def __init__(self, path):
        self.path = path
        self.parked = 0
        self.answered = 0
        self.requests = 0
        self.release = asyncio.Event()
        self.dirty = True

    def write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"parked={self.parked} answered={self.answered} requests={self.requests}\n")
        os.replace(tmp, self.path)
        self.dirty = False


async def read_body(reader, headers, h):
    """Read the request body into the hash h; returns its length."""
    n = 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return n
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("closed inside a chunk")
                h.update(chunk)
                left -= len(chunk)
                n += len(chunk)
            await reader.readexactly(2)
    left = int(headers.get("content-length", "0"))
    while left:
        chunk = await reader.read(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("closed inside the body")
        h.update(chunk)
        left -= len(chunk)
        n += len(chunk)
    return n


async def serve(reader, writer, st, hold):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
            except ValueError:
                return
            headers = {}
            for ln in lines[1:]:
                k, sep, v = ln.partition(":")
                if sep:
                    headers[k.strip().lower()] = v.strip()
            h = hashlib.sha256()
            n = await read_body(reader, headers, h)
            st.requests += 1
            st.dirty = True
            query = target.partition("?")[2]
            if "Cmd=Ping" in query.split("&"):
                st.parked += 1
                st.dirty = True
                ev = st.release
                try:
                    await asyncio.wait_for(ev.wait(), hold)
                except asyncio.TimeoutError:
                    pass
                finally:
                    st.parked -= 1
                    st.dirty = True
                body = PING_ANSWER
                extra = ""
            else:
                body = b"ok"
                extra = f"X-Body-SHA256: {h.hexdigest()}\r\nX-Body-Length: {n}\r\n"
            writer.write(("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.ms-sync.wbxml\r\n"
                          f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body)
            await writer.drain()
            st.answered += 1
            st.dirty = True
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def main_async(sock, state_path, hold):
    st = State(state_path)
    loop = asyncio.get_running_loop()

    def release():
        st.release.set()
        st.release = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, release)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(lambda r, w: serve(r, w, st, hold), sock=sock,
                                        limit=HEAD_MAX, backlog=4096)

    async def flush():
        while True:
            if st.dirty:
                st.write()
            await asyncio.sleep(0.2)
    task = asyncio.create_task(flush())
    st.write()
    await stop.wait()
    task.cancel()
    server.close()


def child(port, state_path, hold):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    s.setblocking(False)
    asyncio.run(main_async(s, state_path, hold))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True, help="where state.<i> files go")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--hold", type=float, default=600.0,
                    help="longest a Ping is parked without SIGUSR1 (s)")
    a = ap.parse_args()
    pids = []
    for i in range(a.procs):
        pid = os.fork()
        if pid == 0:
            try:
                child(a.port, os.path.join(a.dir, f"state.{i}"), a.hold)
            finally:
                os._exit(0)
        pids.append(pid)

    def forward(sig, _frame):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGUSR1, forward)
    signal.signal(signal.SIGTERM, forward)
    for p in pids:
        while True:
            try:
                os.waitpid(p, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
