#!/usr/bin/python3
"""An "Exchange with Extended Protection" for the lab: HTTPS + Negotiate
that checks GSSAPI channel bindings (RFC 5929 tls-server-end-point of its
own certificate), which mod_auth_gssapi 1.6.4 cannot do (it has no such
directive and passes no bindings to gss_accept_sec_context).

MIT krb5 accepts a token that carries *no* bindings even when the acceptor
supplies them; it sets GSS_C_CHANNEL_BOUND_FLAG (0x800) only when they were
present and matched.  So: wrong bindings -> GSS_S_BAD_BINDINGS -> 401
"cb_mismatch"; no bindings -> 401 "cb_missing" with --require, else
accepted and reported as "absent".

Like IIS, authentication persists for the TCP connection.  Answers every
path with a JSON echo (remote_user, channel_bindings, method, uri, query,
headers, body_length, body_sha256); OPTIONS also gets the EAS headers.
One JSON line per request goes to --log.  Started and stopped by lab.py.
"""

import argparse
import base64
import hashlib
import http.server
import json
import socketserver
import ssl
import sys
import threading
import urllib.parse

import gssapi

GSS_C_CHANNEL_BOUND_FLAG = 0x800


def tls_server_end_point(cert_pem_path):
    """RFC 5929: the certificate's hash with its signature's hash algorithm
    (SHA-256 for MD5 and SHA-1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    with open(cert_pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(cert.public_bytes(serialization.Encoding.DER))
    return b"tls-server-end-point:" + h.finalize()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LabCB/1"

    def setup(self):
        super().setup()
        self.user = None            # authenticated user of this connection

    def log_message(self, fmt, *args):
        pass

    def read_body(self):
        h = hashlib.sha256()
        n = 0
        te = self.headers.get("Transfer-Encoding", "")
        if te.lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    b = self.rfile.read(min(left, 65536))
                    if not b:
                        raise ConnectionError("body cut short")
                    h.update(b)
                    left -= len(b)
                n += size
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0") or 0)
            while left:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    raise ConnectionError("body cut short")
                h.update(b)
                n += len(b)
                left -= len(b)
        return n, h.hexdigest()

    def authenticate(self):
        """-> (user or None, cb state, mutual-auth token or None)."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Negotiate "):
            return self.user, "persisted" if self.user else "none", None
        srv = self.server
        cb = gssapi.raw.ChannelBindings(application_data=srv.cb_data)
        # the raw call: the high-level SecurityContext.step() hands back the
        # acceptor's error token and defers the error itself
        try:
            res = gssapi.raw.accept_sec_context(
                base64.b64decode(auth.split(" ", 1)[1].strip()),
                srv.acceptor, channel_bindings=cb)
        except gssapi.exceptions.BadChannelBindingsError:
            return None, "cb_mismatch", None
        except (gssapi.exceptions.GSSError, ValueError) as e:
            return None, "gss_error: " + str(e).replace("\n", " "), None
        if res.more_steps:
            return None, "incomplete", None
        bound = bool(int(res.flags) & GSS_C_CHANNEL_BOUND_FLAG)
        if not bound and srv.require:
            return None, "cb_missing", None
        out = res.token
        self.user = gssapi.raw.display_name(res.initiator_name).name.decode()
        return self.user, "bound" if bound else "absent", out

    def handle_any(self):
        try:
            n, digest = self.read_body()
        except (ValueError, ConnectionError):
            self.close_connection = True
            return
        user, cb, token = self.authenticate()
        url = urllib.parse.urlsplit(self.path)
        entry = {"remote_port": self.client_address[1], "method": self.command,
                 "uri": self.path, "user": user, "cb": cb}
        if user is None:
            status = 401
            body = b"unauthorized\n"
            extra = [("WWW-Authenticate", "Negotiate")]
        else:
            status = 200
            extra = []
            if token:
                extra.append(("WWW-Authenticate",
                              "Negotiate " + base64.b64encode(token).decode()))
            if self.command == "OPTIONS":
                extra += [("MS-ASProtocolVersions", "14.0,14.1,16.0,16.1"),
                          ("MS-ASProtocolCommands", "Sync,FolderSync,Ping"),
                          ("MS-Server-ActiveSync", "15.1")]
            doc = {"remote_user": user, "channel_bindings": cb,
                   "method": self.command, "uri": self.path,
                   "path": url.path, "query": url.query,
                   "remote_port": str(self.client_address[1]),
                   "headers": {k.lower(): v for k, v in self.headers.items()
                               if k.lower() != "authorization"},
                   "body_length": n, "body_sha256": digest, "https": True}
            body = (json.dumps(doc, sort_keys=True) + "\n").encode()
        entry["status"] = status
        self.server.log(entry)
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json" if status == 200
                         else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_OPTIONS = do_HEAD = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def finish_request(self, request, client_address):
        # TLS handshake in the connection's own thread, not in accept()
        tls = self.tls.wrap_socket(request, server_side=True)
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request, client_address):
        # a peer that resets or fails the handshake is not news; our bugs are
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--keytab", required=True)
    ap.add_argument("--rcache", required=True)
    ap.add_argument("--acceptor", default="HTTP@exchange.example.test")
    ap.add_argument("--log", required=True)
    ap.add_argument("--require", action="store_true")
    a = ap.parse_args()

    srv = Server(("127.0.0.1", a.port), Handler)
    srv.cb_data = tls_server_end_point(a.cert)
    srv.require = a.require
    name = gssapi.Name(a.acceptor, gssapi.NameType.hostbased_service)
    srv.acceptor = gssapi.Credentials(
        name=name, usage="accept",
        store={"keytab": a.keytab, "rcache": a.rcache})
    lock = threading.Lock()
    logf = open(a.log, "a", buffering=1)

    def log(entry):
        with lock:
            logf.write(json.dumps(entry, sort_keys=True) + "\n")
    srv.log = log

    srv.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.tls.load_cert_chain(a.cert, a.key)
    print("listening", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
