"""One test per stage, each run alone on a MailContext (like Mailman's rules/tests).

The end-to-end tests drive the whole pipeline; these name the stage that decides, with a
real SQLite/PostgreSQL session and the demo rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select

from mailbridge.db import Database, utcnow
from mailbridge.outbound.outbox import OutboxMail
from mailbridge.parse.mime import parse_mail
from mailbridge.pipeline.context import FLOW_CASE, FLOW_TARGET, ROLE_STAFF, ROLE_VENDOR, MailContext
from mailbridge.pipeline.stages import STAGES, stages_for
from mailbridge.pipeline.stages.apply import Apply
from mailbridge.pipeline.stages.auto_escalate import AutoEscalate
from mailbridge.pipeline.stages.classify import Classify
from mailbridge.pipeline.stages.closed_case import ClosedCase
from mailbridge.pipeline.stages.deduplicate import Deduplicate
from mailbridge.pipeline.stages.escalate_request import EscalateRequest
from mailbridge.pipeline.stages.from_target import FromTarget
from mailbridge.pipeline.stages.redact import Redact
from mailbridge.pipeline.stages.refuse_encrypted import RefuseEncrypted
from mailbridge.pipeline.stages.route import Route
from mailbridge.pipeline.stages.senders import Senders
from mailbridge.pipeline.stages.target_answer import TargetAnswer
from mailbridge.pipeline.stages.thread import Thread
from mailbridge.pipeline.stages.validate import Validate
from mailbridge.pipeline.stages.vendor_follow_up import VendorFollowUp
from mailbridge.rules import Rules, parse_rules
from mailbridge.settings import Settings
from mailbridge.spool import claim, new_inbound, store_inbound
from mailbridge.tickets.models import STATUS_CLOSED, Ticket, TicketMessage
from tests.support.daemon import COMPLETE_BODY
from tests.support.rules import quiet_desk_text

OPENING_SUBJECT = "TEN-1001 Caída del servicio de correo"


def raw_mail(*, sender: str = "ana@compensar.example", to: str = "soporte-a@mesa.example",
             subject: str = OPENING_SUBJECT, body: str = COMPLETE_BODY, headers: str = "",
             message_id: str | None = None) -> bytes:
    mid = message_id or f"<{utcnow().timestamp()}.{id(body)}@compensar.example>"
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
            f"{headers}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


@contextmanager
def context(db: Database, settings: Settings, rules: Rules, raw: bytes, *,
            rcpt: str = "soporte-a@mesa.example", mail_from: str | None = None,
            channel: str = "smtp") -> Iterator[MailContext]:
    """A MailContext for `raw` as the runner builds it, inside a transaction."""
    mail = parse_mail(raw)
    envelope = mail_from if mail_from is not None else (mail.from_addr or "")
    (inbound_id,) = store_inbound(db, [new_inbound(raw, channel=channel, mail_from=envelope,
                                                   rcpt_tos=[rcpt])])
    with db.transaction() as session:
        inbound = claim(session, inbound_id)
        assert inbound is not None
        yield MailContext(session=session, inbound=inbound, mail=mail, rules=rules,
                          settings=settings, now=utcnow())


def open_case(db: Database, *, number: int = 1, status: str = "abierto",
              message_id: str | None = None) -> int:
    now = utcnow()
    with db.transaction() as session:
        ticket = Ticket(number=number, tenant_id="TEN-1001", priority="A", severity="URGENTE",
                        queue="critica", status=status, subject=OPENING_SUBJECT,
                        subject_key="caida del servicio de correo",
                        sender="ana@compensar.example", cc=[], created_at=now, updated_at=now,
                        ack_due_at=now + timedelta(minutes=15),
                        closed_at=now if status == STATUS_CLOSED else None)
        session.add(ticket)
        session.flush()
        if message_id:
            session.add(TicketMessage(ticket_id=ticket.id, direction="in",
                                      author_role="customer", message_id=message_id,
                                      sender=ticket.sender, subject=ticket.subject, body="x",
                                      created_at=now))
        return ticket.id


def queued(db: Database) -> list[tuple[str, list[str]]]:
    with db.reader() as session:
        return [(r.kind, list(r.rcpt_tos)) for r in session.scalars(
            select(OutboxMail).order_by(OutboxMail.id))]


def test_the_order_is_declared_once_and_each_flow_is_a_part_of_it() -> None:
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    target = [s.name for s in stages_for(FLOW_TARGET)]
    assert target == ["classify", "deduplicate", "thread", "redact", "vendor"]
    case = [s.name for s in stages_for(FLOW_CASE)]
    assert case[0] == "from-target" and case[-2:] == ["apply", "auto-escalate"]
    assert "vendor" not in case


def test_from_target(db, settings, rules) -> None:
    with context(db, settings, rules, raw_mail(sender="soporte@hibot.example")) as ctx:
        assert FromTarget().run(ctx) is None
        assert (ctx.flow, ctx.target_name, ctx.sender_role) == (FLOW_TARGET, "hibot", ROLE_VENDOR)
    with context(db, settings, rules, raw_mail()) as ctx:
        FromTarget().run(ctx)
        assert ctx.flow == FLOW_CASE


def test_classify(db, settings, rules) -> None:
    auto = "Auto-Submitted: auto-replied\r\n"
    with context(db, settings, rules, raw_mail(headers=auto)) as ctx:
        outcome = Classify().run(ctx)
        assert outcome is not None and outcome.name == "ignored:auto-reply"
    with context(db, settings, rules, raw_mail(sender="soporte@hibot.example",
                                               headers=auto)) as ctx:
        ctx.flow, ctx.target_name = FLOW_TARGET, "hibot"
        assert Classify().run(ctx) is None  # a target's auto-answer carries its ticket number


def test_deduplicate(db, settings, rules) -> None:
    open_case(db, message_id="<ya-visto@compensar.example>")
    with context(db, settings, rules, raw_mail(message_id="<ya-visto@compensar.example>")) as ctx:
        outcome = Deduplicate().run(ctx)
        assert outcome is not None and outcome.name == "duplicate"
    with context(db, settings, rules, raw_mail(message_id="<nuevo@compensar.example>")) as ctx:
        assert Deduplicate().run(ctx) is None


def test_thread(db, settings, rules) -> None:
    open_case(db, number=41)
    with context(db, settings, rules, raw_mail(subject="RE: [Caso 41] Caída")) as ctx:
        assert Thread().run(ctx) is None
        assert ctx.ticket is not None and ctx.ticket.number == 41 and ctx.threaded_by == "token"
    with context(db, settings, rules, raw_mail(subject="sin número"),
                 rcpt="soporte+41@mesa.example") as ctx:
        Thread().run(ctx)
        assert ctx.ticket is not None and ctx.threaded_by == "plus-address"


def test_route(db, settings, rules) -> None:
    raw = raw_mail(to="soporte-c@mesa.example, soporte-a@mesa.example")
    with context(db, settings, rules, raw, rcpt="soporte-c@mesa.example") as ctx:
        ctx.inbound.rcpt_tos = ["soporte-c@mesa.example", "soporte-a@mesa.example"]
        Route().run(ctx)
        assert ctx.support_address is not None and ctx.support_address.priority == "A"
        assert ctx.tenant_id == "TEN-1001"
    with context(db, settings, rules, raw_mail(sender="carlos@mesa.example")) as ctx:
        Route().run(ctx)
        assert ctx.sender_role == ROLE_STAFF


def test_senders(db, settings, rules) -> None:
    with context(db, settings, rules, raw_mail(sender="juan@desconocido.example")) as ctx:
        Route().run(ctx)
        outcome = Senders().run(ctx)
        assert outcome is not None and outcome.name == "refused:unknown-sender"
    assert queued(db) == [("refusal", ["juan@desconocido.example"])]
    with context(db, settings, rules, raw_mail(sender="victima@victima.example"),
                 mail_from="otro@malo.example") as ctx:
        Route().run(ctx)
        assert Senders().run(ctx) is not None
    assert len(queued(db)) == 1  # a forged From gets nothing (RFC 3834 §4)


def test_redact(db, settings, rules) -> None:
    open_case(db, number=7)
    body = ("#estado en_progreso\nRevisamos el servidor; la contraseña es Hunter2!x\n\n"
            "El lun, Ana escribió:\n> texto viejo\n")
    with context(db, settings, rules, raw_mail(sender="carlos@mesa.example",
                                               subject="RE: [Caso 7] Caída", body=body)) as ctx:
        Thread().run(ctx)
        ctx.sender_role = ROLE_STAFF
        assert Redact().run(ctx) is None
        assert [c.name for c in ctx.commands] == ["estado"]
        assert "Hunter2!x" not in ctx.body and "texto viejo" not in ctx.body
        assert ctx.secret_kinds


def test_target_answer(db, settings, rules) -> None:
    open_case(db, number=9)
    raw = raw_mail(sender="soporte@hibot.example", subject="RE: [Caso 9] Escalamiento",
                   body="Recibido, lo revisamos.")
    with context(db, settings, rules, raw) as ctx:
        for stage in (FromTarget(), Thread(), Redact()):
            stage.run(ctx)
        outcome = TargetAnswer().run(ctx)
        assert outcome is not None and outcome.name == "vendor:answer"
        assert ctx.session.scalar(select(TicketMessage.body).where(
            TicketMessage.sender == "soporte@hibot.example")) == "Recibido, lo revisamos."


def test_refuse_encrypted(db, settings, rules) -> None:
    headers = 'MIME-Version: 1.0\r\n'
    raw = raw_mail(headers=headers).replace(
        b"Content-Type: text/plain; charset=utf-8",
        b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"')
    with context(db, settings, rules, raw) as ctx:
        outcome = RefuseEncrypted().run(ctx)
        assert outcome is not None and outcome.name == "refused:encrypted"
    assert [k for k, _ in queued(db)] == ["refusal"]


def test_validate(db, settings, rules) -> None:
    with context(db, settings, rules, raw_mail(body="Explicación detallada del incidente: "
                                                     "no llega el correo.\n")) as ctx:
        Route().run(ctx)
        Redact().run(ctx)
        assert Validate().run(ctx) is None
        assert ctx.fields["explicacion"].startswith("no llega el correo")
        assert "cliente" in ctx.missing_fields and "explicacion" not in ctx.missing_fields


def test_closed_case(db, settings, rules) -> None:
    open_case(db, number=12, status=STATUS_CLOSED)
    with context(db, settings, rules, raw_mail(subject="RE: [Caso 12] Caída",
                                               body="Muchas gracias")) as ctx:
        Thread().run(ctx)
        Redact().run(ctx)
        outcome = ClosedCase().run(ctx)
        assert outcome is not None and outcome.name == "ignored:thanks-on-closed-case"


def test_escalate_request(db, settings, rules) -> None:
    with context(db, settings, rules, raw_mail(to="escalamiento@mesa.example"),
                 rcpt="escalamiento@mesa.example") as ctx:
        Redact().run(ctx)
        outcome = EscalateRequest().run(ctx)
        assert outcome is not None and outcome.name == "reply:escalation-without-case"
    assert [k for k, _ in queued(db)] == ["escalation_decision"]


def test_vendor_follow_up(db, settings, rules) -> None:
    open_case(db, number=15)
    raw = raw_mail(sender="carlos@mesa.example", to="soporte@hibot.example",
                   subject="RE: [Caso 15] Escalamiento", body="¿Alguna novedad?")
    with context(db, settings, rules, raw) as ctx:
        Thread().run(ctx)
        ctx.sender_role = ROLE_STAFF
        Redact().run(ctx)
        outcome = VendorFollowUp().run(ctx)
        assert outcome is not None and outcome.name == "reply:staff-to-vendor"
    assert queued(db) == []  # nothing relayed to the customer


def test_apply(db, settings, demo_rules) -> None:
    with context(db, settings, demo_rules, raw_mail()) as ctx:
        for stage in (Route(), Senders(), Redact(), Validate()):
            stage.run(ctx)
        assert Apply().run(ctx) is None  # it records the outcome; the stages after it go on
        assert ctx.outcome is not None and ctx.outcome.name == "ticket"
        assert ctx.opened_case and ctx.ticket is not None and ctx.ticket.number == 1
    # The customer's acknowledgement, and the queue's people told of the new case.
    assert queued(db) == [("ack", ["ana@compensar.example"]),
                          ("staff_new_case", ["agentes-a@mesa.example"])]


def _auto_escalating_rules() -> Rules:
    text = quiet_desk_text().replace("products: [INBOUND]\n    auto_escalate: {enabled: false}",
                        "products: [INBOUND]\n    auto_escalate: {enabled: true}")
    return parse_rules(text)


def test_auto_escalate(db, settings) -> None:
    rules = _auto_escalating_rules()
    assert rules.escalation_targets["hibot"].auto_escalate.enabled
    with context(db, settings, rules, raw_mail()) as ctx:
        for stage in (Route(), Senders(), Redact(), Validate(), Apply()):
            stage.run(ctx)
        outcome = AutoEscalate().run(ctx)
        assert outcome is not None and outcome.name == "ticket"
        # The opening lacks HIBOT's own fields: staff are asked for them, nothing is sent.
        assert "escalation hibot:missing" in outcome.detail
    assert queued(db)[1] == ("vendor_missing_fields", list(rules.escalation_targets["hibot"].notify))


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_is_named_described_and_in_a_flow(stage) -> None:
    assert stage.name and stage.description
    assert stage.flows and stage.flows <= {FLOW_CASE, FLOW_TARGET}


def test_a_staff_notice_that_cannot_be_made_does_not_cost_the_case(
        db, settings, demo_rules, monkeypatch) -> None:
    """A fault in a notice (here its rendering) is logged; the case and its ack stand."""
    import mailbridge.outbound.outbox as outbox

    real_render = outbox.render

    def render(draft, templates_dir=None):  # type: ignore[no-untyped-def]
        if draft.template == "staff_new_case.txt.j2":
            raise RuntimeError("a fault nobody foresaw")
        return real_render(draft, templates_dir)

    monkeypatch.setattr(outbox, "render", render)
    with context(db, settings, demo_rules, raw_mail()) as ctx:
        for stage in (Route(), Senders(), Redact(), Validate(), Apply()):
            stage.run(ctx)
        assert ctx.outcome is not None and ctx.outcome.name == "ticket"
    assert queued(db) == [("ack", ["ana@compensar.example"])]
