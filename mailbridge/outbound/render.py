"""Jinja2 templates → a complete, safe outbound message (headers we control)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from mailbridge.db import utcnow
from mailbridge.outbound.addresses import needs_smtputf8, transport_form
from mailbridge.parse.mime import clean_header_text
from mailbridge.resources import data_dir

DEFAULT_TEMPLATES = data_dir("templates", "ack.txt.j2")


@lru_cache(maxsize=4)
def template_env(directory: str | None = None) -> Environment:
    # HTML templates are autoescaped; text templates render customer text as is
    # (a text/plain body cannot execute anything), headers are built separately.
    return Environment(
        loader=FileSystemLoader(directory or str(DEFAULT_TEMPLATES)),
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def new_message_id(domain: str, hint: str = "") -> str:
    token = secrets.token_hex(8)
    prefix = f"{hint}." if hint else ""
    return f"<{prefix}{token}@{domain}>"


def _address(text: str, name: str = "") -> Address:
    local, _, domain = transport_form(text).rpartition("@")
    if len(local) > 1 and local.startswith('"') and local.endswith('"'):
        # A quoted local part ("power quadrant system"@…): the header quotes it itself.
        local = local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return Address(display_name=clean_header_text(name), username=local, domain=domain)


def _is_international(draft: Draft) -> bool:
    """An address with a non-ASCII local part: only SMTPUTF8 (RFC 6531) can carry the mail,
    and its address headers are written in UTF-8 (an encoded word is not allowed there)."""
    return any(needs_smtputf8(a) for a in (*draft.to, *draft.cc, draft.reply_to or ""))


@dataclass
class Draft:
    """Everything needed to build one outbound mail."""

    template: str
    context: dict[str, Any]
    to: list[str]
    subject: str
    from_address: str
    from_name: str
    cc: list[str] = field(default_factory=list)
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    message_id: str | None = None
    auto_submitted: str = "auto-replied"
    extra_headers: dict[str, str] = field(default_factory=dict)
    attachments: list[DraftAttachment] = field(default_factory=list)
    # False for mail whose automatic answer we want (a vendor's ticket number).
    suppress_auto_responses: bool = True
    # At most this many recipients (To first, then Cc); the rest are left out and logged
    # (rules.yaml desk.max_auto_recipients).
    max_recipients: int = 10

    def capped(self) -> tuple[Draft, list[str]]:
        """This draft within `max_recipients` (duplicates dropped), and who was left out."""
        seen: set[str] = set()
        kept_to: list[str] = []
        kept_cc: list[str] = []
        left_out: list[str] = []
        for address, kept in [*((a, kept_to) for a in self.to), *((a, kept_cc) for a in self.cc)]:
            key = address.lower()
            if key in seen:
                continue
            seen.add(key)
            if len(kept_to) + len(kept_cc) < self.max_recipients:
                kept.append(address)
            else:
                left_out.append(address)
        if not left_out and kept_to == self.to and kept_cc == self.cc:
            return self, []
        return replace(self, to=kept_to, cc=kept_cc), left_out


@dataclass(frozen=True)
class DraftAttachment:
    """A file sent with the mail (evidence forwarded to a vendor)."""

    filename: str
    content_type: str
    data: bytes


def render(draft: Draft, templates_dir: str | None = None) -> tuple[str, bytes]:
    """Render the draft; returns (Message-ID, RFC 5322 bytes with CRLF)."""
    env = template_env(templates_dir)
    body = env.get_template(draft.template).render(**draft.context)
    if not draft.attachments:
        return _render_text_only(draft, body)
    return _render_mime(draft, body)


def _header_values(draft: Draft) -> tuple[str, list[tuple[str, str]]]:
    """(Message-ID, the headers in order) as `email.policy.SMTP` would be given them."""
    headers: list[tuple[str, str]] = [
        ("From", str(_address(draft.from_address, draft.from_name))),
        ("To", ", ".join(str(_address(a)) for a in draft.to)),
    ]
    if draft.cc:
        headers.append(("Cc", ", ".join(str(_address(a)) for a in draft.cc)))
    headers.append(("Subject", clean_header_text(draft.subject)))
    headers.append(("Date", format_datetime(utcnow())))
    domain = draft.from_address.rsplit("@", 1)[-1]
    message_id = draft.message_id or new_message_id(domain)
    headers.append(("Message-ID", message_id))
    if draft.in_reply_to:
        headers.append(("In-Reply-To", draft.in_reply_to))
    refs = [r for r in draft.references if r]
    if draft.in_reply_to and draft.in_reply_to not in refs:
        refs.append(draft.in_reply_to)
    if refs:
        # Keep the first and the last ones when the chain grows long (RFC 5322 3.6.4).
        headers.append(("References", " ".join(refs[:1] + refs[-9:] if len(refs) > 10 else refs)))
    if draft.reply_to:
        headers.append(("Reply-To", str(_address(draft.reply_to, draft.from_name))))
    headers.append(("Auto-Submitted", draft.auto_submitted))
    if draft.suppress_auto_responses:
        # Ask Exchange/Outlook not to answer with out-of-office and receipts.
        headers.append(("X-Auto-Response-Suppress", "All"))
    headers.append(("X-Loop", draft.from_address))
    for name, value in draft.extra_headers.items():
        headers.append((name, clean_header_text(value)))
    return message_id, headers


# What the policy would change: line breaks, runs of whitespace, encoded words, controls.
_NEEDS_POLICY = re.compile(r"[\r\n\t\x00-\x1f\x7f]| {2}|=\?")
_ADDRESS_HEADERS = frozenset({"To", "Cc", "Reply-To"})
_TEXT_BODY_HEADERS = (
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"MIME-Version: 1.0\r\n"
)


@lru_cache(maxsize=512)
def _folded(utf8: bool, name: str, value: str) -> bytes:
    """One header line as the policy folds it. Cached: an opening's acknowledgement and
    the queue's notice carry the same subject (525 folds, 227 distinct, in 300 mails)."""
    policy = SMTPUTF8 if utf8 else SMTP
    return policy.fold_binary(name, policy.header_store_parse(name, value)[1])


def _render_text_only(draft: Draft, body: str) -> tuple[str, bytes]:
    """The usual mail (no attachment), byte for byte what `_render_mime` makes.

    The email package's header objects parse every value we set and parse it again to
    fold it (about 1 ms per ack, bench/README.md). Short ASCII lines need neither, so
    they are written as they are; anything longer or non-ASCII is folded by the same
    policy as before. Header names and values are ours or cleaned to one line.
    """
    message_id, headers = _header_values(draft)
    address_policy = SMTPUTF8 if _is_international(draft) else SMTP
    out: list[bytes] = []
    for name, value in headers:
        line = f"{name}: {value}"
        if len(line) <= SMTP.max_line_length and line.isascii() and value \
                and value.strip() == value and not _NEEDS_POLICY.search(value):
            out.append(line.encode("ascii") + b"\r\n")
        else:
            out.append(_folded(name in _ADDRESS_HEADERS and address_policy is SMTPUTF8,
                               name, value))
    out.append(_TEXT_BODY_HEADERS)
    out.append(b"\r\n")
    # As email.contentmanager encodes text with cte="quoted-printable".
    lines = body.encode("utf-8").splitlines()
    encoded = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"),
                                     SMTP.max_line_length)
    out.append("\r\n".join(encoded.split("\n")).encode("ascii"))
    return message_id, b"".join(out)


def _render_mime(draft: Draft, body: str) -> tuple[str, bytes]:
    msg = EmailMessage()
    msg["From"] = _address(draft.from_address, draft.from_name)
    msg["To"] = [_address(a) for a in draft.to]
    if draft.cc:
        msg["Cc"] = [_address(a) for a in draft.cc]
    msg["Subject"] = clean_header_text(draft.subject)
    msg["Date"] = format_datetime(utcnow())
    domain = draft.from_address.rsplit("@", 1)[-1]
    message_id = draft.message_id or new_message_id(domain)
    msg["Message-ID"] = message_id
    if draft.in_reply_to:
        msg["In-Reply-To"] = draft.in_reply_to
    refs = [r for r in draft.references if r]
    if draft.in_reply_to and draft.in_reply_to not in refs:
        refs.append(draft.in_reply_to)
    if refs:
        # Keep the first and the last ones when the chain grows long (RFC 5322 3.6.4).
        msg["References"] = " ".join(refs[:1] + refs[-9:] if len(refs) > 10 else refs)
    if draft.reply_to:
        msg["Reply-To"] = _address(draft.reply_to, draft.from_name)
    msg["Auto-Submitted"] = draft.auto_submitted
    if draft.suppress_auto_responses:
        # Ask Exchange/Outlook not to answer with out-of-office and receipts.
        msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Loop"] = draft.from_address
    for name, value in draft.extra_headers.items():
        msg[name] = clean_header_text(value)
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    for item in draft.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        # Only leaf types: bytes cannot make a message/* or multipart/* part.
        if not (maintype.isalpha() and subtype) or maintype in ("message", "multipart") \
                or not all(c.isalnum() or c in "+-." for c in subtype):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(item.data, maintype=maintype, subtype=subtype,
                           filename=clean_header_text(item.filename) or "adjunto")
    return message_id, msg.as_bytes(policy=SMTPUTF8 if _is_international(draft) else SMTP)
