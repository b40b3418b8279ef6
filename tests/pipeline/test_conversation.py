"""A whole case conversation over SMTP against the running daemon (issue 4)."""

from __future__ import annotations

import time
from email.message import EmailMessage
from email.utils import make_msgid

from tests.support.daemon import opening_mail
from tests.support.sink import SmtpSink


def reply(parent: EmailMessage, *, sender: str, name: str, body: str, to: list[str],
          cc: list[str] | None = None, quote: bool = True, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = f"RE: {parent['Subject']}"
    msg["Message-ID"] = make_msgid(domain=sender.split("@")[1])
    msg["In-Reply-To"] = parent["Message-ID"]
    msg["References"] = f"{parent.get('References', '')} {parent['Message-ID']}".strip()
    for key, value in headers.items():
        msg[key.replace("_", "-")] = value
    text = body
    if quote:
        original = parent.get_body(("plain",)).get_content() if parent.is_multipart() else parent.get_content()
        text += ("\n\nEl jue, 12 mar 2026 a las 10:15, Mesa de Soporte <soporte@mesa.example> escribió:\n"
                 + "".join(f"> {line}\n" for line in original.splitlines()))
    msg.set_content(text)
    return msg


def test_open_reply_staff_close_thanks_ooo_dsn(make_daemon, sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()

    # 1. Ana opens a case and gets the acknowledgement.
    opening = opening_mail(message_id="<abre@compensar.example>")
    daemon.send(opening)
    (ack,) = sink.wait_for(1)
    ack_msg = ack.message
    assert ack_msg["Subject"] == "[Caso 1] TEN-1001 Caída del servicio de correo"

    # 2. Ana answers reply-all with Luis in copy: joins the case, quotes stripped, no auto-reply.
    answer = reply(ack_msg, sender="ana@compensar.example", name="Ana Gómez",
                   to=["soporte+1@mesa.example"], cc=["luis@compensar.example"],
                   body="Adjunto más datos: el problema sigue desde las 10:00.")
    daemon.send(answer, rcpt=["soporte+1@mesa.example"])
    daemon.settle()
    case = daemon.cli_json("tickets", "show", "1")
    assert [m["author_role"] for m in case["messages"]] == ["customer", "customer"]
    assert case["messages"][1]["body"].strip() == "Adjunto más datos: el problema sigue desde las 10:00."
    assert "luis@compensar.example" in case["cc"]
    assert len(sink.received) == 1  # a customer's reply is not acknowledged again

    # 3. Staff answers reply-all with a command: applied, confirmed to staff only.
    staff = reply(ack_msg, sender="carla@mesa.example", name="Carla Vidal",
                  to=["ana@compensar.example"], cc=["soporte+1@mesa.example", "luis@compensar.example"],
                  body="Hola Ana, ya corregimos la cola de salida.\n#estado resuelto\n#volar alto\nSaludos")
    daemon.send(staff, rcpt=["soporte+1@mesa.example"])
    sink.wait_for(3)
    daemon.settle()
    # «resuelto» also asks the customer (and the copied contact) to confirm (seed 003, issue 7).
    (request,) = [r for r in sink.received[1:] if "ana@compensar.example" in r.rcpt_tos]
    assert request.rcpt_tos == ["ana@compensar.example", "luis@compensar.example"]
    assert "Confirmo" in request.message.get_content()
    (confirmation,) = [r for r in sink.received[1:] if r.rcpt_tos == ["carla@mesa.example"]]
    text = confirmation.message.get_content()
    assert "#estado resuelto" in text and "resuelto" in text
    assert "#volar alto: orden desconocida" in text
    assert "#prioridad A|B|C" in text  # the valid commands are listed
    case = daemon.cli_json("tickets", "show", "1")
    assert case["status"] == "resuelto"
    assert case["messages"][2]["author_role"] == "staff"
    assert "#estado" not in case["messages"][2]["body"]
    assert any(e["kind"] == "first_response" for e in case["events"])

    # Staff closes the case.
    close = reply(ack_msg, sender="carla@mesa.example", name="Carla Vidal",
                  to=["soporte+1@mesa.example"], body="#estado cerrado", quote=False)
    daemon.send(close, rcpt=["soporte+1@mesa.example"])
    sink.wait_for(4)
    daemon.settle()
    assert daemon.cli_json("tickets", "show", "1")["status"] == "cerrado"

    # 4. "Gracias" on the closed case gets nothing.
    thanks = reply(ack_msg, sender="ana@compensar.example", name="Ana Gómez",
                   to=["soporte+1@mesa.example"], body="¡Muchas gracias!\n\nAna")
    daemon.send(thanks, rcpt=["soporte+1@mesa.example"])
    daemon.settle()
    assert len(sink.received) == 4

    # A real question on the closed case: told once to open a new case, not twice.
    for n in range(2):
        again = reply(ack_msg, sender="ana@compensar.example", name="Ana Gómez",
                      to=["soporte+1@mesa.example"], body=f"Volvió a fallar hoy ({n}). ¿Pueden revisar?")
        daemon.send(again, rcpt=["soporte+1@mesa.example"])
        daemon.settle()
    assert len(sink.received) == 5
    notice = sink.received[4]
    assert notice.rcpt_tos == ["ana@compensar.example"]
    assert "abra\nun caso nuevo" in notice.message.get_content().replace("\r\n", "\n") or \
        "abra un caso nuevo" in notice.message.get_content().replace("\r\n", " ")
    assert daemon.cli_json("tickets", "show", "1")["status"] == "cerrado"

    # 5. Out-of-office never opens a case nor gets an answer.
    ooo = reply(ack_msg, sender="ana@compensar.example", name="Ana Gómez",
                to=["soporte+1@mesa.example"], body="Estoy fuera de la oficina hasta el lunes.",
                quote=False, Auto_Submitted="auto-replied")
    ooo.replace_header("Subject", "Respuesta automática: Fuera de la oficina")
    daemon.send(ooo, rcpt=["soporte+1@mesa.example"])
    fresh_ooo = opening_mail(subject="Fuera de la oficina", X_Autoreply="yes")
    daemon.send(fresh_ooo)
    daemon.settle()
    assert len(sink.received) == 5
    assert daemon.outcomes()[-2:] == ["ignored:auto-reply", "ignored:auto-reply"]

    # 6. A DSN of our acknowledgement is recorded on its case and marks the address.
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.compensar.example>\r\n"
        "To: soporte@mesa.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.compensar.example>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.compensar.example\r\n\r\n"
        "Final-Recipient: rfc822; ana@compensar.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: soporte@mesa.example\r\nTo: ana@compensar.example\r\n"
        f"Message-ID: {ack_msg['Message-ID']}\r\nSubject: [Caso 1] TEN-1001\r\n"
        "--B--\r\n"
    ).encode()
    with daemon.smtp() as client:
        client.sendmail("", ["soporte@mesa.example"], dsn)
    daemon.settle()
    case = daemon.cli_json("tickets", "show", "1")
    bounce = [e for e in case["events"] if e["kind"] == "bounce"]
    assert bounce and bounce[0]["data"]["recipients"] == ["ana@compensar.example"]
    assert bounce[0]["data"]["status"] == "5.1.1"
    assert daemon.query("SELECT hard FROM address_status WHERE address='ana@compensar.example'") in ([(1,)], [(True,)])
    assert len(sink.received) == 5
    assert daemon.stop() == 0


def test_staff_answer_to_the_desk_only_is_relayed_without_commands(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    daemon.send(opening_mail(), rcpt=["soporte-b@mesa.example"])
    (ack,) = sink.wait_for(1)
    staff = reply(ack.message, sender="carla@mesa.example", name="Carla Vidal",
                  to=["soporte+1@mesa.example"], quote=False,
                  body="#prioridad A\nAna, reiniciamos el servicio; confirme por favor si ya recibe correo.")
    daemon.send(staff, rcpt=["soporte+1@mesa.example"])
    got = sink.wait_for(3)
    daemon.settle()
    by_rcpt = {tuple(r.rcpt_tos): r.message for r in got[1:]}
    relayed = by_rcpt[("ana@compensar.example",)]
    assert "reiniciamos el servicio" in relayed.get_content()
    assert "#prioridad" not in relayed.get_content()
    assert relayed["Subject"].startswith("[Caso 1]")
    assert ("carla@mesa.example",) in by_rcpt
    assert daemon.cli_json("tickets", "show", "1")["priority"] == "A"
    daemon.stop()


def test_unknown_sender_and_shared_mailbox_get_a_reply_and_no_case(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    daemon.send(opening_mail(sender="pedro@desconocido.example"))
    daemon.send(opening_mail(sender="info@compensar.example"))
    daemon.send(opening_mail(sender="maria@lafise.example"))  # a contact, but of TEN-2002
    got = sink.wait_for(3)
    daemon.settle()
    assert daemon.cli_json("tickets", "list") == []
    texts = {r.rcpt_tos[0]: r.message.get_content().replace("\r\n", "\n") for r in got}
    assert "no figura entre los contactos autorizados" in texts["pedro@desconocido.example"]
    assert "buzones compartidos" in texts["info@compensar.example"]
    assert "no figura como contacto autorizado del cliente\nTEN-1001" in texts["maria@lafise.example"]
    # Their mail is kept.
    assert daemon.outcomes() == ["refused:unknown-sender", "refused:shared-mailbox",
                                 "refused:not-a-contact-of-tenant"]
    assert daemon.query("SELECT count(*) FROM inbound_raw WHERE length(raw) > 0") == [(3,)]
    daemon.stop()


def test_look_alike_mail_joins_the_open_case(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    daemon.send(opening_mail())
    sink.wait_for(1)
    daemon.send(opening_mail(sender="luis@compensar.example",
                             subject="RE: TEN-1001 caída del servicio de  correo"))
    got = sink.wait_for(2)
    daemon.settle()
    assert len(daemon.cli_json("tickets", "list")) == 1
    told = got[1]
    assert told.rcpt_tos == ["luis@compensar.example"]
    assert told.message["Subject"].startswith("[Caso 1]")
    assert "caso abierto\nnúmero 1" in told.message.get_content().replace("\r\n", "\n")
    assert len(daemon.cli_json("tickets", "show", "1")["messages"]) == 2
    daemon.stop()


def test_auto_replies_to_one_address_are_rate_limited(make_daemon, sink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    for n in range(8):
        daemon.send(opening_mail(sender="pedro@desconocido.example", subject=f"Consulta {n}"))
    daemon.settle()
    time.sleep(0.3)
    assert len(sink.received) == 5  # the demo limit: 5 an hour
    assert len(daemon.outcomes()) == 8
    daemon.stop()
