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


def test_text_only_fast_path_is_byte_for_byte_the_email_package(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import mailbridge.outbound.render as render_module

    monkeypatch.setattr(render_module, "utcnow", lambda: __import__("datetime").datetime(
        2026, 11, 28, 3, 0, tzinfo=__import__("datetime").UTC))
    drafts = [
        _draft(message_id="<m1@mesa.example>"),
        _draft(message_id="<m2@mesa.example>", from_name="Soporte S.A. Ñandú",
               cc=["luis@compensar.example", "o'brien@x.example"],
               subject="[Caso 7] " + "Caída del servicio – muy largo " * 6,
               references=[f"<r{k}@x.example>" for k in range(14)],
               extra_headers={"X-Mailbridge-Case": "7  =?utf-8?q?x?="}),
    ]
    for draft in drafts:
        body = render_module.template_env(None).get_template(draft.template).render(**draft.context)
        assert render_module._render_text_only(draft, body) == render_module._render_mime(draft, body)


def test_a_quoted_local_part_is_written_once_quoted() -> None:
    """A sender salvaged from a broken From ("x" <power quadrant system@…>, parse/senders.py)
    is answered at the quoted address, not at a doubly quoted one."""
    _mid, raw = render(_draft(to=['"power quadrant system"@example.com']))
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["To"] == '"power quadrant system"@example.com'
    assert message["To"].addresses[0].username == "power quadrant system"
