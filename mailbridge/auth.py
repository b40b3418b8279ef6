"""Sender authentication: does a mail really come from the domain in its From?

`sender_auth` (settings) chooses how we know:

- `off`: we do not check (the From address is believed, as before);
- `authres`: the trusted upstream (the MX in front of us, or the mailbox provider for
  IMAP) checked it and wrote an Authentication-Results header (RFC 8601). Only the
  topmost such header whose authserv-id is one of `trusted_authserv_id` counts: a
  sender can write any header it likes below it. DMARC decides when it is there
  (pass = authentic, fail = not); without a DMARC result an aligned DKIM pass, an
  aligned SPF pass or an aligned SMTP AUTH pass is enough;
- `dkim`: we verify the DKIM signatures here (dkimpy, DNS lookups of 3 s at most) and
  need one that passes and is aligned with the From domain.

Aligned means the same domain or one a subdomain of the other (relaxed alignment,
without a public-suffix list). Whatever is not shown authentic fails closed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

log = logging.getLogger(__name__)

POLICIES = ("off", "authres", "dkim")
DKIM_DNS_TIMEOUT = 3


@dataclass(frozen=True)
class AuthVerdict:
    passed: bool
    method: str  # dmarc | dkim | spf | auth | none | off
    detail: str


def aligned(domain: str, from_domain: str) -> bool:
    domain, from_domain = domain.lower().strip(". "), from_domain.lower().strip(". ")
    if not domain or not from_domain:
        return False
    return (domain == from_domain or from_domain.endswith("." + domain)
            or domain.endswith("." + from_domain))


# --- Authentication-Results (RFC 8601) -----------------------------------------------------

_COMMENT_RE = re.compile(r"\((?:[^()\\]|\\.)*\)")
_PAIR_RE = re.compile(r'([A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]+)')


@dataclass(frozen=True)
class AuthResult:
    method: str
    result: str
    properties: dict[str, str]


def _strip_comments(value: str) -> str:
    previous = None
    while previous != value:  # nested comments come off from the inside out
        previous, value = value, _COMMENT_RE.sub(" ", value)
    return value


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """(authserv-id, results) of one Authentication-Results header value."""
    parts = _strip_comments(" ".join(value.split())).split(";")
    authserv_id = parts[0].strip().split(" ")[0].lower() if parts else ""
    results = []
    for part in parts[1:]:
        pairs = _PAIR_RE.findall(part)
        if not pairs:
            continue
        method, result = pairs[0]
        properties = {key.lower(): val.strip('"').lower() for key, val in pairs[1:]}
        results.append(AuthResult(method.split("/")[0].lower(), result.lower(), properties))
    return authserv_id, results


def _domain_of(value: str) -> str:
    return value.rsplit("@", 1)[-1].strip("<> ").lower()


def verdict_from_authres(message: Message, from_domain: str, trusted: set[str]) -> AuthVerdict:
    if not trusted:
        return AuthVerdict(False, "none", "sender_auth=authres needs trusted_authserv_id")
    for raw_value in message.get_all("Authentication-Results", []) or []:
        authserv_id, results = parse_authentication_results(str(raw_value))
        if authserv_id not in trusted:
            continue
        return _decide(results, from_domain, authserv_id)  # the topmost trusted one only
    return AuthVerdict(False, "none", f"no Authentication-Results from {sorted(trusted)}")


def _decide(results: list[AuthResult], from_domain: str, authserv_id: str) -> AuthVerdict:
    for r in results:
        if r.method == "dmarc":
            header_from = r.properties.get("header.from", from_domain)
            if not aligned(header_from, from_domain):
                continue  # a result about another From: not about this mail
            if r.result == "pass":
                return AuthVerdict(True, "dmarc", f"{authserv_id}: dmarc=pass")
            return AuthVerdict(False, "dmarc", f"{authserv_id}: dmarc={r.result}")
    for r in results:
        if r.result != "pass":
            continue
        if r.method == "dkim":
            domain = r.properties.get("header.d") or _domain_of(r.properties.get("header.i", ""))
            if aligned(domain, from_domain):
                return AuthVerdict(True, "dkim", f"{authserv_id}: dkim=pass d={domain}")
        elif r.method == "spf":
            domain = _domain_of(r.properties.get("smtp.mailfrom", ""))
            if aligned(domain, from_domain):
                return AuthVerdict(True, "spf", f"{authserv_id}: spf=pass {domain}")
        elif r.method == "auth":
            domain = _domain_of(r.properties.get("smtp.auth", ""))
            if aligned(domain, from_domain):
                return AuthVerdict(True, "auth", f"{authserv_id}: auth=pass {domain}")
    found = ", ".join(f"{r.method}={r.result}" for r in results) or "none"
    return AuthVerdict(False, "none", f"{authserv_id}: nothing aligned with {from_domain} "
                                      f"passed ({found})")


# --- DKIM verified here (dkimpy) -------------------------------------------------------------

DnsTxt = Callable[..., Any]


def verdict_from_dkim(raw: bytes, from_domain: str, dnsfunc: DnsTxt | None = None) -> AuthVerdict:
    try:
        import dkim
    except ImportError:
        return AuthVerdict(False, "none", "sender_auth=dkim needs the dkimpy package")
    checker = dkim.DKIM(raw, timeout=DKIM_DNS_TIMEOUT)
    count = sum(1 for line in raw.split(b"\n")
                if line[:15].lower() == b"dkim-signature:")
    if not count:
        return AuthVerdict(False, "dkim", "no DKIM signature")
    seen = []
    for index in range(min(count, 5)):
        try:
            ok = (checker.verify(idx=index, dnsfunc=dnsfunc) if dnsfunc is not None
                  else checker.verify(idx=index))
        except Exception as exc:  # a malformed signature or DNS trouble: not authentic
            seen.append(f"#{index}: {type(exc).__name__}")
            continue
        domain = (checker.domain or b"").decode("ascii", "replace")
        if ok and aligned(domain, from_domain):
            return AuthVerdict(True, "dkim", f"dkim=pass d={domain}")
        seen.append(f"#{index}: {'pass' if ok else 'fail'} d={domain}")
    return AuthVerdict(False, "dkim", f"no aligned DKIM pass for {from_domain}: {seen}")


# --- the pipeline's question -----------------------------------------------------------------

def authenticate(
    *, policy: str, raw: bytes, message: Message, sender: str,
    trusted_authserv_ids: str | None = None, dnsfunc: DnsTxt | None = None,
) -> AuthVerdict:
    if policy == "off":
        return AuthVerdict(True, "off", "sender_auth is off")
    from_domain = _domain_of(sender) if "@" in sender else ""
    if not from_domain:
        return AuthVerdict(False, "none", "no sender domain")
    if policy == "authres":
        trusted = {t.strip().lower() for t in (trusted_authserv_ids or "").split(",") if t.strip()}
        return verdict_from_authres(message, from_domain, trusted)
    if policy == "dkim":
        return verdict_from_dkim(raw, from_domain, dnsfunc)
    return AuthVerdict(False, "none", f"unknown sender_auth policy {policy!r}")


# Tests and deployments with their own resolver set this (dkimpy's dnsfunc signature).
DKIM_DNSFUNC: DnsTxt | None = None
