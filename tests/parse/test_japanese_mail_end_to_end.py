"""A registered contact writes in ISO-2022-JP: the case keeps the Japanese text (real daemon, SMTP in,
relay sink out)."""

from __future__ import annotations

import base64

from tests.support.sink import SmtpSink

JAPANESE = "メールサーバーに接続できません。東京の全ユーザーが外部にメールを送信できません。"
# ISO-2022-JP holds ASCII and JIS X 0208 only: the template's labels are written without accents,
# as such a customer would (labels are matched accent-insensitively).
BODY = f"""Estimados:

Explicacion detallada del incidente: {JAPANESE}
Fecha y hora de la deteccion del incidente: 12/03/2026 08:15 hora Colombia
Evidencias: ログを確認してください。
Nombre del Cliente: Compensar
Pais/Region del Cliente: Colombia
Impacto a la Operacion del Cliente: 300名の業務が停止しています。
Justificacion de la Urgencia: 至急対応をお願いします。
Producto(s) Involucrado(s): EMAIL
Redes sociales involucradas: ninguna
Datos de Contacto del LCCD responsable del caso: Ana Gomez - ana@compensar.example - +57 300 123 4567

田中
"""


def _word(text: str) -> str:
    return f"=?ISO-2022-JP?B?{base64.b64encode(text.encode('iso2022_jp')).decode()}?="


def _iso2022jp_mail() -> bytes:
    headers = (
        f"From: {_word('田中 花子')} <ana@compensar.example>\r\n"
        "To: soporte-a@mesa.example\r\n"
        f"Subject: TEN-1001 {_word('メール障害のお知らせ')}\r\n"
        "Message-ID: <iso2022jp-e2e-1@compensar.example>\r\n"
        "Date: Thu, 12 Mar 2026 22:15:00 +0900\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=ISO-2022-JP\r\n"
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
    )
    body = BODY.encode("iso2022_jp").replace(b"\n", b"\r\n")
    assert b"\x1b$B" in body and body.isascii()  # what mail-parser used to leave as it is
    return headers.encode("ascii") + body


def test_iso2022jp_opening_keeps_its_japanese_text(make_daemon, sink: SmtpSink) -> None:
    daemon = make_daemon(relay_port=sink.port).start()
    with daemon.smtp() as client:
        client.sendmail("ana@compensar.example", ["soporte-a@mesa.example"], _iso2022jp_mail())

    (ack,) = sink.wait_for(1)
    assert ack.rcpt_tos == ["ana@compensar.example"]
    assert ack.message["Subject"] == "[Caso 1] TEN-1001 メール障害のお知らせ"

    ticket = daemon.wait_ticket(1)
    assert ticket["sender"] == "ana@compensar.example"
    assert ticket["sender_name"] == "田中 花子"
    assert ticket["tenant_id"] == "TEN-1001"
    assert ticket["subject"] == "TEN-1001 メール障害のお知らせ"
    (message,) = ticket["messages"]
    assert f"Explicacion detallada del incidente: {JAPANESE}" in message["body"]
    assert "300名の業務が停止しています。" in message["body"]
    assert "\x1b" not in message["body"] and "$B" not in message["body"]
    assert JAPANESE in ticket["fields"]["explicacion"]
    assert ticket["status"] == "abierto", ticket["missing_fields"]
    assert daemon.stop() == 0
