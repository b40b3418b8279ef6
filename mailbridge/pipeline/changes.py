"""What the desk changes on a case, the same by mail and by the API or the board.

A staff member's «#estado», «#prioridad» and «#asignar» (pipeline/commands.py), a staff
answer (stages/apply.py), `PATCH /api/v1/cases/N` and `POST /api/v1/cases/N/replies`
all come here: one set of rules for what may be set, what follows from it (the wait on
the customer, the request for confirmation, the response clock, the new owner's
notice), the case's events (with who did it: a staff address, or `api:TOKEN`) and the
webhook events. Each function works in the caller's transaction and takes `now`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mailbridge import metrics
from mailbridge.outbound.compose import AUTO_GENERATED, PERSON, Answering, Mail, compose
from mailbridge.outbound.webhooks import emit_event
from mailbridge.rules import Rules
from mailbridge.sla.cases import pause_response_clock, resume_response_clock, start_response_clock
from mailbridge.sla.closing import ACTION_CLOSING_ATTEMPT, send_attempt
from mailbridge.sla.escalation import next_seq
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_IN_PROGRESS,
    STATUS_OPEN,
    STATUS_RESOLVED,
    STATUS_WAITING,
    Ticket,
    TicketEvent,
)

log = logging.getLogger(__name__)

SETTABLE_STATUSES = {
    "abierto": STATUS_OPEN,
    "en_progreso": STATUS_IN_PROGRESS,
    "en-progreso": STATUS_IN_PROGRESS,
    "progreso": STATUS_IN_PROGRESS,
    "resuelto": STATUS_RESOLVED,
    "cerrado": STATUS_CLOSED,
    "esperando_cliente": STATUS_WAITING,
    "esperando-cliente": STATUS_WAITING,
    "esperando": STATUS_WAITING,
}
ADDRESS_RE = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


@dataclass(frozen=True)
class Change:
    """What became of one change: refused (`ok` False) or done; `message` is Spanish, for
    the staff member (the command's confirmation, the API's and the board's answer)."""

    ok: bool
    message: str
    changed: bool = False


def _updated(session: Session, ticket: Ticket, now: datetime, by: str, field: str,
             old: object, new: object) -> None:
    ticket.updated_at = now
    emit_event(session, "case.updated", ticket, at=now, by=by,
               changes={field: {"from": old, "to": new}})


# -- status -----------------------------------------------------------------------------


def set_status(session: Session, rules: Rules, ticket: Ticket, value: str, *, by: str,
               now: datetime) -> Change:
    """«#estado X»: open, in progress, waiting on the customer (the response clock pauses,
    the customer is chased), resolved (the customer is asked to confirm), closed."""
    wanted = SETTABLE_STATUSES.get(value.strip().casefold())
    if wanted is None:
        return Change(False, "estado desconocido; use: "
                      + ", ".join(sorted({*SETTABLE_STATUSES.values()})))
    old = ticket.status
    ticket.status = wanted
    # Reopened by staff, the case is no longer closed since then (`mailbridge archive`
    # and the listings read closed_at).
    ticket.closed_at = now if wanted == STATUS_CLOSED else None
    if wanted == STATUS_WAITING and old != STATUS_WAITING:
        start_wait(ticket, now)
    elif wanted != STATUS_WAITING and old == STATUS_WAITING:
        end_wait(rules, ticket, now)
    session.add(TicketEvent(ticket_id=ticket.id, kind="status", at=now,
                            data={"from": old, "to": wanted, "by": by}))
    changed = old != wanted
    if changed:
        _updated(session, ticket, now, by, "status", old, wanted)
        if wanted == STATUS_CLOSED:
            emit_event(session, "case.closed", ticket, at=now, reason="staff", by=by)
    if wanted == STATUS_WAITING:
        return Change(True, f"estado cambiado de «{old}» a «{wanted}»; el plazo de respuesta "
                      "queda en pausa y, si el cliente no contesta, se le recordará y el caso "
                      "se cerrará como dice la regla de cierre", changed)
    if wanted == STATUS_RESOLVED and old != STATUS_RESOLVED:
        # Seed 003: the customer is asked to confirm; the scheduler follows up and closes.
        request_confirmation(session, rules, ticket, now)
        return Change(True, f"estado cambiado de «{old}» a «{wanted}»; se pidió al cliente "
                      "que confirme la solución", changed)
    return Change(True, f"estado cambiado de «{old}» a «{wanted}»", changed)


def request_confirmation(session: Session, rules: Rules, ticket: Ticket, now: datetime) -> None:
    """The case is resolved: ask the customer to confirm (closing attempt 1)."""
    seq = next_seq(session, ticket.id, ACTION_CLOSING_ATTEMPT)
    ticket.resolved_at = now
    end_wait(rules, ticket, now)
    send_attempt(session, rules, ticket, now=now, number=1, seq=seq, first_pending_at=now,
                 template="closing_request.txt.j2", kind="closing_request")


def start_wait(ticket: Ticket, now: datetime) -> None:
    """The desk waits on the customer: chased from now, the response clock paused."""
    ticket.waiting_since = now
    pause_response_clock(ticket, now)


def end_wait(rules: Rules, ticket: Ticket, now: datetime) -> None:
    """The wait on the customer is over (they answered, or the desk moved the case on)."""
    resume_response_clock(ticket, rules, now)
    ticket.waiting_since = None


# -- priority ---------------------------------------------------------------------------


def set_priority(session: Session, rules: Rules, ticket: Ticket, value: str, *, by: str,
                 now: datetime) -> Change:
    """«#prioridad A|B|C»: the severity follows, and so does a running response clock."""
    wanted = value.strip().upper()
    if wanted not in rules.priorities:
        return Change(False, "prioridad desconocida; use A, B o C")
    old = ticket.priority
    ticket.priority = wanted
    ticket.severity = rules.priorities[wanted].severity  # type: ignore[index]
    if ticket.first_response_at is None:
        # The response clock still runs: its target follows the new severity.
        start_response_clock(ticket, rules, rules.tenant(ticket.tenant_id), ticket.created_at)
    session.add(TicketEvent(ticket_id=ticket.id, kind="priority", at=now,
                            data={"from": old, "to": wanted, "by": by}))
    if old != wanted:
        _updated(session, ticket, now, by, "priority", old, wanted)
    return Change(True, f"prioridad cambiada de {old} a {wanted}", old != wanted)


# -- owner ------------------------------------------------------------------------------


def set_owner(session: Session, rules: Rules, ticket: Ticket, value: str, *, by: str,
              now: datetime, by_name: str | None = None,
              answering: Answering | None = None) -> Change:
    """«#asignar persona@mesa.example»: the case's owner, always someone of the desk; told
    by mail unless they did it themselves."""
    owner = value.strip().strip("<>,;").lower()
    if not owner or not ADDRESS_RE.match(owner):
        return Change(False, "indique a quién: «#asignar persona@dominio» o «#asignar yo»")
    if not rules.is_staff(owner):
        domains = ", ".join(rules.desk.staff_domains)
        return Change(False, f"{owner} no es de la mesa ({domains}): el propietario de un "
                      "caso es alguien de la mesa")
    if ticket.owner == owner:
        return Change(True, f"{owner} ya es el propietario del caso")
    previous = ticket.owner
    record_owner(session, rules, ticket, owner, by=by, now=now, why="assigned",
                 by_name=by_name, answering=answering)
    before = f" (antes {previous})" if previous else ""
    return Change(True, f"propietario del caso: {owner}{before}", True)


def record_owner(session: Session, rules: Rules, ticket: Ticket, owner: str, *, by: str,
                 now: datetime, why: str, by_name: str | None = None,
                 answering: Answering | None = None) -> None:
    """The case gets an owner (`why`: first_answer, assigned); the owner hears of it when
    someone else did it."""
    previous = ticket.owner
    ticket.owner = owner
    session.add(TicketEvent(ticket_id=ticket.id, kind="owner", at=now, data={
        "from": previous, "to": owner, "by": by, "why": why}))
    _updated(session, ticket, now, by, "owner", previous, owner)
    if owner.lower() != by.lower():
        _tell_new_owner(session, rules, ticket, owner, by_name or by, now, answering)


def _tell_new_owner(session: Session, rules: Rules, ticket: Ticket, owner: str,
                    assigned_by: str, now: datetime, answering: Answering | None) -> None:
    try:
        compose(session, rules, Mail(
            kind="staff_assigned", template="staff_case_change.txt.j2", to=[owner],
            ticket=ticket, answering=answering, auto_submitted=AUTO_GENERATED,
            context={"change": "assigned", "assigned_by": assigned_by, "body": "",
                     "tenant": rules.tenant(ticket.tenant_id)},
        ), now=now)
    except SQLAlchemyError:
        raise
    except Exception:
        # As every staff notice (pipeline/desk.py): one that cannot be made costs nothing else.
        log.exception("staff notice not queued", extra={"kind": "staff_assigned",
                                                        "case": ticket.number})
        metrics.AUTO_REPLIES_WITHHELD.labels(reason="notice_failed").inc()


# -- a staff answer ---------------------------------------------------------------------


def staff_answered(session: Session, rules: Rules, ticket: Ticket, *, by: str, now: datetime,
                   by_name: str | None = None, answering: Answering | None = None) -> None:
    """Staff answered on the case: the first answer stops the response clock, and the
    first staff member who answers an unowned case owns it."""
    if ticket.first_response_at is None:
        ticket.first_response_at = now
        session.add(TicketEvent(ticket_id=ticket.id, kind="first_response", at=now,
                                data={"by": by}))
    if ticket.owner is None and rules.is_staff(by):
        record_owner(session, rules, ticket, by, by=by, now=now, why="first_answer",
                     by_name=by_name, answering=answering)


def relay_staff_answer(session: Session, rules: Rules, ticket: Ticket, body: str, *,
                       agent_name: str | None, now: datetime,
                       answering: Answering | None = None) -> str | None:
    """A staff answer that did not reach the customer goes to them (and to those copied
    who are not staff) from the desk; its Message-ID, or None when nobody may receive it."""
    return compose(session, rules, Mail(
        kind="staff_answer", template="staff_answer.txt.j2",
        context={"body": body, "agent_name": agent_name},
        to=[ticket.sender], cc=[c for c in (ticket.cc or []) if not rules.is_staff(c)],
        ticket=ticket, answering=answering, auto_submitted=PERSON,
    ), now=now)
