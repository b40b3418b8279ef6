"""A 20 MB plain-text mail through the real daemon (issue 21.5): the case opens and is
acknowledged from the head of the text, the case shows that head and says the rest was
left out, the raw message is stored whole, and the daemon's peak memory grows by less than
four times the mail's size.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

from tests.hostile.helpers import vm_hwm_kib
from tests.support.daemon import COMPLETE_BODY, opening_mail

SIZE = 20 * 1024 * 1024


def big_log_mail() -> EmailMessage:
    line = "2026-03-12 08:15:{:02d} smtp-in[4711]: conexión rechazada desde 10.0.0.{} (504)\n"
    lines = [line.format(n % 60, n % 250) for n in range(SIZE // 76)]
    message = EmailMessage()
    message["From"] = "Ana Gómez <ana@compensar.example>"
    message["To"] = "soporte-a@mesa.example"
    message["Subject"] = "TEN-1001 Registro del servidor de correo"
    message["Message-ID"] = "<registro-grande@compensar.example>"
    message.set_content(COMPLETE_BODY + "\nRegistro:\n" + "".join(lines), cte="8bit")
    return message


def peak_kib(pid: int) -> int:
    """The daemon's peak resident memory with its pipeline processes' (PostgreSQL)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    peaks = [vm_hwm_kib(pid)]
    for child in children:
        try:
            peaks.append(vm_hwm_kib(int(child)))
        except (OSError, RuntimeError):
            pass
    return max(peaks)


def test_a_20_mb_text_mail_opens_a_case_from_its_head(make_daemon, sink) -> None:  # type: ignore[no-untyped-def]
    daemon = make_daemon(relay_port=sink.port, max_message_size=str(32 * 1024 * 1024))
    daemon.start()
    assert daemon.proc is not None
    daemon.send(opening_mail(subject="TEN-1001 Calentamiento"))
    sink.wait_for(1)
    before = peak_kib(daemon.proc.pid)
    mail = big_log_mail()
    raw = mail.as_bytes()
    daemon.send(mail)
    daemon.settle(timeout=120)
    ack = sink.wait_for(2)[-1].message
    assert ack["Subject"] == "[Caso 2] TEN-1001 Registro del servidor de correo"
    assert "caso número 2" in ack.get_content()

    case = daemon.wait_ticket(2)
    body = case["messages"][0]["body"]
    assert body.startswith("Buenos días")
    assert re.search(r"\[Texto recortado: el mensaje continúa con 2\d,\d MB más que no se "
                     r"muestran aquí\. El correo original se conserva completo\.\]$", body), body[-300:]
    assert len(body.encode("utf-8")) < 300 * 1024
    # The template's fields were read from the head: the case is complete.
    assert case["missing_fields"] == [] and case["fields"]
    stored = daemon.query("SELECT length(r.raw) FROM inbound_raw r JOIN inbound i "
                          "ON i.id = r.inbound_id WHERE i.message_id = :m",
                          m="<registro-grande@compensar.example>")
    assert stored and stored[0][0] >= len(raw) - 64  # line ends as sent over SMTP
    growth = (peak_kib(daemon.proc.pid) - before) * 1024
    print(f"20 MB text mail: peak RSS +{growth / 1e6:.1f} MB ({growth / len(raw):.2f}x its size)")
    assert growth < 4 * len(raw), f"peak grew {growth / 1e6:.1f} MB for {len(raw) / 1e6:.1f} MB"
