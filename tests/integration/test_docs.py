"""docs/logging.md cannot drift from the outcome tables: every reason token
of src/tbl/reasons.h (with the status the device sees) and every detail
token of src/tbl/http_errors.h, eas_errors.h and identity_details.h is
documented, and the docs name no cert_/backend_/bad_request_ token that the
tables do not have. Pure file checks, no daemon."""

import os
import re

SRCDIR = os.environ.get("EKP_SRCDIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TBL = os.path.join(SRCDIR, "src", "tbl")
LOGGING = os.path.join(SRCDIR, "docs", "logging.md")
TROUBLE = os.path.join(SRCDIR, "docs", "troubleshooting.md")

REASON_RE = re.compile(r'^REASON\(\s*(\w+)\s*,\s*"([^"]*)"\s*,\s*(\d+)\s*,'
                       r'\s*([01])\s*,', re.M)
HTTP_RE = re.compile(r'^HTTP_ERR\(\s*(\w+)\s*,\s*"([^"]*)"\s*,\s*(\w+)\s*,',
                     re.M)
EAS_RE = re.compile(r'^EAS_ERR\(\s*(\w+)\s*,\s*"([^"]*)"\s*,', re.M)
IDENTITY_RE = re.compile(r'^IDENTITY_DETAIL\(\s*(\w+)\s*,\s*"([^"]*)"\s*,',
                         re.M)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def table(name, rx):
    """Rows of src/tbl/<name> as regex match tuples; [] when the table does
    not exist in this tree."""
    path = os.path.join(TBL, name)
    if not os.path.exists(path):
        return []
    rows = rx.findall(read(path))
    assert rows, f"{path} exists but no row was parsed: has its format changed?"
    return rows


def code_spans(text):
    return set(re.findall(r"`([^`\n]+)`", text))


def rows_for(text, token):
    """Markdown table rows whose first cell starts with `token`."""
    return [ln for ln in text.splitlines()
            if ln.startswith(f"| `{token}`")]


def test_every_reason_token_is_documented_with_its_status():
    doc = read(LOGGING)
    spans = code_spans(doc)
    reasons = table("reasons.h", REASON_RE)
    assert reasons, "src/tbl/reasons.h has no REASON() rows"
    missing, wrong_status = [], []
    for rid, token, status, _peer in reasons:
        if token not in spans:
            missing.append(f"{rid} `{token}`")
            continue
        rows = rows_for(doc, token)
        if status != "0" and not any(re.search(rf"\b{status}\b", r)
                                     for r in rows):
            wrong_status.append(f"{rid} `{token}`: no table row starting "
                                f"with `{token}` names status {status}")
    assert not missing, ("reason tokens of src/tbl/reasons.h missing from "
                         "docs/logging.md: " + ", ".join(missing))
    assert not wrong_status, "\n".join(wrong_status)


def test_every_detail_token_is_documented():
    spans = code_spans(read(LOGGING))
    missing = []
    for rid, token, kind in table("http_errors.h", HTTP_RE):
        if kind == "NONE":
            continue
        want = f"bad_request_{token}" if kind == "BAD" else token
        if want not in spans:
            missing.append(f"http_errors.h {rid} `{want}`")
    for rid, token in table("eas_errors.h", EAS_RE):
        if rid != "NONE" and f"bad_request_{token}" not in spans:
            missing.append(f"eas_errors.h {rid} `bad_request_{token}`")
    for rid, token in table("identity_details.h", IDENTITY_RE):
        if rid != "NONE" and token not in spans:
            missing.append(f"identity_details.h {rid} `{token}`")
    assert not missing, ("detail tokens missing from docs/logging.md: " +
                         ", ".join(missing))


def test_docs_name_no_token_the_tables_do_not_have():
    reasons = {t for _, t, _, _ in table("reasons.h", REASON_RE)}
    bad = {"bad_request_" + t for _, t, k in table("http_errors.h", HTTP_RE)
           if k == "BAD"}
    bad |= {"bad_request_" + t for rid, t in table("eas_errors.h", EAS_RE)
            if rid != "NONE"}
    unknown = []
    for path in (LOGGING, TROUBLE):
        for span in sorted(code_spans(read(path))):
            for family in ("cert_", "backend_", "bad_request_"):
                if not re.fullmatch(family + r"[a-z0-9_]+", span) or \
                        span in reasons:
                    continue
                if family == "bad_request_" and (span in bad or not bad):
                    continue
                unknown.append(f"{os.path.basename(path)}: `{span}`")
    assert not unknown, ("docs name tokens that src/tbl/ does not define: " +
                         ", ".join(unknown))
