"""`mailbridge parse FILE --json`: what mailbridge reads from one mail, storing nothing."""

from __future__ import annotations

from typing import Any

from mailbridge.parse.classify import classify
from mailbridge.parse.encryption import is_encrypted
from mailbridge.parse.mime import parse_mail
from mailbridge.parse.replies import find_case_number
from mailbridge.parse.secrets import redact_secrets
from mailbridge.parse.template import extract_fields
from mailbridge.rules import Rules


def describe_mail(raw: bytes, rules: Rules) -> dict[str, Any]:
    """The same reading the pipeline does, as a JSON-ready dict (never raises on bad mail)."""
    mail = parse_mail(raw)
    desk = rules.desk
    own = frozenset({desk.from_address, *(a.address for a in rules.addresses)})
    classification = classify(mail.message, own_addresses=own)
    case_number = find_case_number(mail.subject, desk.case_token)
    text = mail.text
    if case_number is not None or mail.in_reply_to:
        from mailbridge.parse.quotes import strip_quotes

        text = strip_quotes(text)
    body, secret_kinds = redact_secrets(text)
    tenant_id = rules.find_tenant_id(mail.subject)
    tenant = rules.tenant(tenant_id)
    found = extract_fields(
        body,
        rules.template.fields,
        default_zone=tenant.zone if tenant is not None else None,
        reference=mail.date,
    )
    return {
        "message_id": mail.message_id,
        "from": mail.from_addr,
        "from_name": mail.from_name,
        "to": mail.to,
        "cc": mail.cc,
        "subject": mail.subject,
        "date": mail.date.isoformat() if mail.date else None,
        "body": body,
        "attachments": [
            {"filename": a.filename, "content_type": a.content_type, "size": len(a.payload)}
            for a in mail.attachments
        ],
        "classification": classification.kind,
        "classification_reason": classification.reason,
        "encrypted": is_encrypted(mail.message),
        "case_number": case_number,
        "tenant_id": tenant.id if tenant is not None else tenant_id,
        "sender_role": "staff" if rules.is_staff(mail.from_addr or "") else "customer",
        "fields": found.values,
        "missing_fields": found.missing,
        "invalid_fields": found.invalid,
        "severity": found.severity,
        "secrets_redacted": secret_kinds,
        "text_cut_bytes": mail.text_cut,
        "defects": mail.defects,
    }
