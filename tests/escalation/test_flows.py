"""Seed 002's three escalation flows over SMTP against the running daemon, with fake targets.

Every mail the desk sends is read back from the real aiosmtpd relay sink. Each test keeps a
transcript (From → To: Subject, first lines) and prints it: `pytest -s` shows what the
customer, the staff member and the target each receive.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from tests.pipeline.test_conversation import reply
from tests.support.daemon import Daemon, opening_mail
from tests.support.rules import quiet_desk_text
from tests.support.sink import Received, SmtpSink

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048  # a screenshot, as far as anyone can tell

LAFISE_BODY = """Buenas tardes:

Explicación detallada del incidente: el usuario jperez no puede ingresar a la plataforma
INBOUND desde esta mañana; el inicio de sesión responde «credenciales inválidas».
Fecha y hora de la detección del incidente: 12/03/2026 09:10 hora Nicaragua
Evidencias: adjunto captura de pantalla.
Nombre del Cliente: Lafise Nicaragua
País/Región del Cliente: Nicaragua
Impacto a la Operación del Cliente: un agente de la campaña de cobros sin acceso.
Justificación de la Urgencia: el agente atiende la cola de cobros de hoy.
Producto(s) Involucrado(s): INBOUND
Datos de Contacto del LCCD responsable del caso: María López – maria@lafise.example – +505 8888 1234

Saludos,
María
"""

COMPENSAR_EMAIL_BODY = """Buenos días:

Usuario con el problema: mercadeo.compensar
Campaña afectada: Novedades de marzo
Email asociado al usuario en el reseller: mercadeo@compensar.example

Explicación detallada del incidente: las muestras de email de la campaña no están llegando
a los buzones de prueba.
Fecha y hora de la detección del incidente: 12/03/2026 08:15 hora Colombia
Nombre del Cliente: Compensar
País/Región del Cliente: Colombia
Impacto a la Operación del Cliente: no podemos aprobar el envío de la campaña.
Justificación de la Urgencia: el envío está programado para hoy a las 15:00.
Producto(s) Involucrado(s): EMAIL
Datos de Contacto del LCCD responsable del caso: Ana Gómez – ana@compensar.example – +57 300 123 4567

Saludos,
Ana
"""

COMPENSAR_SURVEY_BODY = """Buenos días:

Explicación detallada del incidente: las encuestas de satisfacción posteriores a la llamada
no se envían desde ayer; los clientes no reciben el enlace.
Fecha y hora de la detección del incidente: 12/03/2026 07:40 hora Colombia
Nombre del Cliente: Compensar
País/Región del Cliente: Colombia
Impacto a la Operación del Cliente: no medimos la satisfacción de 2.000 llamadas diarias.
Justificación de la Urgencia: cierre de indicadores del mes.
Producto(s) Involucrado(s): Encuestas
Datos de Contacto del LCCD responsable del caso: Ana Gómez – ana@compensar.example – +57 300 123 4567

Saludos,
Ana
"""


# -- helpers -------------------------------------------------------------------------------

def text_of(received: Received) -> str:
    msg = received.message
    part = msg.get_body(("plain",)) if msg.is_multipart() else msg
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def subject_of(received: Received) -> str:
    return " ".join(str(received.message["Subject"]).split())


def seen(received: Received) -> str:
    """One mail as a person sees it: From → To: Subject, then its first lines."""
    msg = received.message
    lines = [line for line in text_of(received).splitlines() if line.strip()][:4]
    files = [p.get_filename() for p in msg.iter_attachments()]
    head = f"{msg['From']} → {', '.join(received.rcpt_tos)}: {subject_of(received)}"
    extra = f"\n      [adjuntos: {', '.join(files)}]" if files else ""
    return head + "".join(f"\n      | {line}" for line in lines) + extra


class Transcript:
    """The mails of one flow in order: ours (from the sink) and the ones we play."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        self.lines: list[str] = []
        self.read = 0

    def played(self, msg: EmailMessage) -> None:
        body = msg.get_body(("plain",)) if msg.is_multipart() else msg
        assert body is not None
        first = [line for line in body.get_content().splitlines() if line.strip()][:3]
        self.lines.append(f"▶ {msg['From']} → {msg['To']}: {msg['Subject']}"
                          + "".join(f"\n      | {line}" for line in first))

    def wait(self, count: int, daemon: Daemon) -> list[Received]:
        """The `count` new mails the desk sent (ordered by recipient), after settling."""
        got = self.sink.wait_for(self.read + count)
        daemon.settle()
        got = self.sink.received
        assert len(got) == self.read + count, [seen(r) for r in got[self.read:]]
        new = sorted(got[self.read:], key=lambda r: r.rcpt_tos)
        self.read = len(got)
        self.lines.extend("◀ " + seen(r) for r in new)
        return new

    def nothing_new(self, daemon: Daemon) -> None:
        daemon.settle()
        time.sleep(0.3)  # the sender polls every 0.5 s in tests; nothing must be on its way
        daemon.settle()
        assert len(self.sink.received) == self.read, [seen(r) for r in self.sink.received[self.read:]]

    def print(self, title: str) -> None:
        print(f"\n===== {title}\n" + "\n".join(self.lines))


def vendor_mail(*, sender: str, to: str, subject: str, body: str,
                in_reply_to: str | None = None, references: str | None = None,
                **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[1].rstrip(">"))
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def by_rcpt(mails: list[Received]) -> dict[str, Received]:
    return {", ".join(r.rcpt_tos): r for r in mails}


# -- HIBOT: staff command, fields asked, automatic answer with the ticket, reply by number --

def test_hibot_flow(make_daemon, sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    log = Transcript(sink)

    # María (Lafise) reports that a user cannot log in to INBOUND, with a screenshot.
    opening = opening_mail(sender="maria@lafise.example", to="soporte-b@mesa.example",
                           subject="TEN-2002 Usuario no puede ingresar a INBOUND",
                           body=LAFISE_BODY)
    opening.replace_header("From", "María López <maria@lafise.example>")
    opening.add_attachment(PNG, maintype="image", subtype="png", filename="captura-inbound.png")
    daemon.send(opening, rcpt=["soporte-b@mesa.example"])
    log.played(opening)
    (ack,) = log.wait(1, daemon)
    assert ack.rcpt_tos == ["maria@lafise.example"]
    assert subject_of(ack) == "[Caso 1] TEN-2002 Usuario no puede ingresar a INBOUND"

    # Carla escalates to HIBOT but gives only the user: nothing goes to HIBOT, she is asked.
    first_try = reply(ack.message, sender="carla@mesa.example", name="Carla Vidal",
                      to=["soporte+1@mesa.example"], quote=False,
                      body="#escalar hibot\nUsuario que tiene el problema: jperez")
    daemon.send(first_try, rcpt=["soporte+1@mesa.example"])
    log.played(first_try)
    (asked,) = log.wait(1, daemon)
    assert asked.rcpt_tos == ["carla@mesa.example"]
    text = text_of(asked)
    assert "✘ #escalar hibot: no enviado a HIBOT: faltan datos obligatorios" in text
    assert "Correo asociado al usuario" in text and "Usuario que tiene el problema" not in text
    case = daemon.cli_json("tickets", "show", "1")
    (pending,) = case["vendor_references"]
    assert (pending["target"], pending["state"]) == ("hibot", "faltan_datos")
    assert pending["missing_fields"] == ["correo_usuario"]

    # She answers with the missing line: the escalation goes out with the case's data and
    # the evidence; she gets the confirmation. María gets nothing of this.
    second_try = reply(ack.message, sender="carla@mesa.example", name="Carla Vidal",
                       to=["soporte+1@mesa.example"], quote=False,
                       body="#escalar hibot\nCorreo asociado al usuario: jperez@lafise.example")
    daemon.send(second_try, rcpt=["soporte+1@mesa.example"])
    log.played(second_try)
    mails = by_rcpt(log.wait(2, daemon))
    escalation, confirmed = mails["soporte@hibot.example"], mails["carla@mesa.example"]
    esc = escalation.message
    assert subject_of(escalation) == "[Caso 1] Escalamiento HIBOT: TEN-2002 Usuario no puede ingresar a INBOUND"
    assert esc["Reply-To"] == "Mesa de Soporte <soporte+1@mesa.example>"
    assert esc["Auto-Submitted"] == "no" and esc["X-Auto-Response-Suppress"] is None
    assert esc["In-Reply-To"] is None  # a new conversation, none of our internal references
    body = text_of(escalation)
    for line in ("Cliente: Lafise Nicaragua", "Usuario que tiene el problema: jperez",
                 "Correo asociado al usuario: jperez@lafise.example",
                 "el usuario jperez no puede ingresar a la plataforma"):
        assert line in body, body
    (shot,) = list(esc.iter_attachments())
    assert (shot.get_filename(), shot.get_content()) == ("captura-inbound.png", PNG)
    assert "✔ #escalar hibot: escalado a HIBOT (soporte@hibot.example)" in text_of(confirmed)

    # HIBOT's robot answers (Auto-Submitted) with its ticket number: kept, staff told, no answer.
    auto = vendor_mail(
        sender="HIBOT Soporte <soporte@hibot.example>", to="soporte+1@mesa.example",
        subject=f"Ticket #48213 creado: {subject_of(escalation)}", in_reply_to=esc["Message-ID"],
        references=esc["Message-ID"], Auto_Submitted="auto-replied",
        body="Hemos recibido su solicitud. Se ha creado el Ticket #48213 y un agente le "
             "responderá pronto.\n\nNo responda a este mensaje automático.")
    with daemon.smtp() as client:  # a robot's mail, with the null envelope sender
        client.send_message(auto, from_addr="", to_addrs=["soporte+1@mesa.example"])
    log.played(auto)
    (registered,) = log.wait(1, daemon)
    assert registered.rcpt_tos == ["carla@mesa.example"]
    assert subject_of(registered).startswith("[Caso 1] HIBOT registró el escalamiento (ticket #48213)")
    assert "seguimos esperando la respuesta de una persona" in text_of(registered)
    (reference,) = daemon.cli_json("tickets", "show", "1")["vendor_references"]
    assert (reference["vendor_ticket"], reference["state"]) == ("48213", "registrado")

    # A person at HIBOT answers later: no [Caso 1], no References, only their ticket number.
    human = vendor_mail(
        sender="Laura Pérez <laura@hibot.example>", to="soporte@mesa.example",
        subject="Re: Ticket #48213 - Usuario bloqueado",
        body="Hola equipo:\n\nEl usuario jperez estaba bloqueado por intentos fallidos; ya "
             "lo desbloqueamos y puede ingresar.\n\nSaludos,\nLaura – Soporte HIBOT")
    daemon.send(human, rcpt=["soporte@mesa.example"])
    log.played(human)
    (relayed,) = log.wait(1, daemon)
    assert relayed.rcpt_tos == ["carla@mesa.example"]  # never María
    assert subject_of(relayed).startswith("[Caso 1] Respuesta de HIBOT (ticket #48213)")
    assert "ya lo desbloqueamos" in text_of(relayed)
    assert relayed.message["Reply-To"] == "soporte@hibot.example, soporte+1@mesa.example"
    case = daemon.cli_json("tickets", "show", "1")
    (reference,) = case["vendor_references"]
    assert (reference["vendor_ticket"], reference["state"]) == ("48213", "respondido")
    assert [m["author_role"] for m in case["messages"]] == [
        "customer", "staff", "staff", "vendor", "vendor"]

    # Carla answers Laura with the case in copy: recorded, relayed to no one, we wait again.
    answer = reply(relayed.message, sender="carla@mesa.example", name="Carla Vidal",
                   to=["soporte@hibot.example"], cc=["soporte+1@mesa.example"], quote=False,
                   body="Gracias, Laura. Lo confirmamos con el cliente y les contamos.")
    daemon.send(answer, rcpt=["soporte+1@mesa.example"])
    log.played(answer)
    log.nothing_new(daemon)
    case = daemon.cli_json("tickets", "show", "1")
    assert case["vendor_references"][0]["state"] == "registrado"
    assert case["cc"] == []  # HIBOT never becomes a copy of the customer's mail
    assert [r.rcpt_tos for r in sink.received].count(["maria@lafise.example"]) == 1  # the ack
    log.print("HIBOT (INBOUND): #escalar, datos pedidos, respuesta automática, respuesta por número")
    daemon.stop()


# -- Panda: the product rule escalates the opening, no answer → reminder, reply on the thread

def test_panda_flow(make_daemon, sink: SmtpSink, tmp_path: Path) -> None:
    rules = quiet_desk_text()
    marker = "    products: [EMAIL]\n    auto_escalate: {enabled: false}\n"
    assert marker in rules
    demo = tmp_path / "rules-auto.yaml"
    demo.write_text(rules.replace(marker, "    products: [EMAIL]\n    auto_escalate: {enabled: true}\n"),
                    encoding="utf-8")
    daemon = make_daemon(relay_port=sink.port, rules=str(demo)).start()
    log = Transcript(sink)

    # Ana reports that campaign samples do not arrive; EMAIL routes to Panda, whose rule is on.
    opening = opening_mail(subject="TEN-1001 No llegan las muestras de email de la campaña",
                           body=COMPENSAR_EMAIL_BODY)
    daemon.send(opening)
    log.played(opening)
    mails = by_rcpt(log.wait(2, daemon))
    ack, escalation = mails["ana@compensar.example"], mails["soporte_revendedores@clickpanda.example"]
    assert subject_of(ack).startswith("[Caso 1] TEN-1001")
    assert subject_of(escalation) == (
        "[Caso 1] Escalamiento Panda: TEN-1001 No llegan las muestras de email de la campaña")
    body = text_of(escalation)
    for line in ("Usuario con el problema: mercadeo.compensar", "Campaña afectada: Novedades de marzo",
                 "Email asociado al usuario en el reseller: mercadeo@compensar.example"):
        assert line in body
    assert "Panda" not in text_of(ack)  # the customer's acknowledgement says nothing of it
    assert escalation.message["X-Auto-Response-Suppress"] == "All"  # no robot answer wanted

    # Panda says nothing for 12 h: the sweep reminds it and tells the desk; again: nothing.
    (reference,) = daemon.cli_json("tickets", "show", "1")["vendor_references"]
    assert (reference["state"], reference["origin"]) == ("enviado", "rule")
    when = _plus_hours(reference["sent_at"], 13)
    swept = daemon.cli_json("escalation", "sweep", "--now", when)
    assert [(s["case"], s["target"], s["reminded"]) for s in swept] == [(1, "panda", True)]
    assert daemon.cli_json("escalation", "sweep", "--now", when) == []
    mails = by_rcpt(log.wait(2, daemon))
    reminder, told = mails["soporte_revendedores@clickpanda.example"], mails["proveedores@mesa.example"]
    assert subject_of(reminder).startswith("[Caso 1] Recordatorio: Escalamiento Panda")
    assert reminder.message["In-Reply-To"] == escalation.message["Message-ID"]
    assert "Panda no ha respondido el escalamiento del caso 1" in text_of(told)

    # Panda answers on the thread (reply-all, its own subject): joins by References and goes
    # to the desk's address (no staff member is on this case yet), not to Ana.
    answer = reply(reminder.message, sender="soporte_revendedores@clickpanda.example",
                   name="Soporte Revendedores Panda", to=["soporte+1@mesa.example"],
                   body="Hola, revisamos el reseller: el dominio de la campaña no tenía el "
                        "registro DKIM. Ya lo corregimos; por favor vuelvan a probar.")
    answer.replace_header("Subject", "RE: Escalamiento muestras Compensar")
    daemon.send(answer, rcpt=["soporte+1@mesa.example"])
    log.played(answer)
    (relayed,) = log.wait(1, daemon)
    assert relayed.rcpt_tos == ["proveedores@mesa.example"]
    assert subject_of(relayed).startswith("[Caso 1] Respuesta de Panda:")
    assert "no tenía el registro DKIM" in text_of(relayed)
    assert "> " not in text_of(relayed)  # our quoted reminder is not relayed back
    case = daemon.cli_json("tickets", "show", "1")
    (reference,) = case["vendor_references"]
    assert (reference["state"], reference["vendor_ticket"]) == ("respondido", None)
    assert case["messages"][-1]["author_role"] == "vendor"
    assert daemon.cli_json("escalation", "sweep", "--now", _plus_hours(reference["sent_at"], 400)) == []
    assert [r.rcpt_tos for r in sink.received].count(["ana@compensar.example"]) == 1  # the ack
    log.print("Panda (EMAIL): regla automática, recordatorio, respuesta en el hilo")
    daemon.stop()


def _plus_hours(iso: str, hours: float) -> str:
    return (datetime.fromisoformat(iso) + timedelta(hours=hours)).isoformat()


# -- Operations: the CLI, its pipeline answers with its own ticket number ------------------

def test_operations_flow(make_daemon, sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    log = Transcript(sink)
    opening = opening_mail(subject="TEN-1001 Falla en encuestas", body=COMPENSAR_SURVEY_BODY)
    daemon.send(opening)
    log.played(opening)
    log.wait(1, daemon)  # the acknowledgement

    # Without --by, the required «Propietario externo» is missing: exit 65, nothing sent.
    refused = daemon.cli("escalate", "1", "operaciones", "--json", check=False)
    assert refused.returncode == 65
    assert "Propietario externo" in refused.stdout.decode()
    log.nothing_new(daemon)

    sent = daemon.cli("escalate", "1", "operaciones", "--by", "carla@mesa.example",
                      "--field", "prioridad=MEDIA", "--json")
    assert b'"status": "sent"' in sent.stdout
    log.lines.append("▶ (CLI) mailbridge escalate 1 operaciones --by carla@mesa.example "
                     "--field prioridad=MEDIA")
    (escalation,) = log.wait(1, daemon)
    assert escalation.rcpt_tos == ["operaciones@mesa-6.hs-inbox.example"]
    assert subject_of(escalation) == "[Caso 1] Escalamiento Operaciones: TEN-1001 Falla en encuestas"
    text = text_of(escalation)
    for line in ("Cliente: Compensar", "Categoría de servicio: Incidencia", "Categoría: Incidente",
                 "Prioridad: MEDIA", "Propietario externo: carla@mesa.example"):
        assert line in text, text
    # Again: refused, the case is already with Operations.
    again = daemon.cli("escalate", "1", "operaciones", "--by", "carla@mesa.example", check=False)
    assert again.returncode == 1 and "ya está escalado" in again.stdout.decode()

    # The pipeline creates its ticket and writes back on the thread, quoting our mail.
    created = reply(escalation.message, sender="operaciones@mesa-6.hs-inbox.example",
                    name="Operaciones", to=["soporte+1@mesa.example"],
                    body="Creamos el Ticket de Operaciones 7781 (Incidente, prioridad media). "
                         "Lo revisa el equipo de plataforma.")
    daemon.send(created, rcpt=["soporte+1@mesa.example"])
    log.played(created)
    (relayed,) = log.wait(1, daemon)
    assert relayed.rcpt_tos == ["carla@mesa.example"]  # who escalated, not Ana
    assert subject_of(relayed).startswith("[Caso 1] Respuesta de Operaciones (ticket #7781)")
    case = daemon.cli_json("tickets", "show", "1")
    (reference,) = case["vendor_references"]
    assert (reference["target"], reference["vendor_ticket"], reference["state"],
            reference["origin"]) == ("operaciones", "7781", "respondido", "cli")
    assert reference["fields"]["propietario_externo"] == "carla@mesa.example"
    assert [r.rcpt_tos for r in sink.received].count(["ana@compensar.example"]) == 1
    log.print("Operaciones: CLI, ticket del pipeline")
    daemon.stop()
