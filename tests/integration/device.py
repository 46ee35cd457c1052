"""A minimal ActiveSync device for the operations tests: one HTTPS request
with a client certificate, from a chosen source address, over a fresh
connection (http.client underneath).

    r = device.request(p.port, p.device_cert("alice"), p.server_ca.cert,
                       source="127.0.0.2", target=device.eas_target("Ping"))
    r.status, r.json(), r.local_port

Binding the client to its own loopback address (127.0.0.2, 127.0.0.3, ...)
lets a test tell a device from a load balancer, or one request from another,
in the proxy's logs.
"""

import http.client
import json
import socket
import ssl

EAS = "/Microsoft-Server-ActiveSync"


def eas_target(cmd="Sync", user="alice", device="DEV1", extra=""):
    return f"{EAS}?Cmd={cmd}&User={user}&DeviceId={device}&DeviceType=iPhone{extra}"


def sleep_target(seconds, user="alice", device="DEV1"):
    """The lab's parked-request handler (answers after `seconds`), as a Ping."""
    return (f"{EAS}/sleep?seconds={seconds}&Cmd=Ping&User={user}&DeviceId={device}"
            f"&DeviceType=iPhone")


class Response:
    def __init__(self, status, headers, body, local_port):
        self.status = status
        self.headers = headers
        self.body = body
        self.local_port = local_port

    def json(self):
        return json.loads(self.body)


class Refused(Exception):
    """The proxy closed the connection without an HTTP answer."""


def context(cert, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


class Connection:
    """One TLS connection from source (an address on lo) to 127.0.0.1:port;
    requests on it are sent one at a time."""

    def __init__(self, port, cert, ca, source="127.0.0.1", timeout=30):
        self.conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context(cert, ca), timeout=timeout,
            source_address=(source, 0))
        self.local_port = None

    def connect(self):
        self.conn.connect()
        self.local_port = self.conn.sock.getsockname()[1]
        return self

    def send(self, target, method="GET", body=None, headers=None):
        if self.conn.sock is None:
            self.connect()
        h = {"Host": "proxy.example.test", "User-Agent": "ops-test-device/1.0"}
        h.update(headers or {})
        self.conn.request(method, target, body=body, headers=h)

    def response(self):
        try:
            r = self.conn.getresponse()
            body = r.read()
        except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected,
                socket.timeout) as e:
            raise Refused(f"{type(e).__name__}: {e}") from e
        return Response(r.status, r.getheaders(), body, self.local_port)

    def request(self, target, method="GET", body=None, headers=None):
        self.send(target, method, body, headers)
        return self.response()

    def close(self):
        self.conn.close()


def request(port, cert, ca, target=None, source="127.0.0.1", method="GET",
            timeout=30):
    """One request over a fresh connection; Response, or Refused when the
    handshake or the answer failed."""
    c = Connection(port, cert, ca, source, timeout)
    try:
        try:
            c.connect()
        except (ssl.SSLError, ConnectionError) as e:
            raise Refused(f"{type(e).__name__}: {e}") from e
        return c.request(target or eas_target(), method)
    finally:
        c.close()
