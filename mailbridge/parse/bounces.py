"""Bounces: is this a delivery failure report, and which of our mails and addresses failed."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

from mailbridge.parse.fieldvalues import may_hold_caseless

log = logging.getLogger(__name__)

_MAX_SCAN_CHARS = 60_000
_MAX_RECIPIENTS = 50

_ADDRESS_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_CODE_RE = re.compile(r"(?<![\d.])([45]\d\d)(?:[ -]|$)")
_MESSAGE_ID_RE = re.compile(r"^\s*message-id\s*:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)

# Local parts and names of the senders of delivery reports.
_DAEMON_LOCAL_RE = re.compile(
    r"^(?:mailer[-_]?daemon|postmaster|post_master|mail[-_]?daemon|mailerdaemon|"
    r"mdaemon|mail-?delivery|bounces?|nobody-bounce)$",
    re.IGNORECASE,
)
_DAEMON_NAME_RE = re.compile(
    r"mail delivery (?:system|subsystem|service)|mailer[-_ ]?daemon|postmaster|"
    r"sistema de entrega|servicio de entrega",
    re.IGNORECASE,
)
BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|not delivered|delivery (?:status )?notification|delivery fail|"
    r"delivery failure|delivery problem|delivery report|mail delivery|failure notice|"
    r"returned mail|returned to sender|return(?:ing)? message to sender|non[- ]?deliver|"
    r"nondeliverable|could not be delivered|couldn't be delivered|mail system error|"
    r"warning: message .* delayed|delayed mail|message delayed|mail failure|"
    r"unable to deliver|message not deliverable|delivery has failed|rejected:|"
    r"no se (?:ha )?pod(?:ido|ía) entregar|no se puede entregar|no entregado|entrega fallida|"
    r"error (?:en la|de) entrega|notificaci[oó]n de (?:estado de )?entrega|devuelto|"
    r"unzustellbar|nicht zustellbar|non recapitabile|non remis|"
    r"\bbounced?\b|\bdsn\b|delivery-status|mail could not|message you sent|"
    r"error transferring|not listed in|permanent error|mail rejected|mail failed|"
    r"returning to sender",
    re.IGNORECASE,
)
# Lower-case words every BOUNCE_SUBJECT_RE match contains one of (tests check each
# alternative): a subject without any is not searched.
BOUNCE_SUBJECT_NEEDLES = (
    "deliver", "fail", "return", "error", "delay", "reject", "entreg", "devuelto",
    "zustellbar", "recapitabile", "non remis", "bounce", "dsn", "could not", "you sent",
    "listed",
)
BOUNCE_BODY_RE = re.compile(
    r"this is the mail system at host|could not be delivered|couldn't be delivered|"
    r"was not delivered|undeliverable|delivery (?:to the following recipients? )?"
    r"(?:has )?failed|delivery has failed|permanent (?:fatal )?error|user unknown|unknown user|"
    r"no such (?:user|mailbox|recipient|address)|mailbox (?:unavailable|full|is full|not found)|"
    r"recipient address rejected|address rejected|i'm afraid i wasn't able to deliver|"
    r"i'm sorry to have to inform you|unable to deliver|returned to sender|failed recipient|"
    r"following addresses? (?:had permanent|failed)|host unknown|diagnostic-code|"
    r"final-recipient|retry time(?:out)? (?:not reached|exceeded)|delivery to the following|"
    r"does not exist|message could not|the following message to|not be delivered|"
    r"no se ha podido entregar|no se pudo entregar|no pudo ser entregado|"
    r"smtp error from remote|remote host said|said: [45]\d\d|\b[45]\.\d{1,3}\.\d{1,3}\b|"
    r"your message (?:was|wasn't|could not|did not|cannot)|message was not|"
    r"below this line is a copy|original message follows|"
    r"this is a copy of the message|message delivery has failed|delivery of your message|"
    r"error transferring|did not reach|not recognized|unknown host|no valid recipients|"
    r"blocked|rejected|spam|refused",
    re.IGNORECASE,
)
_REPLY_PREFIX_RE = re.compile(
    r"^\s*(?:re|rv|fw|fwd|tr|wg|aw|rif|r|reenviado|enc|res)\s*(?:\[\d+\])?\s*:", re.IGNORECASE
)
_SES_TYPE_RE = re.compile(r'\\?"notificationType\\?"\s*:\s*\\?"(?:Bounce|Complaint|Delivery)')
_FEEDBACK_SUBJECT_RE = re.compile(
    r"complaint about message|abuse report|feedback report|spam report|fbl report", re.IGNORECASE
)
_NOREPLY_LOCAL_RE = re.compile(r"^(?:no-?reply|do-?not-?reply|mail-?error|mailerror)$", re.I)
# What a failure of the address itself looks like (RFC 3463 class X.1 and "host unknown").
_HARD_TEXT_RE = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient)|does not exist|not exist|"
    r"(?:mailbox|account|recipient|address|user) (?:not found|unknown|invalid|"
    r"does not exist|is disabled|disabled|has been disabled)|invalid recipient|"
    r"host unknown|unknown host|domain (?:not found|does not exist)|no mx|"
    r"recipient address rejected: user unknown|unknown recipient|"
    r"user doesn't have|not our customer|undeliverable address|bad destination|"
    r"usuario desconocido|no existe|cuenta (?:desactivada|inexistente)",
    re.IGNORECASE,
)
# Where a non-standard bounce starts quoting the original message.
_ORIGINAL_START_RE = re.compile(
    r"^(?:[-= ]*(?:original message|below this line is a copy|this is a copy of the message|"
    r"copy of the message|the original message|unsent message below|undelivered message|"
    r"returned message|mensaje original|copia del mensaje|message headers follow|"
    r"headers of the original|original message headers)|received: |return-path: )",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass
class BounceInfo:
    """What a delivery report says about the message it returns."""

    recipients: list[str] = field(default_factory=list)
    status: str | None = None
    hard: bool = False
    original_message_id: str | None = None
    action: str | None = None  # "failed", "delayed", "delivered" … from the DSN
    diagnostic: str | None = None  # the remote server's words, one line
    kind: str = "dsn"  # "dsn" (RFC 3464), "arf" (feedback report), "text" (non-standard)


# --- detection (used by classify) --------------------------------------------------------------


def decoded_header(message: Message, name: str) -> str:
    """A header as text: RFC 2047 words decoded, whitespace folded; "" if unreadable."""
    try:
        value = message.get(name, "")
        if value is None:
            return ""
        text = str(value)
        # Classification reads ~30 headers per mail; most hold no encoded word, and
        # decoding those would give them back unchanged.
        if "=?" in text:
            try:
                text = str(make_header(decode_header(text)))
            except Exception:  # undecodable words: keep them as they are
                text = str(value)
        return _WHITESPACE_RE.sub(" ", text).strip()
    except Exception:
        return ""


_WHITESPACE_RE = re.compile(r"\s+")


_header = decoded_header


class MessageView:
    """What classification reads of one message, each read once: decoded headers
    (`decoded_header`), the content type, report type and part types. A header the
    message lacks is answered "" without a search (Message.get reads every header to
    miss one; classification asks for ~30 names, most of them absent). The message must
    not change while the view is used."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self._headers: dict[str, str] = {}
        self._names: frozenset[str] | None
        try:
            self._names = frozenset(str(key).lower() for key in message.keys())
        except Exception:  # read each header as decoded_header does
            self._names = None
        self._content_type: str | None = None
        self._report_type: str | None = None
        self._part_types: set[str] | None = None

    def header(self, name: str) -> str:
        key = name.lower()
        found = self._headers.get(key)
        if found is None:
            if self._names is not None and key not in self._names:
                found = ""  # what decoded_header gives for a missing header
            else:
                found = decoded_header(self.message, name)
            self._headers[key] = found
        return found

    def content_type(self) -> str:
        if self._content_type is None:
            self._content_type = content_type(self.message)
        return self._content_type

    def report_type(self) -> str:
        if self._report_type is None:
            self._report_type = report_type(self.message)
        return self._report_type

    def part_types(self) -> set[str]:
        if self._part_types is None:
            self._part_types = part_types(self.message)
        return self._part_types


def content_type(message: Message) -> str:
    try:
        return message.get_content_type()
    except Exception:
        return ""


def report_type(message: Message) -> str:
    try:
        return str(message.get_param("report-type", "", header="content-type") or "").lower()
    except Exception:
        return ""


def walk(message: Message, limit: int = 200) -> list[Message]:
    parts: list[Message] = []
    try:
        for part in message.walk():
            parts.append(part)
            if len(parts) >= limit:
                break
    except Exception:
        log.debug("walk failed", exc_info=True)
    return parts


def part_types(message: Message) -> set[str]:
    """Content types of the report itself, not of a message attached to it."""
    return {content_type(part) for part in _walk_outside_attached(message)}


_ATTACHED_ORIGINAL = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers"}
)


def has_attached_original(message: Message) -> bool:
    return bool(part_types(message) & _ATTACHED_ORIGINAL)


def is_null_or_daemon_path(message: Message, envelope_sender: str | None = None) -> bool:
    """The reverse path is null ("<>") or MAILER-DAEMON/postmaster."""
    candidates: list[str] = [] if envelope_sender is None else [envelope_sender]
    try:
        candidates.extend(str(value) for value in message.get_all("Return-Path", []) or [])
    except Exception:
        log.debug("Return-Path unreadable", exc_info=True)
    for value in candidates:
        inner = value.strip().strip("<>").strip()
        if not inner or _DAEMON_LOCAL_RE.match(inner.split("@", 1)[0]):
            return True
    return False


def _is_daemon_from(message: Message, view: MessageView | None = None) -> bool:
    name, address = parseaddr((view or MessageView(message)).header("From"))
    local = address.split("@", 1)[0] if address else ""
    return bool((local and _DAEMON_LOCAL_RE.match(local)) or _DAEMON_NAME_RE.search(name or ""))


def _is_mail_system_from(message: Message, view: MessageView | None = None) -> bool:
    """From MAILER-DAEMON / "Mail Delivery System": never a person (postmaster can be)."""
    name, address = parseaddr((view or MessageView(message)).header("From"))
    local = (address.split("@", 1)[0] if address else "").lower()
    if local and _DAEMON_LOCAL_RE.match(local) and "postmaster" not in local.replace("_", ""):
        return True
    return bool(_DAEMON_NAME_RE.search(name or "")) and "postmaster" not in (name or "").lower()


def is_daemon_sender(message: Message, envelope_sender: str | None = None) -> bool:
    """Null reverse path, or MAILER-DAEMON/postmaster as the sender."""
    return is_null_or_daemon_path(message, envelope_sender) or _is_daemon_from(message)


def text_of(message: Message, max_chars: int = _MAX_SCAN_CHARS) -> str:
    """The readable text of a report, for patterns; the returned message is skipped."""
    chunks: list[str] = []
    size = 0
    for part in _walk_outside_attached(message):
        ctype = content_type(part)
        broken_multipart = ctype.startswith("multipart/") and not part.is_multipart()
        readable = ctype.startswith("text/") or ctype == "message/delivery-status"
        if not (readable or broken_multipart):
            continue
        text = _decode(part)
        if ctype == "text/html":
            text = re.sub(r"<[^>]+>", " ", text)
        chunks.append(text)
        size += len(text)
        if size >= max_chars:
            break
    return "\n".join(chunks)[:max_chars]


def _walk_outside_attached(message: Message) -> list[Message]:
    """All parts except the insides of attached messages (the original we sent)."""
    out: list[Message] = []

    def visit(part: Message, depth: int) -> None:
        if len(out) >= 200 or depth > 20:
            return
        out.append(part)
        ctype = content_type(part)
        if ctype in ("message/rfc822", "message/global", "text/rfc822-headers"):
            return
        if part.is_multipart():
            try:
                children = part.get_payload()
            except Exception:
                return
            if isinstance(children, list):
                for child in children:
                    if isinstance(child, Message):
                        visit(child, depth + 1)

    visit(message, 0)
    return out


def _decode(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        try:
            raw = part.get_payload()
        except Exception:
            return ""
        if isinstance(raw, list):
            return "\n\n".join(_block_text(block) for block in raw if isinstance(block, Message))
        return raw if isinstance(raw, str) else ""
    if not isinstance(payload, bytes):
        return str(payload)
    charset = "utf-8"
    try:
        charset = part.get_content_charset() or "utf-8"
        return payload.decode(charset, "replace")
    except (LookupError, TypeError):
        return payload.decode("utf-8", "replace")


def _block_text(block: Message) -> str:
    return "\n".join(f"{key}: {value}" for key, value in block.items())


def bounce_reason(
    message: Message, envelope_sender: str | None = None, view: MessageView | None = None
) -> str | None:
    """Why this looks like a delivery report (or a feedback report), or None.

    A report a customer forwards to the desk ("RV: Undelivered Mail…", or attached as a
    message) is the customer's mail, not a bounce: only the report's own parts count, and
    subject rules skip subjects with a reply or forward prefix. `view` is the message's,
    when the caller reads it too.
    """
    view = view or MessageView(message)
    ctype = view.content_type()
    rtype = view.report_type()
    types = view.part_types()
    if ctype == "multipart/report" and rtype in ("delivery-status", "global-delivery-status"):
        return f"multipart/report report-type={rtype}"
    if "message/delivery-status" in types or "message/global-delivery-status" in types:
        return "message/delivery-status part"
    if rtype == "feedback-report" or "message/feedback-report" in types:
        return "feedback report (ARF)"
    subject = view.header("Subject")
    prefixed = bool(_REPLY_PREFIX_RE.match(subject))
    sender = view.header("From").lower()
    if "amazonaws.com" in sender or "amazonses.com" in sender:
        if _SES_TYPE_RE.search(text_of(message)):
            return "Amazon SES notification"
    if _FEEDBACK_SUBJECT_RE.search(subject) and bool(types & _ATTACHED_ORIGINAL) and not prefixed:
        return "feedback report (abuse complaint)"
    named_daemon = _is_daemon_from(message, view)
    null_sender = is_null_or_daemon_path(message, envelope_sender)
    subject_hit = (
        not prefixed
        and may_hold_caseless(subject, BOUNCE_SUBJECT_NEEDLES)
        and bool(BOUNCE_SUBJECT_RE.search(subject))
    )
    if (named_daemon or null_sender) and (subject_hit or view.header("X-Failed-Recipients")):
        return "delivery report from MAILER-DAEMON/postmaster"
    no_reply = not prefixed and bool(_NOREPLY_LOCAL_RE.match(parseaddr(sender)[1].split("@", 1)[0]))
    if not (named_daemon or null_sender or subject_hit or no_reply):
        # Every body rule below needs one of these signs: a person's mail (nearly all
        # mail) is not read for DSN phrases, the costly part of classifying it.
        if ctype == "multipart/report" and rtype != "disposition-notification":
            return "multipart/report"
        return None
    body = text_of(message, 20_000)
    strong = _strong_body_signs(body)
    if named_daemon and BOUNCE_BODY_RE.search(body):
        # A postmaster may be a person writing to the desk; a mail system is not.
        if _is_mail_system_from(message, view) or strong >= 2:
            return "DSN-like text from MAILER-DAEMON/postmaster"
    if null_sender and strong >= 2:
        return "DSN-like text from the null sender"
    if subject_hit and strong >= 2:
        return "delivery failure subject and text"
    if no_reply and bool(types & _ATTACHED_ORIGINAL) and strong >= 2:
        return "delivery failure text from a no-reply sender, original attached"
    if ctype == "multipart/report" and rtype != "disposition-notification":
        return "multipart/report"
    return None


_STRONG_BODY_RE = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"could not be delivered|couldn't be delivered|was not delivered|not be delivered|"
        r"undeliverable|delivery (?:has )?failed|unable to deliver|message could not|"
        r"did not reach|no se (?:ha )?podido entregar|no se pudo entregar",
        r"\b[45]\d\d[ -]|\b[45]\.\d{1,3}\.\d{1,3}\b",
        r"user unknown|unknown user|no such (?:user|mailbox)|mailbox (?:is )?(?:unavailable|full)|"
        r"recipient|does not exist|host unknown|rejected|refused|blocked|spam|timeout|"
        r"expired|retry",
        r"original message|copy of the message|returned message|message follows|"
        r"^received: |^message-id:",
    )
]


def _strong_body_signs(body: str) -> int:
    return sum(1 for pattern in _STRONG_BODY_RE if pattern.search(body))


# --- details -----------------------------------------------------------------------------------


def parse_bounce(message: Message, envelope_sender: str | None = None) -> BounceInfo | None:
    """What failed, if this is a bounce (or a feedback report); None otherwise. Never raises."""
    try:
        if bounce_reason(message, envelope_sender) is None:
            return None
        return _parse(message)
    except Exception:
        log.exception("parse_bounce failed")
        return None


def _parse(message: Message) -> BounceInfo:
    info = _from_delivery_status(message)
    if info is None:
        info = _from_feedback_report(message)
    if info is None:
        info = _from_amazon_ses(message)
    if info is None:
        info = _from_text(message)
    if info.original_message_id is None:
        info.original_message_id = original_message_id(message)
    return info


def _status_blocks(part: Message) -> list[Message]:
    try:
        payload = part.get_payload()
    except Exception:
        return []
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = _decode(part) if not isinstance(payload, str) else payload
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    parser = HeaderParser()
    return [parser.parsestr(block.strip() + "\n") for block in blocks if block.strip()]


def _field_address(value: str) -> str | None:
    """'rfc822; Ana <ana@x.es>' → 'ana@x.es'."""
    value = re.sub(r"\s+", " ", value or "").strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    match = _ADDRESS_RE.search(value)
    return match.group(0).lower().strip(".") if match else None


def _clean_status(value: str | None) -> str | None:
    match = _STATUS_RE.search(value or "")
    return ".".join(match.groups()) if match else None


def _refine_status(status: str | None, diagnostic: str) -> str | None:
    """A generic "5.0.0" gives way to the remote server's own, more precise code."""
    detailed = _clean_status(diagnostic)
    if status is None:
        return detailed
    if detailed and status.endswith(".0.0") and detailed[0] == status[0]:
        return detailed
    return status


def _from_delivery_status(message: Message) -> BounceInfo | None:
    parts = [
        part
        for part in _walk_outside_attached(message)
        if content_type(part) in ("message/delivery-status", "message/global-delivery-status")
    ]
    if not parts:
        return None
    entries: list[tuple[str, str | None, str | None, str | None]] = []
    for part in parts:
        for block in _status_blocks(part):
            recipient = _field_address(str(block.get("Final-Recipient", "") or "")) or (
                _field_address(str(block.get("Original-Recipient", "") or ""))
            )
            if recipient is None:
                continue
            action = str(block.get("Action", "") or "").strip().lower() or None
            diagnostic = re.sub(r"\s+", " ", str(block.get("Diagnostic-Code", "") or "")).strip()
            status = _refine_status(_clean_status(str(block.get("Status", "") or "")), diagnostic)
            entries.append((recipient, action, status, diagnostic or None))
    if not entries:
        info = _from_text(message)
        info.kind = "dsn"
        return info
    failed = [e for e in entries if e[1] in (None, "failed", "delayed")] or entries
    recipients = _unique([e[0] for e in failed])
    first = failed[0]
    status = first[2]
    text = " ".join(e[3] or "" for e in failed)
    return BounceInfo(
        recipients=recipients[:_MAX_RECIPIENTS],
        status=status,
        hard=_is_hard(status, text, first[1]),
        action=first[1],
        diagnostic=first[3],
        kind="dsn",
    )


def _from_feedback_report(message: Message) -> BounceInfo | None:
    parts = [
        part
        for part in _walk_outside_attached(message)
        if content_type(part) == "message/feedback-report"
    ]
    subject = _header(message, "Subject")
    if not parts and report_type(message) != "feedback-report":
        if not (_FEEDBACK_SUBJECT_RE.search(subject) and has_attached_original(message)):
            return None
    recipients: list[str] = []
    for part in parts:
        for block in _status_blocks(part):
            for name in ("Original-Rcpt-To", "Removal-Recipient"):
                address = _field_address(str(block.get(name, "") or ""))
                if address:
                    recipients.append(address)
    original = attached_headers(message)
    if not recipients and original is not None:
        # Hotmail's old complaint format names the complaining user in its own header.
        hotmail = _field_address(str(original.get("X-HmXmrOriginalRecipient", "") or ""))
        recipients = [hotmail] if hotmail else []
    if not recipients and original is not None:
        recipients = [a.lower() for _n, a in getaddresses([str(original.get("To", ""))]) if a]
    return BounceInfo(recipients=_unique(recipients)[:_MAX_RECIPIENTS], kind="arf")


def _from_amazon_ses(message: Message) -> BounceInfo | None:
    body = text_of(message)
    start = body.find("{")
    if start < 0 or "notificationType" not in body:
        return None
    try:
        data, _end = json.JSONDecoder(strict=False).raw_decode(body[start:])
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("Message"), str):  # wrapped by SNS
        try:
            data = json.loads(data["Message"], strict=False)
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    kind = str(data.get("notificationType", ""))
    recipients: list[str] = []
    status: str | None = None
    diagnostic: str | None = None
    hard = False
    if kind == "Bounce":
        bounce = data.get("bounce") or {}
        for item in bounce.get("bouncedRecipients") or []:
            recipients.append(str(item.get("emailAddress", "")).lower())
            status = status or _clean_status(str(item.get("status", "")))
            diagnostic = diagnostic or str(item.get("diagnosticCode", "")) or None
        hard = str(bounce.get("bounceType", "")).lower() == "permanent" and _is_hard(
            status, diagnostic or "", "failed"
        )
    elif kind == "Complaint":
        complaint = data.get("complaint") or {}
        recipients = [
            str(item.get("emailAddress", "")).lower()
            for item in complaint.get("complainedRecipients") or []
        ]
    elif kind == "Delivery":
        delivery = data.get("delivery") or {}
        recipients = [str(r).lower() for r in delivery.get("recipients") or []]
        status = _clean_status(str(delivery.get("smtpResponse", "")))
    mail = data.get("mail") or {}
    message_id = None
    for header in mail.get("headers") or []:
        if str(header.get("name", "")).lower() == "message-id":
            message_id = str(header.get("value", "")).strip() or None
    return BounceInfo(
        recipients=_unique([r for r in recipients if "@" in r]),
        status=status,
        hard=hard,
        original_message_id=message_id,
        action="delivered" if kind == "Delivery" else ("failed" if kind == "Bounce" else None),
        diagnostic=diagnostic,
        kind="dsn" if kind != "Complaint" else "arf",
    )


def _from_text(message: Message) -> BounceInfo:
    """Non-standard bounces (qmail, Exchange 2003, Domino, old Sendmail…): read the prose."""
    body = text_of(message)
    match = _ORIGINAL_START_RE.search(body)
    report = body[: match.start()] if match and match.start() > 40 else body
    excluded = _own_addresses_of_report(message)
    recipients: list[str] = []
    failed_header = _header(message, "X-Failed-Recipients")
    recipients.extend(a.lower() for a in _ADDRESS_RE.findall(failed_header))
    if not recipients:
        recipients = _text_recipients(report, excluded | _message_ids_in(body))
    if not recipients:
        original = attached_headers(message)
        if original is not None:
            recipients = [a.lower() for _n, a in getaddresses([str(original.get("To", ""))]) if a]
    status = _clean_status(report)
    diagnostic = _diagnostic_line(report)
    return BounceInfo(
        recipients=_unique(recipients)[:_MAX_RECIPIENTS],
        status=status,
        hard=_is_hard(status, report, "failed"),
        action="failed",
        diagnostic=diagnostic,
        kind="text",
    )


_ADDRESS_IN_TEXT_RE = re.compile(
    r"(?<![\w.+/=&#'%-])([A-Za-z0-9][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)
# Lines that name the original sender or the message, not a recipient.
_SENDER_LINE_RE = re.compile(
    r"message-id|mail from|envelope-from|^\s*>?\s*(?:from|sender|return-path|reply-to|"
    r"references|in-reply-to|de|remitente)\s*:",
    re.IGNORECASE,
)
_FAILURE_LINE_RE = re.compile(
    r"unknown|fail|reject|refused|denied|invalid|no such|not |n't|error|[45]\d\d|full|"
    r"unavailable|does not exist|could not|undeliver|rcpt to|recipient|quota|blocked|"
    r"desconocid|no existe|rechaz",
    re.IGNORECASE,
)


def _message_ids_in(text: str) -> set[str]:
    return {m.lower().strip("<>") for m in re.findall(r"<[^<>\s@]+@[^<>\s]+>", text)} & {
        m.group(1).lower().strip("<>") for m in _MESSAGE_ID_RE.finditer(text)
    }


def _text_recipients(report: str, excluded: set[str]) -> list[str]:
    """Addresses the report says failed: those on failure lines or on a line of their own."""
    first: list[str] = []
    second: list[str] = []
    for line in report.splitlines():
        if _SENDER_LINE_RE.search(line):
            continue
        for match in _ADDRESS_IN_TEXT_RE.finditer(line):
            address = match.group(1).lower().rstrip(".")
            if address in excluded or _DAEMON_LOCAL_RE.match(address.split("@", 1)[0]):
                continue
            rest = line.replace(match.group(1), "").strip(" \t<>:;,.()[]\"'")
            if _FAILURE_LINE_RE.search(line) or not rest:
                first.append(address)
            else:
                second.append(address)
    return _unique(first or second)


def _own_addresses_of_report(message: Message) -> set[str]:
    """Addresses in the report's own headers: the daemon and the original sender (us)."""
    out: set[str] = set()
    names = ("From", "To", "Return-Path", "Sender", "Reply-To")
    for name in names:
        out.update(a.lower() for a in _ADDRESS_RE.findall(_header(message, name)))
    return out


def _diagnostic_line(report: str) -> str | None:
    for line in report.splitlines():
        if _REPLY_CODE_RE.search(line) or _STATUS_RE.search(line):
            cleaned = re.sub(r"\s+", " ", line).strip()
            if len(cleaned) > 8:
                return cleaned[:300]
    return None


def _is_hard(status: str | None, text: str, action: str | None) -> bool:
    """Whether the address itself is bad (unknown user or domain, moved): not worth retrying.

    Full mailboxes, spam filters and policy blocks are permanent for that message but say
    nothing about the address, so they are not hard (as sisimai counts them).
    """
    if action in ("delivered", "relayed", "expanded", "delayed"):
        return False
    if status:
        if status.startswith(("2.", "4.")) or status in ("5.1.7", "5.1.8"):
            return False  # temporary, or our own (sender) address was refused
        if status.startswith("5.1.") or status == "5.4.4":
            return True
    return bool(_HARD_TEXT_RE.search(text or ""))


# --- the original message ----------------------------------------------------------------------


def attached_headers(message: Message) -> Message | None:
    """Headers of the returned message (message/rfc822 or text/rfc822-headers part)."""
    for part in walk(message):
        ctype = content_type(part)
        if ctype in ("message/rfc822", "message/global"):
            try:
                payload = part.get_payload()
            except Exception:
                log.debug("attached message unreadable", exc_info=True)
                continue
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            if isinstance(payload, str) and payload.strip():
                return HeaderParser().parsestr(payload)
        if ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            text = _decode(part)
            if text.strip():
                return HeaderParser().parsestr(text.lstrip())
    return None


def original_message_id(message: Message) -> str | None:
    """Message-ID of the mail that bounced: from the attached copy, else from quoted text."""
    try:
        original = attached_headers(message)
        if original is not None:
            found: list[str] = re.findall(r"<[^<>\s]+>", str(original.get("Message-ID", "") or ""))
            if found:
                return found[0]
        own = re.findall(r"<[^<>\s]+>", _header(message, "Message-ID"))
        for match in _MESSAGE_ID_RE.finditer(_full_text(message)):
            if match.group(1) not in own:
                return match.group(1)
    except Exception:
        log.debug("original_message_id failed", exc_info=True)
    return None


def _full_text(message: Message) -> str:
    chunks: list[str] = []
    for part in walk(message):
        if content_type(part).startswith(("text/", "message/")) and not part.is_multipart():
            chunks.append(_decode(part))
    return "\n".join(chunks)[: _MAX_SCAN_CHARS * 2]


def _unique(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item and item not in seen:
            seen[item] = None
    return list(seen)
