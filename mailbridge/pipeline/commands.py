"""Staff commands written on a line of their own in a reply: #estado, #prioridad, #escalar, #cc."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from mailbridge.parse.replies import StaffCommand
from mailbridge.pipeline.context import MailContext
from mailbridge.pipeline.desk import take_ownership
from mailbridge.pipeline.lifecycle import end_wait, request_confirmation, start_wait
from mailbridge.tickets.models import (
    STATUS_CLOSED,
    STATUS_IN_PROGRESS,
    STATUS_OPEN,
    STATUS_RESOLVED,
    STATUS_WAITING,
    Ticket,
    TicketEvent,
)

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


@dataclass(frozen=True)
class CommandResult:
    line: str
    ok: bool
    message: str  # Spanish, for the staff member's confirmation


Handler = Callable[[MailContext, Ticket, StaffCommand], CommandResult]


def _estado(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    wanted = SETTABLE_STATUSES.get((cmd.args[0] if cmd.args else "").casefold())
    if wanted is None:
        return CommandResult(cmd.line, False, "estado desconocido; use: "
                             + ", ".join(sorted({*SETTABLE_STATUSES.values()})))
    old = ticket.status
    ticket.status = wanted
    if wanted == STATUS_CLOSED:
        ticket.closed_at = ctx.now
    if wanted == STATUS_WAITING and old != STATUS_WAITING:
        start_wait(ctx, ticket)
    elif wanted != STATUS_WAITING and old == STATUS_WAITING:
        end_wait(ctx, ticket)
    if wanted == STATUS_WAITING:
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="status", at=ctx.now,
                                    data={"from": old, "to": wanted, "by": ctx.sender}))
        return CommandResult(cmd.line, True, f"estado cambiado de «{old}» a «{wanted}»; el "
                             "plazo de respuesta queda en pausa y, si el cliente no contesta, "
                             "se le recordará y el caso se cerrará como dice la regla de cierre")
    ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="status", at=ctx.now,
                                data={"from": old, "to": wanted, "by": ctx.sender}))
    if wanted == STATUS_RESOLVED and old != STATUS_RESOLVED:
        # Seed 003: the customer is asked to confirm; the scheduler follows up and closes.
        request_confirmation(ctx, ticket)
        return CommandResult(cmd.line, True, f"estado cambiado de «{old}» a «{wanted}»; "
                             "se pidió al cliente que confirme la solución")
    return CommandResult(cmd.line, True, f"estado cambiado de «{old}» a «{wanted}»")


def _prioridad(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    wanted = (cmd.args[0] if cmd.args else "").upper()
    if wanted not in ctx.rules.priorities:
        return CommandResult(cmd.line, False, "prioridad desconocida; use A, B o C")
    old = ticket.priority
    ticket.priority = wanted
    ticket.severity = ctx.rules.priorities[wanted].severity  # type: ignore[index]
    if ticket.first_response_at is None:
        # The response clock still runs: its target follows the new severity.
        from mailbridge.sla.cases import start_response_clock

        start_response_clock(ticket, ctx.rules, ctx.rules.tenant(ticket.tenant_id),
                             ticket.created_at)
    ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="priority", at=ctx.now,
                                data={"from": old, "to": wanted, "by": ctx.sender}))
    return CommandResult(cmd.line, True, f"prioridad cambiada de {old} a {wanted}")


def _escalar(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    """Send the case to Operations or a vendor; missing required fields are asked back."""
    from mailbridge.escalation.fields import strip_field_lines
    from mailbridge.escalation.service import ORIGIN_STAFF, escalate

    target = (cmd.args[0] if cmd.args else "").casefold()
    if not target:
        # Without a name, the case's products choose (INBOUND → hibot …) when only one fits.
        products = (ticket.fields or {}).get("productos") or []
        fits = ctx.rules.escalation_targets_for_products(
            products if isinstance(products, list) else [str(products)]
        )
        if len(fits) != 1:
            known = ", ".join(sorted(ctx.rules.escalation_targets))
            return CommandResult(cmd.line, False,
                                 f"indique a quién escalar, p. ej. «#escalar hibot» ({known})")
        target = fits[0]
    ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="escalation_requested", at=ctx.now,
                                data={"target": target, "by": ctx.sender}))
    result = escalate(
        ctx.session, ctx.rules, ticket, target, now=ctx.now,
        evidence_dir=ctx.settings.evidence_dir, origin=ORIGIN_STAFF,
        requested_by=ctx.sender, requested_by_name=ctx.mail.from_name or None,
        text=ctx.body, inbound_id=ctx.inbound.id,
    )
    found = ctx.rules.escalation_target(target)
    if found is not None:
        # Its «Etiqueta: valor» lines were for the target, not for the customer.
        ctx.body = strip_field_lines(ctx.body, found)
    return CommandResult(cmd.line, result.ok, result.message)


_ME = {"yo", "me", "mi", "mí"}


def _asignar(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    """«#asignar persona@mesa.example» or «#asignar yo»: the case's owner (staff only)."""
    wanted = (cmd.args[0] if cmd.args else "").strip("<>,;").lower()
    owner = ctx.sender if wanted in _ME else wanted
    if not owner or not _ADDRESS_RE.match(owner):
        return CommandResult(cmd.line, False, "indique a quién: «#asignar persona@dominio» o "
                             "«#asignar yo»")
    if not ctx.rules.is_staff(owner):
        domains = ", ".join(ctx.rules.desk.staff_domains)
        return CommandResult(cmd.line, False, f"{owner} no es de la mesa ({domains}): el "
                             "propietario de un caso es alguien de la mesa")
    if ticket.owner == owner:
        return CommandResult(cmd.line, True, f"{owner} ya es el propietario del caso")
    previous = ticket.owner
    take_ownership(ctx, ticket, owner, why="assigned")
    before = f" (antes {previous})" if previous else ""
    return CommandResult(cmd.line, True, f"propietario del caso: {owner}{before}")


_ADDRESS_RE = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def _cc(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    """«#cc persona@dominio» copies someone on the case's mail; «#cc -persona@dominio»
    stops it. Staff vouch for who they add: automatic mail goes to the sender, the tenant's
    own people and staff only (rules.yaml `tenants[].domains`)."""
    added: list[str] = []
    removed: list[str] = []
    problems: list[str] = []
    cc, held = list(ticket.cc or []), list(ticket.cc_held or [])
    for arg in cmd.args:
        remove = arg.startswith("-")
        address = arg.lstrip("+-").strip("<>,;").lower()
        if not _ADDRESS_RE.match(address):
            problems.append(f"«{arg}» no es una dirección de correo")
        elif ctx.rules.accepts_recipient(address) or address in ctx.rules.own_addresses:
            problems.append(f"{address} es una dirección de la mesa")
        elif remove:
            if address in cc:
                cc.remove(address)
                held.append(address)
                removed.append(address)
            else:
                problems.append(f"{address} no estaba en copia")
        elif address == ticket.sender or address in cc:
            problems.append(f"{address} ya recibe el correo del caso")
        else:
            cc.append(address)
            if address in held:
                held.remove(address)
            added.append(address)
    if not cmd.args:
        problems.append("indique la dirección, p. ej. «#cc persona@dominio»")
    if added or removed:
        ticket.cc, ticket.cc_held = cc, held
        ctx.session.add(TicketEvent(ticket_id=ticket.id, kind="cc", at=ctx.now,
                                    data={"added": added, "removed": removed, "by": ctx.sender}))
    parts = []
    if added:
        parts.append(f"en copia del caso desde ahora: {', '.join(added)}")
    if removed:
        parts.append(f"ya no reciben el correo del caso: {', '.join(removed)}")
    parts.extend(problems)
    return CommandResult(cmd.line, bool(added or removed) and not problems, "; ".join(parts))


COMMANDS: dict[str, tuple[Handler, str]] = {
    "estado": (_estado, "#estado abierto|en_progreso|esperando_cliente|resuelto|cerrado"),
    "prioridad": (_prioridad, "#prioridad A|B|C"),
    "escalar": (_escalar, "#escalar <destino> (y una línea «Etiqueta: valor» por dato)"),
    "cc": (_cc, "#cc persona@dominio (o «#cc -persona@dominio» para quitarla)"),
    "asignar": (_asignar, "#asignar persona@mesa.example (o «#asignar yo»)"),
}


def apply_commands(ctx: MailContext, ticket: Ticket) -> list[CommandResult]:
    results = []
    for cmd in ctx.commands:
        entry = COMMANDS.get(cmd.name)
        if entry is None:
            results.append(CommandResult(cmd.line, False, "orden desconocida"))
            continue
        results.append(entry[0](ctx, ticket, cmd))
    return results


def command_help() -> list[str]:
    return [usage for _handler, usage in COMMANDS.values()]
