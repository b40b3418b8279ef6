"""Staff commands written on a line of their own in a reply: #estado, #prioridad, #escalar, #cc."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailbridge.parse.replies import StaffCommand
from mailbridge.pipeline.changes import ADDRESS_RE as _ADDRESS_RE
from mailbridge.pipeline.changes import SETTABLE_STATUSES, set_owner, set_priority, set_status
from mailbridge.pipeline.context import MailContext
from mailbridge.pipeline.mailing import answering
from mailbridge.tickets.models import Ticket, TicketEvent

__all__ = ["COMMANDS", "SETTABLE_STATUSES", "CommandResult", "apply_commands", "command_help"]


@dataclass(frozen=True)
class CommandResult:
    line: str
    ok: bool
    message: str  # Spanish, for the staff member's confirmation


Handler = Callable[[MailContext, Ticket, StaffCommand], CommandResult]


def _estado(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    change = set_status(ctx.session, ctx.rules, ticket, cmd.args[0] if cmd.args else "",
                        by=ctx.sender, now=ctx.now)
    return CommandResult(cmd.line, change.ok, change.message)


def _prioridad(ctx: MailContext, ticket: Ticket, cmd: StaffCommand) -> CommandResult:
    change = set_priority(ctx.session, ctx.rules, ticket, cmd.args[0] if cmd.args else "",
                          by=ctx.sender, now=ctx.now)
    return CommandResult(cmd.line, change.ok, change.message)


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
    change = set_owner(ctx.session, ctx.rules, ticket, ctx.sender if wanted in _ME else wanted,
                       by=ctx.sender, now=ctx.now, by_name=ctx.mail.from_name or ctx.sender,
                       answering=answering(ctx))
    return CommandResult(cmd.line, change.ok, change.message)


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
