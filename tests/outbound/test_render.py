"""Outbound rendering: threading headers, loop guards, no header injection."""

from __future__ import annotations

import email
import email.policy

from mailbridge.outbound.render import Draft, render
from mailbridge.tickets.numbering import case_subject


def _draft(**kw) -> Draft:  # type: ignore[no-untyped-def]
    base = dict(
        template="ack.txt.j2",
        context={
            "ticket": type("T", (), {"number": 7, "subject": "Caída", "priority": "A",
                                     "missing_fields": []})(),
            "desk": type("D", (), {"case_token": "Caso", "from_name": "Mesa de Soporte"})(),
            "priority_label": "Crítica",
            "tenant": None,
            "customer_name": "Ana",
            "missing": [],
            "secret_kinds": [],
        },
        to=["ana@compensar.example"],
        subject="[Caso 7] Caída",
        from_address="soporte@mesa.example",
        from_name="Mesa de Soporte",
        in_reply_to="<orig@compensar.example>",
        references=["<first@compensar.example>"],
    )
    base.update(kw)
    return Draft(**base)  # type: ignore[arg-type]


def test_rendered_mail_threads_and_guards_loops() -> None:
    message_id, raw = render(_draft())
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Message-ID"] == message_id
    assert msg["In-Reply-To"] == "<orig@compensar.example>"
    assert msg["References"] == "<first@compensar.example> <orig@compensar.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Loop"] == "soporte@mesa.example"
    assert b"\r\n" in raw and b"\n\n" not in raw.replace(b"\r\n", b"")


def test_subject_with_crlf_cannot_inject_headers() -> None:
    evil = "Caída\r\nBcc: victim@elsewhere.example\r\nX-Evil: 1"
    _, raw = render(_draft(subject=case_subject("Caso", 7, evil)))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"].startswith("[Caso 7] Caída")


def test_display_name_with_crlf_cannot_inject_headers() -> None:
    ctx = _draft().context
    _, raw = render(_draft(from_name="Mesa\r\nBcc: x@evil.example", context=ctx))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None


def test_case_subject_does_not_stack_tokens_or_prefixes() -> None:
    assert case_subject("Caso", 12, "RE: RV: [Caso 12] TEN-1001 Caída") == "[Caso 12] TEN-1001 Caída"
    assert case_subject("Caso", 3, "Consulta") == "[Caso 3] Consulta"
    assert case_subject("Caso", 77, "AW: [caso #77] algo") == "[Caso 77] algo"
