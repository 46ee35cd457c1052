#!/usr/bin/python3
"""Generate docs/eas-kcd-proxy.conf.5 from eas-kcd-proxy.conf.example.

The example file is where every key is written down with its default and a
one-line meaning (config.c's key table and its tests keep it complete), so
the man page is built from it instead of being a second copy that drifts:

    scripts/gen-conf-man.py            write docs/eas-kcd-proxy.conf.5
    scripts/gen-conf-man.py --check    exit 1 when the page is out of date
    scripts/gen-conf-man.py --stdout   print it

What the example cannot say in one line (how a section fits in, the keys
that need a paragraph) lives in SECTION_INTRO and MORE below.

Reading the example:
  * the comment block before the first section is the syntax description;
  * `key = value   ; meaning` lines are keys (value empty = no default;
    a meaning starting with "REQUIRED." marks a key without default, whose
    value is only an example);
  * a comment block inside a section that starts with "; key:" explains
    that key, any other block describes the section;
  * `backquoted` words become bold.
"""

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "eas-kcd-proxy.conf.example")
PAGE = os.path.join(ROOT, "docs", "eas-kcd-proxy.conf.5")

KEY_RE = re.compile(r"^([a-z_][a-z0-9_]*)\s*=\s*(.*?)\s*(?:(?<=\s);\s*(.*))?$")
SECTION_RE = re.compile(r"^\[([a-z]+)\]\s*$")

SECTION_INTRO = {
    "server": "Listeners, processes and the limits of one device connection. The "
              "parent binds every listen and admin_listen address as root, then "
              "starts the kcd process and the workers; workers drop to user.",
    "tls": "The device side: the proxy's own certificate, the CAs whose "
           "certificates devices present, and revocation. A device without a "
           "valid client certificate is refused in the handshake. Every file is "
           "read again on SIGHUP.",
    "identity": "How a verified device certificate names its user. The result is "
                "always a Kerberos principal user@REALM built here (never an "
                "enterprise name); a certificate that does not map gets 403 "
                "identity_unmapped.",
    "kerberos": "The kcd process: the only one that opens the keytab. It gets a "
                "service ticket for each user to Exchange through S4U2Self "
                "(protocol transition) and S4U2Proxy (constrained delegation); "
                "see eas-kcd-proxy(8) doctor for checking the set-up and "
                "docs/kerberos.md for the Active Directory side.",
    "backend": "The Exchange servers (or the load balancer in front of them). "
               "Backend connections are private to one user principal, as IIS "
               "binds Kerberos authentication to the TCP connection.",
    "ldap": "Optional directory checks in kcd: the account is "
            "enabled, in require_group, and strongly bound to the certificate; "
            "its sAMAccountName gives the Kerberos principal. Off while uri is "
            "empty.",
    "log": "The error log (one line per event, \"level component: message\") and "
           "the access log (one line per request, W3C extended like IIS, or "
           "JSON). SIGUSR1 reopens both (logrotate).",
}

MORE = {
    ("server", "user"): "Refused when it does not exist; root as user keeps root "
                        "privileges in the workers and is only warned about.",
    ("server", "request_timeout"): "Ping and Sync requests park on Exchange for up "
                                   "to their HeartbeatInterval (at most 3540 s); a "
                                   "shorter timeout makes devices see errors instead "
                                   "of answers.",
    ("tls", "crl"): "With CRLs configured every CA in a device's chain needs a "
                    "current CRL, and an expired CRL refuses every device (fail "
                    "closed); publish the new CRL to the file and send SIGHUP.",
    ("tls", "require_client_auth_eku"): "With yes a leaf without any "
                                        "extendedKeyUsage is refused too; no "
                                        "disables the purpose check entirely.",
    ("identity", "realm"): "Realms are case-sensitive and copied as written.",
    ("kerberos", "keytab"): "The daemon refuses to start (and kcd to run after a "
                            "reload) with a keytab that every user may read or "
                            "write; keep it root-owned, mode 0600.",
    ("kerberos", "principal"): "With Active Directory, the service account's logon "
                               "name (easproxy@EXAMPLE.COM) is the safest choice; "
                               "the account must also carry a "
                               "servicePrincipalName for S4U2Self.",
    ("kerberos", "channel_bindings"): "The tls-server-end-point hash (RFC 5929) of "
                                      "Exchange's certificate goes into every token, "
                                      "so Exchange's Extended Protection can stay on. "
                                      "on refuses to work without it; off never "
                                      "sends it.",
    ("backend", "spn"): "It must be registered on the account whose key Exchange "
                        "uses (with several Exchange servers behind a load "
                        "balancer: the Alternate Service Account) and be in the "
                        "proxy account's msDS-AllowedToDelegateTo.",
    ("backend", "connect_to"): "Exchange's certificate is still verified against "
                               "the server's name, not this address.",
    ("ldap", "strong_mapping"): "Compares the certificate's SID extension or the "
                                "account's altSecurityIdentities, as KB5014754 "
                                "requires of Windows.",
    ("ldap", "on_failure"): "allow lets users through with only the Kerberos checks "
                            "while the directory is down; deny answers 503.",
}


def roff_text(s):
    """Escape running text for man(7); `code` becomes bold."""
    s = s.replace("\\", "\\e")
    s = re.sub(r"`([^`]+)`", lambda m: "\\fB" + m.group(1) + "\\fR", s)
    return s


def roff_literal(s):
    """A literal (key, value): escaped, hyphens as \\-."""
    return s.replace("\\", "\\e").replace("-", "\\-")


def lines_out(text):
    """Text as input lines, none starting with a control character."""
    out = []
    for ln in text.split("\n"):
        if ln[:1] in (".", "'"):
            ln = "\\&" + ln
        out.append(ln)
    return out


def parse(path):
    """-> (preamble paragraphs, sections); a paragraph is ('text', str) or
    ('example', str); sections: list of dicts name, prose, keys (list of
    dicts key, value, meaning, required, more)."""
    with open(path, encoding="utf-8") as f:
        raw = f.read().splitlines()
    preamble, sections = [], []
    block = []          # pending comment lines
    cur = None

    def flush_preamble():
        para, example = [], []
        for ln in block + [""]:
            if ln.startswith("  "):
                example.append(ln.strip())
                continue
            if example:
                if para:
                    preamble.append(("text", " ".join(para)))
                    para = []
                preamble.append(("example", "\n".join(example)))
                example = []
            if ln.strip() == "":
                if para:
                    preamble.append(("text", " ".join(para)))
                para = []
            else:
                para.append(ln.strip())
        block.clear()

    for ln in raw:
        if ln.startswith(";") or ln.startswith("#"):
            block.append(ln[1:][1:] if ln[1:2] == " " else ln[1:])
            continue
        m = SECTION_RE.match(ln)
        if m:
            if cur is None:
                flush_preamble()
            block.clear()
            cur = {"name": m.group(1), "prose": [], "keys": [], "pending": {}}
            sections.append(cur)
            continue
        if not ln.strip():
            if cur is None:
                block.append("")
            continue
        m = KEY_RE.match(ln)
        if not m or cur is None:
            raise SystemExit(f"{path}: cannot read line: {ln!r}")
        key, value, meaning = m.group(1), m.group(2), (m.group(3) or "").strip()
        if block:
            text = " ".join(b.strip() for b in block)
            if text.startswith(key + ":"):
                cur["pending"][key] = text[len(key) + 1:].strip()
            else:
                cur["prose"].append(text)
            block.clear()
        required = meaning.startswith("REQUIRED.")
        if required:
            meaning = meaning[len("REQUIRED."):].strip()
        cur["keys"].append({"key": key, "value": value, "meaning": meaning,
                            "required": required,
                            "more": cur["pending"].pop(key, None)})
    return preamble, sections


def render(preamble, sections):
    out = []
    w = out.append
    w(".\\\" Generated by scripts/gen-conf-man.py from eas-kcd-proxy.conf.example;")
    w(".\\\" edit those, not this file.")
    w(".TH EAS\\-KCD\\-PROXY.CONF 5 \"\" \"eas\\-kcd\\-proxy\" \"File Formats Manual\"")
    w(".SH NAME")
    w("eas\\-kcd\\-proxy.conf \\- configuration file of eas\\-kcd\\-proxy")
    w(".SH SYNOPSIS")
    w(".I /etc/eas\\-kcd\\-proxy/eas\\-kcd\\-proxy.conf")
    w(".SH DESCRIPTION")
    w("The one configuration file of")
    w(".BR eas\\-kcd\\-proxy (8),")
    w("the reverse proxy that lets Exchange ActiveSync devices sign in with a client "
      "certificate and reaches Exchange with Kerberos Constrained Delegation.")
    for kind, text in preamble:
        if kind == "text" and text.startswith("eas-kcd-proxy.conf.example"):
            continue            # the example's own title line
        if kind == "text":
            w(".PP")
            out.extend(lines_out(roff_text(text)))
        else:
            w(".PP")
            w(".RS 4")
            w(".nf")
            out.extend(lines_out(roff_literal(text)))
            w(".fi")
            w(".RE")
    w(".PP")
    w("The file is read again on SIGHUP: a new configuration replaces the running one "
      "only when it is valid in full, otherwise the error log names each problem and "
      "the running one stays.")
    w(".SH SECTIONS AND KEYS")
    for sec in sections:
        w(f".SS [{sec['name']}]")
        intro = SECTION_INTRO.get(sec["name"])
        if intro:
            out.extend(lines_out(roff_text(intro)))
        for p in sec["prose"]:
            w(".PP")
            out.extend(lines_out(roff_text(p)))
        for k in sec["keys"]:
            w(".TP")
            head = f"\\fB{roff_literal(k['key'])}\\fR"
            if k["required"]:
                head += f" (REQUIRED), e.g. \\fI{roff_literal(k['value'])}\\fR"
            elif k["value"]:
                head += f" = \\fI{roff_literal(k['value'])}\\fR"
            else:
                head += " = (empty)"
            w(head)
            text = k["meaning"]
            if text and not text.endswith("."):
                text += "."
            for extra in (k["more"], MORE.get((sec["name"], k["key"]))):
                if extra:
                    text += " " + extra[:1].upper() + extra[1:]
            out.extend(lines_out(roff_text(text)))
    w(".SH EXAMPLE")
    w("The smallest working file names the realm, the proxy's principal and "
      "Exchange; everything else has a safe default:")
    w(".PP")
    w(".RS 4")
    w(".nf")
    for ln in ("[identity]", "realm = EXAMPLE.COM", "", "[kerberos]",
               "principal = easproxy@EXAMPLE.COM", "", "[backend]",
               "servers = mail1.example.com, mail2.example.com",
               "spn = HTTP/mail.example.com", "ca = /etc/eas-kcd-proxy/exchange-ca.pem"):
        w(roff_literal(ln) if ln else "")
    w(".fi")
    w(".RE")
    w(".SH FILES")
    w(".TP")
    w(".I /etc/eas\\-kcd\\-proxy/eas\\-kcd\\-proxy.conf")
    w("The default configuration file.")
    w(".TP")
    w(".I eas\\-kcd\\-proxy.conf.example")
    w("In the source tree: every key with its default, the source of this page.")
    w(".SH SEE ALSO")
    w(".BR eas\\-kcd\\-proxy (8),")
    w(".BR krb5.conf (5),")
    w(".BR ldap.conf (5);")
    w("docs/kerberos.md (Active Directory and Exchange set-up),")
    w("docs/deployment.md, docs/logging.md, docs/troubleshooting.md")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when docs/eas-kcd-proxy.conf.5 is out of date")
    ap.add_argument("--stdout", action="store_true", help="print the page")
    ap.add_argument("--example", default=EXAMPLE)
    ap.add_argument("--page", default=PAGE)
    a = ap.parse_args()
    page = render(*parse(a.example))
    if a.stdout:
        sys.stdout.write(page)
        return 0
    if a.check:
        try:
            with open(a.page, encoding="utf-8") as f:
                have = f.read()
        except OSError:
            have = None
        if have != page:
            print(f"{a.page} is out of date: run scripts/gen-conf-man.py",
                  file=sys.stderr)
            return 1
        return 0
    with open(a.page, "w", encoding="utf-8") as f:
        f.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
