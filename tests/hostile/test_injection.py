"""Injection: customer text reaches outbound mail only as text.

CR/LF or header text in subjects, display names, template fields and attachment names
never becomes a header or a recipient; HTML and template syntax in customer text is
escaped in HTML templates and never evaluated anywhere.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from jinja2 import TemplateNotFound

from mailbridge.outbound.render import DEFAULT_TEMPLATES, Draft, DraftAttachment, render
from tests.hostile.helpers import REPO, report
from tests.pipeline.helpers import deliver
from tests.support.daemon import COMPLETE_BODY

PAYLOADS = {
    "crlf_bcc": "\r\nBcc: victima@otro.example",
    "lf_header": "\nX-Inyectada: 1",
    "cr_only": "\rX-Inyectada: 2",
    "encoded_crlf": "=?utf-8?q?hola=0D=0ABcc:_victima@otro.example?=",
    "template": "{{ 7*7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__.__mro__ }}",
    "html": "<script>alert('x')</script><img src=x onerror=alert(1)> &amp;",
    "nul": "\x00\x1b[31m",
}
ALLOWED_HEADERS = {
    "from", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
    "reply-to", "auto-submitted", "x-auto-response-suppress", "x-loop", "mime-version",
    "content-type", "content-transfer-encoding", "content-disposition",
}
FINDINGS: list[dict[str, object]] = []


def _check_outbound(raw: bytes, expected_rcpts: set[str], rcpt_tos: list[str]) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    for name, value in message.items():
        assert name.lower() in ALLOWED_HEADERS or name.lower().startswith("x-mailbridge"), name
        assert "\r" not in str(value) and "\n" not in str(value), (name, value)
    assert "victima@otro.example" not in " ".join(rcpt_tos)
    assert set(rcpt_tos) <= expected_rcpts, rcpt_tos
    assert not message.get_all("Bcc") and not message.get_all("X-Inyectada")
    return message


def test_customer_text_never_becomes_a_header(db, settings, rules) -> None:
    raw_mails = []
    for n, (name, payload) in enumerate(PAYLOADS.items()):
        encoded_name = payload.replace("\r", "=0D").replace("\n", "=0A")
        subject = f"TEN-1001 Asunto {n} {payload}".replace("\r", "").replace("\n", "")
        raw = (
            f"From: =?utf-8?q?Ana_{encoded_name.replace(' ', '_')}?= <ana@compensar.example>\r\n"
            f"To: soporte-a@mesa.example\r\nSubject: {subject}\r\n"
            f"Subject: =?utf-8?q?Segundo{encoded_name.replace(' ', '_')}?=\r\n"
            f"Message-ID: <inj-{n}@compensar.example>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + COMPLETE_BODY.replace("Compensar\n", f"Compensar {payload}\n")
            + f"\nNombre del Cliente: Compensar{payload}\n"
        ).encode("utf-8", "surrogatepass")
        raw_mails.append((name, raw))
        result = deliver(db, settings, rules, raw)
        assert result.outcome in ("ticket", "reply:look-alike") or result.outcome.startswith(
            "refused"), (name, result)
        FINDINGS.append({"payload": name, "outcome": result.outcome})
    # Staff answer on case 1 and escalate it: the case's hostile fields travel on to the
    # customer and to Operations, still only as text.
    staff = (
        "From: Carla Vidal <carla@mesa.example>\r\nTo: ana@compensar.example\r\n"
        "Cc: soporte+1@mesa.example\r\nSubject: RE: [Caso 1] TEN-1001 Asunto 0\r\n"
        "Message-ID: <inj-staff@mesa.example>\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"\r\nHola Ana {PAYLOADS['template']} {PAYLOADS['html']}\r\n#escalar operaciones\r\n"
    ).encode()
    staff_result = deliver(db, settings, rules, staff, rcpt="soporte+1@mesa.example",
                           mail_from="carla@mesa.example")
    FINDINGS.append({"payload": "staff answer + #escalar operaciones",
                     "outcome": staff_result.outcome})
    from sqlalchemy import select

    from mailbridge.outbound.outbox import OutboxMail

    with db.reader() as session:
        rows = [(r.raw, list(r.rcpt_tos)) for r in session.scalars(select(OutboxMail))]
    assert rows
    ours = {a for raw, rcpt_tos in rows for a in rcpt_tos
            if a.endswith(("@mesa.example", ".hs-inbox.example"))}
    assert len(rows) > len(PAYLOADS)  # the acks, and the staff answer / escalation mail
    for raw, rcpt_tos in rows:
        message = _check_outbound(raw, {"ana@compensar.example", *ours}, rcpt_tos)
        body = message.get_body(("plain",)).get_content()
        assert "49" not in body  # {{ 7*7 }} is shown, not computed
        assert "<class" not in body
    bodies = " ".join(email.message_from_bytes(r, policy=email.policy.default)
                      .get_body(("plain",)).get_content() for r, _ in rows)
    assert "{{ 7*7 }}" in bodies  # the customer's text, as text
    FINDINGS.append({"outbound_checked": len(rows), "headers_outside_allowed": 0,
                     "foreign_recipients": 0})


def test_html_templates_escape_and_text_is_never_a_template(tmp_path: Path) -> None:
    hostile = PAYLOADS["html"] + " " + PAYLOADS["template"]
    (tmp_path / "aviso.html.j2").write_text("<p>Estimado/a {{ customer_name }}</p>"
                                            "<p>{{ subject }}</p>", encoding="utf-8")
    (tmp_path / "aviso.txt.j2").write_text("Estimado/a {{ customer_name }}: {{ subject }}\n",
                                           encoding="utf-8")
    for template in ("aviso.html.j2", "aviso.txt.j2"):
        _, raw = render(Draft(
            template=template, context={"customer_name": hostile, "subject": hostile},
            to=["ana@compensar.example"], subject=f"[Caso 1] {hostile}\r\nBcc: x@otro.example",
            from_address="soporte@mesa.example", from_name="Mesa de Soporte",
            attachments=[DraftAttachment(f"informe\r\nBcc: x@otro.example{PAYLOADS['lf_header']}.pdf",
                                         "application/pdf", b"%PDF-1.4")],
            extra_headers={"X-Mailbridge-Case": "1\r\nBcc: x@otro.example"},
        ), templates_dir=str(tmp_path))
        message = _check_outbound(raw, {"ana@compensar.example"}, ["ana@compensar.example"])
        body = next(message.iter_parts()).get_content()
        assert "49" not in body and "<class" not in body and "xxx" not in body
        if template.endswith(".html.j2"):
            assert "<script>" not in body and "&lt;script&gt;" in body
            assert "{{ 7*7 }}" in body
        attachment = next(iter(message.iter_attachments()))
        assert "\n" not in attachment.get_filename() and "Bcc" in attachment.get_filename()
    # A template name from the rules cannot leave the templates directory.
    with pytest.raises(TemplateNotFound):
        render(Draft(template="../rules.yaml", context={}, to=["a@b.example"], subject="x",
                     from_address="soporte@mesa.example", from_name="Mesa"))
    FINDINGS.append({"html_template": "autoescaped", "text_template": "literal",
                     "template_path_traversal": "TemplateNotFound"})


def test_no_template_is_built_from_data() -> None:
    """Only files in templates/ are templates: no from_string/Template() on any text."""
    offenders = []
    for path in (REPO / "mailbridge").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"\.from_string\(|\bTemplate\(|\bSandboxedEnvironment\b", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    # Every HTML template the desk may add is autoescaped by the environment.
    from mailbridge.outbound.render import template_env

    env = template_env(None)
    assert env.autoescape("x.html.j2") and env.autoescape("x.html")  # type: ignore[operator]
    assert not env.autoescape("x.txt.j2")  # type: ignore[operator]
    assert all(p.name.endswith((".txt.j2", ".html.j2")) for p in DEFAULT_TEMPLATES.glob("*.j2"))
    report("injection", findings=FINDINGS)
