"""A seeded generator of realistic Spanish support mail for the benchmarks.

Openings come from the registered contacts of the demo tenants (rules.yaml) and
follow the seed-000 template, complete or with fields left out, in the shapes
real clients send: plain, HTML only or multipart/alternative, UTF-8 or Latin-1,
quoted-printable or base64, some with 50–500 KB attachments and, on request, a
few 25 MB messages. Replies are reply-all answers to an acknowledgement: they
can only be built once the ack arrived, since they need its case number and
Message-ID (`Corpus.reply`).

Every mail i is built from its own `random.Random((seed, i))`, so the corpus is
the same whatever order the mails are built or sent in.

Run it alone to look at a sample: `python bench/corpus.py --seed 7 --count 3`.
"""

from __future__ import annotations

import argparse
import email.charset
import email.encoders
import email.policy
import email.utils
import hashlib
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.mime.text import MIMEText
from html import escape

# --- who writes, and to whom ------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    address: str
    name: str
    tenant_id: str
    tenant_name: str
    country: str
    timezone_hint: str
    phone: str


# The registered contacts of the demo tenants in rules.yaml: soon only they open cases.
CONTACTS: tuple[Contact, ...] = (
    Contact("ana@compensar.example", "Ana Gómez", "TEN-1001", "Compensar", "Colombia",
            "hora de Colombia (UTC-5)", "+57 601 555 0101"),
    Contact("luis@compensar.example", "Luis Peña", "TEN-1001", "Compensar", "Colombia",
            "hora de Bogotá", "+57 310 555 0199"),
    Contact("maria@lafise.example", "María José Núñez", "TEN-2002", "Lafise Nicaragua",
            "Nicaragua", "hora de Managua (UTC-6)", "+505 2255 0123"),
)
# Weights: Compensar (premium, two contacts) writes more than Lafise.
CONTACT_WEIGHTS = (0.4, 0.3, 0.3)
SUPPORT_ADDRESSES = ("soporte-a@mesa.example", "soporte-b@mesa.example", "soporte-c@mesa.example")
SUPPORT_WEIGHTS = (0.25, 0.5, 0.25)
DESK_FROM = "soporte@mesa.example"

LABELS = (
    "Explicación detallada del incidente:",
    "Fecha y hora de la detección del incidente:",
    "Evidencias:",
    "Nombre del Cliente:",
    "País/Región del Cliente:",
    "Impacto a la Operación del Cliente:",
    "Justificación de la Urgencia:",
    "Producto(s) Involucrado(s):",
    "Redes sociales involucradas:",
    "Datos de Contacto del LCCD responsable del caso:",
)

BRIEFS = (
    "Caída del servicio de correo",
    "Lentitud en la plataforma de atención por WhatsApp",
    "No se pueden enviar campañas masivas",
    "Error 503 al ingresar al portal de agentes",
    "Intermitencia en el IVR de la línea de servicio al cliente",
    "Bots de Facebook Messenger no responden",
    "Usuarios bloqueados tras el cambio de contraseña",
    "Reportes de gestión sin datos desde ayer",
    "Llamadas se cortan a los 30 segundos",
    "Antivirus bloquea la aplicación de nómina",
    "Integración con el CRM devuelve tiempo de espera agotado",
    "Mensajes de Instagram llegan duplicados",
    "Grabaciones de llamadas no disponibles",
    "Certificado vencido en el webchat",
    "Caída de la consola de supervisión",
    "Solicitud de información sobre licencias adicionales",
)

REF_FORMATS = (" – {inc}", " ({inc})", " - ref. {inc}", ", incidente {inc}")

EXPLANATIONS = (
    "Desde las {hh}:{mm} los asesores de la sede principal no reciben correos externos. "
    "Los correos internos sí llegan, pero con demoras de hasta {n} minutos.",
    "Al intentar ingresar a la consola aparece el mensaje «Servicio no disponible» y la "
    "página queda en blanco. Afecta a {n} asesores del turno de la mañana.",
    "Las conversaciones de WhatsApp quedan en cola y no se asignan a ningún agente; los "
    "clientes reciben el mensaje automático pero nadie les contesta.",
    "El proceso nocturno de carga no terminó y los tableros muestran cero registros. "
    "Ya reiniciamos el servicio de sincronización sin éxito.",
    "Las llamadas entrantes se cortan justo después del menú principal del IVR. "
    "Probamos desde líneas fijas y móviles con el mismo resultado.",
    "Después de la actualización de anoche, {n} usuarios quedaron bloqueados y el "
    "restablecimiento de contraseña no envía el código de verificación.",
    "El antivirus puso en cuarentena el ejecutable de la aplicación de nómina en todos "
    "los equipos del área financiera; no podemos liquidar la quincena.",
    "La integración con el CRM responde con «timeout» en el {n} % de las consultas; "
    "los asesores no ven el historial del cliente.",
)

EVIDENCES = (
    "Se adjuntan capturas de pantalla del error y el registro del servidor.",
    "Ver archivo adjunto con el log de la aplicación.",
    "Adjunto video corto donde se reproduce la falla.",
    "No tenemos evidencias todavía; las enviaremos en cuanto las tengamos.",
    "Captura de la consola y exportación de la cola de mensajes (adjuntas).",
)

IMPACTS = (
    "Alto: {n} asesores sin poder atender clientes.",
    "Medio: la operación continúa con procesos manuales.",
    "Crítico, toda la línea de servicio al cliente está detenida.",
    "Bajo, afecta a un solo usuario.",
    "Alto. Se están perdiendo ventas de la campaña de fin de mes.",
)

URGENCIES = (
    "Estamos en cierre de mes y la operación no puede detenerse.",
    "Es un servicio regulado con tiempos de respuesta obligatorios.",
    "URGENTE: hay un evento masivo programado para hoy a las 18:00.",
    "Gravedad 2, se puede trabajar con contingencia por unas horas.",
    "No es urgente, prioridad BAJA.",
    "Prioridad ALTA, clientes reclamando por redes sociales.",
)

PRODUCTS = (
    "Correo Exchange Online",
    "HIBOT Contact Center",
    "Panda Adaptive Defense 360",
    "Microsoft Teams, Correo Exchange Online",
    "Plataforma omnicanal HIBOT (WhatsApp, webchat)",
    "IVR y troncales SIP",
)

SOCIALS = (
    "WhatsApp Business",
    "Facebook Messenger, Instagram",
    "Ninguna",
    "WhatsApp Business y Telegram",
    "No aplica",
)

REPLY_TEXTS = (
    "Buenos días,\n\nAdjunto la información adicional que solicitaron. El problema "
    "sigue presentándose en este momento.\n\nQuedo atento.",
    "Gracias por la pronta respuesta. Confirmo que el incidente afecta también a la "
    "sede norte; son unos {n} usuarios más.",
    "Hola, ¿hay alguna novedad sobre este caso? Los asesores siguen sin poder trabajar.",
    "Buenas tardes,\n\nReiniciamos el servidor como indicaron pero el error persiste. "
    "Envío el registro de eventos de las {hh}:{mm}.\n\nSaludos cordiales.",
    "Les informo que desde hace {n} minutos el servicio volvió a funcionar. Por favor "
    "confirmen la causa raíz antes de cerrar el caso.",
)

MAILERS = (
    "Microsoft Outlook 16.0",
    "Apple Mail (2.3731.700.6)",
    "Mozilla Thunderbird 128.5",
    None,  # Gmail and many webmails send no X-Mailer
)

MONTHS = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
          "septiembre", "octubre", "noviembre", "diciembre")
WEEKDAYS = ("lun", "mar", "mié", "jue", "vie", "sáb", "dom")

# compat32 keeps our encoded words (Latin-1 stays Latin-1) and writes CRLF like a client.
SMTP_POLICY = email.policy.compat32.clone(linesep="\r\n")
BIG_MESSAGE_BYTES = 25 * 1000 * 1000  # a "25 MB mail": the whole message, headers included


# --- what a generated mail is ------------------------------------------------------------


@dataclass
class Mail:
    """One mail ready to send: envelope, raw bytes and what the benchmark checks."""

    index: int
    kind: str  # "opening" | "reply"
    message_id: str
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    subject: str
    shape: str  # e.g. "alternative/utf-8/quoted-printable"
    complete: bool = True
    attachment_bytes: int = 0
    case_number: int | None = None  # replies: the case they answer
    opening_message_id: str | None = None  # replies: the mail that opened the case
    labels_left_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Slot:
    """One position of the send plan: a new case, or a reply to opening `reply_to`."""

    index: int
    kind: str  # "opening" | "reply"
    reply_to: int | None = None


@dataclass(frozen=True)
class Ack:
    """What the generator needs from an acknowledgement to reply to it."""

    message_id: str
    subject: str
    case_number: int
    text: str
    references: tuple[str, ...] = ()
    date: str = ""


class Corpus:
    """Seeded openings and replies; see the module docstring."""

    def __init__(
        self,
        seed: int = 0,
        *,
        attachment_ratio: float = 0.10,
        big_messages: int = 0,
        domain_tag: str = "bench",
    ) -> None:
        self.seed = seed
        self.attachment_ratio = attachment_ratio
        self.big_messages = big_messages
        self.domain_tag = domain_tag

    # -- the plan -------------------------------------------------------------------------
    def plan(self, total: int, reply_ratio: float = 0.20, start: int = 0) -> list[Slot]:
        """`total` slots, about `reply_ratio` of them replies to earlier openings.

        Replies answer openings from the first 85 % of the plan, so that their ack
        has time to arrive while the run is still sending openings.
        """
        rng = random.Random(f"plan:{self.seed}:{start}:{total}")
        n_replies = min(round(total * reply_ratio), total // 2)
        n_open = total - n_replies
        opening_idx = list(range(start, start + n_open))
        pool = opening_idx[: max(n_replies, int(n_open * 0.85))]
        answered = sorted(rng.sample(pool, n_replies)) if n_replies else []
        slots = [Slot(i, "opening") for i in opening_idx]
        slots += [Slot(start + n_open + k, "reply", reply_to=o) for k, o in enumerate(answered)]
        return slots

    def big_indexes(self, slots: list[Slot]) -> set[int]:
        """Which openings carry a 25 MB message (spread over the run)."""
        openings = [s.index for s in slots if s.kind == "opening"]
        if not self.big_messages or not openings:
            return set()
        step = max(1, len(openings) // (self.big_messages + 1))
        return {openings[min(len(openings) - 1, step * (k + 1))] for k in range(self.big_messages)}

    # -- openings -------------------------------------------------------------------------
    def opening(self, index: int, *, big: bool = False) -> Mail:
        rng = random.Random(f"{self.seed}:{index}")
        contact = rng.choices(CONTACTS, CONTACT_WEIGHTS)[0]
        support = rng.choices(SUPPORT_ADDRESSES, SUPPORT_WEIGHTS)[0]
        charset = rng.choices(("utf-8", "iso-8859-1"), (0.75, 0.25))[0]
        cte = rng.choice(("quoted-printable", "base64"))
        layout = rng.choices(("plain", "html", "alternative"), (0.4, 0.2, 0.4))[0]
        complete = rng.random() < 0.6
        # Each opening is its own issue: the internal incident reference makes the
        # subject unique (equal subjects of one tenant are linked as look-alikes).
        brief = rng.choice(BRIEFS) + rng.choice(REF_FORMATS).format(
            inc=f"INC{1000000 + self.seed * 100000 + index:07d}")
        subject = f"{contact.tenant_id} {brief}"
        detected = _detected_at(rng)
        fields = _template_values(rng, contact, detected)
        left_out: list[str] = []
        if not complete:
            left_out = rng.sample(list(fields), rng.randint(1, 4))
            for label in left_out:
                del fields[label]
        text = _template_text(rng, contact, fields)
        html = _template_html(rng, contact, fields)

        attachments: list[MIMEBase] = []
        attachment_bytes = 0
        if big:
            attachments.append(_big_attachment(rng, BIG_MESSAGE_BYTES))
            attachment_bytes = len(attachments[0].get_payload(decode=True))
        elif rng.random() < self.attachment_ratio:
            size = rng.randint(50 * 1024, 500 * 1024)
            attachments.append(_evidence_attachment(rng, size, detected))
            attachment_bytes = size

        body = _body(layout, text, html, charset, cte)
        if attachments:
            outer = MIMEMultipart("mixed")
            outer.attach(body)
            for part in attachments:
                outer.attach(part)
            msg: MIMEBase = outer
        else:
            msg = body
        cc: list[str] = []
        colleague = [c for c in CONTACTS if c.tenant_id == contact.tenant_id and c != contact]
        if colleague and rng.random() < 0.3:
            cc.append(_format_address(colleague[0].name, colleague[0].address, charset))
        message_id = self._message_id(rng, index, contact.address)
        _headers(
            msg, rng,
            sender=_format_address(contact.name, contact.address, charset),
            to=[support], cc=cc, subject=subject, charset=charset, message_id=message_id,
            date=detected + timedelta(minutes=rng.randint(2, 90)),
        )
        raw = msg.as_bytes(policy=SMTP_POLICY)
        if big:
            raw = _pad_to(raw, BIG_MESSAGE_BYTES)
        return Mail(
            index=index, kind="opening", message_id=message_id, mail_from=contact.address,
            rcpt_tos=[support], raw=raw, subject=subject,
            shape=f"{layout}/{charset}/{cte}" + ("+attachment" if attachments else ""),
            complete=complete, attachment_bytes=attachment_bytes, labels_left_out=left_out,
        )

    def big_text(self, index: int, size: int, *, layout: str = "plain",
                 cte: str = "8bit", charset: str = "utf-8") -> Mail:
        """An opening whose body is the template followed by a pasted log of ~`size`
        bytes (78-character lines): the text case of the memory phase."""
        rng = random.Random(f"{self.seed}:bigtext:{index}")
        contact = CONTACTS[0]
        support = SUPPORT_ADDRESSES[0]
        detected = _detected_at(rng)
        fields = _template_values(rng, contact, detected)
        subject = f"{contact.tenant_id} Registro completo del servidor INC{9000000 + index:07d}"
        head = _template_text(rng, contact, fields) + "\n\nRegistro del servidor:\n"
        line = "{:%Y-%m-%d %H:%M:%S} smtp-relay-{} conexión {:08x}: tiempo de espera agotado\n"
        lines: list[str] = []
        total = len(head)
        t = detected
        while total < size:
            t += timedelta(milliseconds=rng.randint(5, 900))
            text_line = line.format(t, rng.randint(1, 9), rng.getrandbits(32))
            lines.append(text_line)
            total += len(text_line.encode(charset))
        text = head + "".join(lines)
        html = "<html><body><pre>" + text.replace("&", "&amp;").replace("<", "&lt;") \
            + "</pre></body></html>"
        msg = _body(layout, text, html, charset, cte)
        message_id = self._message_id(rng, 100000 + index, contact.address)
        _headers(msg, rng, sender=_format_address(contact.name, contact.address, charset),
                 to=[support], cc=[], subject=subject, charset=charset, message_id=message_id,
                 date=detected + timedelta(minutes=5))
        return Mail(index=100000 + index, kind="opening", message_id=message_id,
                    mail_from=contact.address, rcpt_tos=[support],
                    raw=msg.as_bytes(policy=SMTP_POLICY), subject=subject,
                    shape=f"{layout}/{charset}/{cte}+text {size // 1_000_000} MB")

    # -- replies --------------------------------------------------------------------------
    def reply(self, index: int, opening: Mail, ack: Ack) -> Mail:
        """A reply-all to `ack` (the acknowledgement of `opening`), with quoted history."""
        rng = random.Random(f"{self.seed}:reply:{index}")
        first = next(c for c in CONTACTS if c.address == opening.mail_from)
        colleagues = [c for c in CONTACTS if c.tenant_id == first.tenant_id]
        # Usually the opener answers; sometimes a colleague on the same tenant does.
        author = rng.choice(colleagues) if rng.random() < 0.25 else first
        charset = rng.choices(("utf-8", "iso-8859-1"), (0.8, 0.2))[0]
        cte = rng.choice(("quoted-printable", "base64"))
        layout = rng.choices(("plain", "alternative"), (0.5, 0.5))[0]
        style = rng.choice(("outlook", "gmail"))
        prefix = rng.choices(("RE: ", "Re: ", "RE: RE: "), (0.6, 0.3, 0.1))[0]
        # Some clients drop the token: then only In-Reply-To/References thread it.
        keep_token = rng.random() < 0.9
        base_subject = ack.subject if keep_token else opening.subject
        subject = prefix + base_subject
        new_text = _fill(rng, rng.choice(REPLY_TEXTS))
        signature = f"\n\n--\n{author.name}\n{author.tenant_name}\nTel. {author.phone}\n"
        plus = f"soporte+{ack.case_number}@mesa.example"
        to = [_format_address("Mesa de Soporte", plus, charset)]
        rcpt = [plus]
        others = [c for c in colleagues if c.address != author.address]
        cc = [_format_address(c.name, c.address, charset) for c in others if rng.random() < 0.6]
        if rng.random() < 0.3:
            # Reply-all also copied the address the case was opened on.
            cc.append(opening.rcpt_tos[0])
            rcpt.append(opening.rcpt_tos[0])
        quoted_text, quoted_html = _quote(style, ack, author)
        text = new_text + signature + "\n" + quoted_text
        html = (
            "<html><body><div>" + _paragraphs(new_text + signature) + "</div>"
            + quoted_html + "</body></html>"
        )
        msg = _body(layout, text, html, charset, cte)
        message_id = self._message_id(rng, index, author.address)
        refs = [*ack.references, ack.message_id] if ack.references else [
            opening.message_id, ack.message_id]
        _headers(
            msg, rng, sender=_format_address(author.name, author.address, charset), to=to,
            cc=cc, subject=subject, charset=charset, message_id=message_id,
            date=datetime.now(UTC), in_reply_to=ack.message_id, references=refs,
        )
        return Mail(
            index=index, kind="reply", message_id=message_id, mail_from=author.address,
            rcpt_tos=rcpt, raw=msg.as_bytes(policy=SMTP_POLICY), subject=subject,
            shape=f"reply-{style}/{layout}/{charset}/{cte}" + ("" if keep_token else "/no-token"),
            case_number=ack.case_number, opening_message_id=opening.message_id,
        )

    def fake_ack(self, opening: Mail, case_number: int) -> Ack:
        """An ack as mailbridge would send it, for runs with no mailbridge (the reference)."""
        subject = f"[Caso {case_number}] {opening.subject}"
        digest = hashlib.sha256(f"{self.seed}:{opening.message_id}".encode()).hexdigest()[:16]
        return Ack(
            message_id=f"<{digest}@mesa.example>", subject=subject, case_number=case_number,
            text=(f"Estimado/a cliente:\n\nHemos recibido su solicitud y hemos abierto el caso "
                  f"número {case_number}.\n\n  Asunto:    {opening.subject}\n\nAtentamente,\n"
                  "Mesa de Soporte\n"),
            references=(opening.message_id,),
        )

    def _message_id(self, rng: random.Random, index: int, sender: str) -> str:
        domain = sender.rsplit("@", 1)[1]
        token = f"{rng.getrandbits(64):016x}"
        return f"<{self.domain_tag}.{self.seed}.{index}.{token}@{domain}>"


# --- building blocks ---------------------------------------------------------------------


def _fill(rng: random.Random, text: str) -> str:
    return text.format(hh=f"{rng.randint(6, 22):02d}", mm=f"{rng.choice((0, 15, 30, 45)):02d}",
                       n=rng.randint(3, 400))


def _detected_at(rng: random.Random) -> datetime:
    base = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    return base + timedelta(minutes=rng.randint(0, 60 * 40))


def _detected_text(rng: random.Random, contact: Contact, when: datetime) -> str:
    local = when - timedelta(hours=5 if contact.country == "Colombia" else 6)
    style = rng.randrange(4)
    if style == 0:
        return f"{local:%d/%m/%Y %H:%M} {contact.timezone_hint}"
    if style == 1:
        zone = "America/Bogota" if contact.country == "Colombia" else "America/Managua"
        return f"{local:%Y-%m-%d %H:%M} {zone}"
    if style == 2:
        hour = local.hour % 12 or 12
        ampm = "a. m." if local.hour < 12 else "p. m."
        return (f"{local.day} de {MONTHS[local.month - 1]} de {local.year}, "
                f"{hour}:{local.minute:02d} {ampm} {contact.timezone_hint}")
    return f"{local:%d-%m-%Y} a las {local:%H:%M} (hora de {contact.country})"


def _contact_line(rng: random.Random, contact: Contact) -> str:
    sep = rng.choice((" – ", " - ", ", ", " — ", "\n"))
    return f"{contact.name}{sep}{contact.address}{sep}{contact.phone}"


def _template_values(rng: random.Random, contact: Contact, detected: datetime) -> dict[str, str]:
    return {
        LABELS[0]: _fill(rng, rng.choice(EXPLANATIONS)),
        LABELS[1]: _detected_text(rng, contact, detected),
        LABELS[2]: rng.choice(EVIDENCES),
        LABELS[3]: contact.tenant_name,
        LABELS[4]: rng.choice((contact.country, f"{contact.country} – sede principal")),
        LABELS[5]: _fill(rng, rng.choice(IMPACTS)),
        LABELS[6]: rng.choice(URGENCIES),
        LABELS[7]: rng.choice(PRODUCTS),
        LABELS[8]: rng.choice(SOCIALS),
        LABELS[9]: _contact_line(rng, contact),
    }


def _label_variant(rng: random.Random, label: str) -> str:
    """How people actually type the labels: case, accents and the colon vary."""
    roll = rng.random()
    if roll < 0.65:
        return label
    if roll < 0.75:
        return label.upper()
    if roll < 0.85:
        return _strip_accents(label)
    return label.rstrip(":")


def _strip_accents(text: str) -> str:
    import unicodedata

    return "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    )


def _template_text(rng: random.Random, contact: Contact, fields: dict[str, str]) -> str:
    greeting = rng.choice(
        ("Buenos días,", "Buenas tardes:", "Estimados,", "Hola equipo de soporte,"))
    lines = [greeting, "", "Reportamos el siguiente incidente:", ""]
    for label, value in fields.items():
        shown = _label_variant(rng, label)
        if rng.random() < 0.2 and "\n" not in value:
            lines += [shown, value]  # the value on the next line
        elif label == LABELS[0] and rng.random() < 0.5:
            # A long explanation wraps over several lines.
            words = value.split()
            half = len(words) // 2
            lines += [f"{shown} {' '.join(words[:half])}", " ".join(words[half:])]
        else:
            lines.append(f"{shown} {value}")
        if rng.random() < 0.3:
            lines.append("")
    lines += ["", "Quedamos atentos.", "", "Saludos,", contact.name, contact.tenant_name,
              f"Tel. {contact.phone}"]
    return "\n".join(lines) + "\n"


def _template_html(rng: random.Random, contact: Contact, fields: dict[str, str]) -> str:
    if rng.random() < 0.5:
        # Outlook-style: the template pasted as a table.
        rows = "".join(
            f"<tr><td style=\"font-weight:bold;border:1px solid #999\">{escape(label)}</td>"
            f"<td style=\"border:1px solid #999\">"
            f"{escape(value).replace(chr(10), '<br>')}</td></tr>"
            for label, value in fields.items()
        )
        table = f"<table style=\"border-collapse:collapse\">{rows}</table>"
    else:
        table = "".join(
            f"<p><b>{escape(label)}</b> {escape(value).replace(chr(10), '<br>')}</p>"
            for label, value in fields.items()
        )
    return (
        "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html\"></head>"
        "<body style=\"font-family:Calibri,sans-serif\"><p>Buenos días,</p>"
        "<p>Reportamos el siguiente incidente:</p>"
        f"{table}<p>Saludos,<br>{escape(contact.name)}<br>{escape(contact.tenant_name)}</p>"
        "</body></html>"
    )


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n"))


def _charset(name: str, cte: str) -> email.charset.Charset:
    cs = email.charset.Charset(name)
    cs.body_encoding = {"quoted-printable": email.charset.QP,
                        "8bit": None}.get(cte, email.charset.BASE64)
    cs.header_encoding = email.charset.QP if cte == "quoted-printable" else email.charset.BASE64
    return cs


def _text_part(text: str, subtype: str, charset: str, cte: str) -> MIMEText:
    if charset == "iso-8859-1":
        text = _latin1(text)
    if cte == "base64":
        text = text.replace("\n", "\r\n")  # clients encode the canonical CRLF form
    return MIMEText(text, subtype, _charset=_charset(charset, cte))  # type: ignore[arg-type]


def _body(layout: str, text: str, html: str, charset: str, cte: str) -> MIMEBase:
    if layout == "plain":
        return _text_part(text, "plain", charset, cte)
    if layout == "html":
        return _text_part(html, "html", charset, cte)
    alt = MIMEMultipart("alternative")
    alt.attach(_text_part(text, "plain", charset, cte))
    alt.attach(_text_part(html, "html", charset, cte))
    return alt


def _evidence_attachment(rng: random.Random, size: int, detected: datetime) -> MIMEBase:
    kind = rng.choice(("log", "png", "pdf"))
    if kind == "log":
        lines = []
        total = 0
        t = detected
        while total < size:
            t += timedelta(milliseconds=rng.randint(5, 900))
            line = (f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} "
                    f"{rng.choice(('INFO', 'WARN', 'ERROR'))} [smtp-relay-{rng.randint(1, 9)}] "
                    f"conexión {rng.getrandbits(32):08x}: "
                    f"{rng.choice(('timeout', 'reset', 'ok', '421 4.4.2'))}\n")
            lines.append(line)
            total += len(line)
        payload = "".join(lines).encode()[:size]
        part: MIMEBase = MIMEApplication(payload, "octet-stream")
        part.replace_header("Content-Type", "text/plain; charset=\"utf-8\"")
        name = f"registro_{detected:%Y%m%d}.log"
    elif kind == "png":
        payload = b"\x89PNG\r\n\x1a\n" + rng.randbytes(size - 8)
        part = MIMEApplication(payload, "octet-stream")
        part.replace_header("Content-Type", "image/png")
        name = f"captura_pantalla_{rng.randint(1, 99)}.png"
    else:
        payload = b"%PDF-1.7\n" + rng.randbytes(size - 9)
        part = MIMEApplication(payload, "pdf")
        name = "informe_incidente.pdf"
    part.add_header("Content-Disposition", "attachment", filename=name)
    return part


def _big_attachment(rng: random.Random, message_bytes: int) -> MIMEBase:
    # base64 grows data by 4/3 plus CRLF every 76 characters: size the payload so the
    # whole message comes out just under `message_bytes` (padded up to it afterwards).
    payload_size = int((message_bytes - 64 * 1024) * 3 / 4 * 76 / 78)
    part = MIMENonMultipart("video", "mp4")
    part.set_payload(rng.randbytes(payload_size))
    email.encoders.encode_base64(part)
    part.add_header("Content-Disposition", "attachment", filename="grabacion_falla.mp4")
    return part


def _pad_to(raw: bytes, size: int) -> bytes:
    """Pad a message to exactly `size` bytes with a trailing text part's worth of filler."""
    missing = size - len(raw)
    if missing <= 0:
        return raw
    # The epilogue of the outer multipart is ignored by every reader.
    line = b"-" * 74 + b"\r\n"
    filler = line * (missing // len(line)) + b"-" * (missing % len(line))
    return raw + filler


def _latin1(text: str) -> str:
    """What a Latin-1 client makes of typographic dashes (they are not in Latin-1)."""
    text = text.replace("\u2013", "-").replace("\u2014", "-")
    return text.encode("iso-8859-1", "replace").decode("iso-8859-1")


def _encoded_header(text: str, charset: str) -> str:
    if charset == "iso-8859-1":
        text = _latin1(text)
    try:
        text.encode("ascii")
        return text
    except UnicodeEncodeError:
        return Header(text, charset).encode()


def _format_address(name: str, address: str, charset: str) -> str:
    try:
        name.encode("ascii")
        return email.utils.formataddr((name, address))
    except UnicodeEncodeError:
        return email.utils.formataddr((name, address), charset=charset)


def _headers(
    msg: MIMEBase,
    rng: random.Random,
    *,
    sender: str,
    to: list[str],
    cc: list[str],
    subject: str,
    charset: str,
    message_id: str,
    date: datetime,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
) -> None:
    # Headers in the order clients write them; non-ASCII as RFC 2047 encoded words.
    values: list[tuple[str, str]] = [
        ("From", sender),
        ("To", ", ".join(to)),
    ]
    if cc:
        values.append(("Cc", ", ".join(cc)))
    values += [
        ("Subject", _encoded_header(subject, charset)),
        ("Date", email.utils.format_datetime(date)),
        ("Message-ID", message_id),
    ]
    if in_reply_to:
        values.append(("In-Reply-To", in_reply_to))
    if references:
        values.append(("References", " ".join(references)))
    mailer = rng.choice(MAILERS)
    if mailer:
        values.append(("X-Mailer", mailer))
    values.append(("Content-Language", "es-CO" if "compensar" in sender else "es-NI"))
    for name, value in reversed(values):
        # MIMEBase already carries Content-Type and MIME-Version: put ours before them.
        msg._headers.insert(0, (name, value))  # type: ignore[attr-defined]


def _quote(style: str, ack: Ack, author: Contact) -> tuple[str, str]:
    """The acknowledgement as a reply-all quotes it (Outlook block or Gmail '>')."""
    when = ack.date or email.utils.format_datetime(datetime.now(UTC))
    parsed = email.utils.parsedate_to_datetime(when)
    if style == "outlook":
        head = (
            "________________________________\n"
            f"De: Mesa de Soporte <{DESK_FROM}>\n"
            f"Enviado: {parsed:%d/%m/%Y %H:%M}\n"
            f"Para: {author.name} <{author.address}>\n"
            f"Asunto: {ack.subject}\n\n"
        )
        text = head + ack.text
        html = ("<hr><div><b>De:</b> Mesa de Soporte &lt;" + DESK_FROM + "&gt;<br>"
                f"<b>Enviado:</b> {parsed:%d/%m/%Y %H:%M}<br><b>Asunto:</b> "
                f"{escape(ack.subject)}</div><div>{_paragraphs(ack.text)}</div>")
        return text, html
    wd = WEEKDAYS[parsed.weekday()]
    head = (f"El {wd}, {parsed.day} {MONTHS[parsed.month - 1][:3]} {parsed.year} a las "
            f"{parsed:%H:%M}, Mesa de Soporte (<{DESK_FROM}>) escribió:\n")
    quoted = "\n".join("> " + line if line else ">" for line in ack.text.splitlines())
    html = (f"<div class=\"gmail_quote\">{escape(head)}<blockquote style=\"margin:0 0 0 .8ex;"
            f"border-left:1px #ccc solid;padding-left:1ex\">{_paragraphs(ack.text)}"
            "</blockquote></div>")
    return head + quoted + "\n", html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print sample mails of the bench corpus.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--reply", action="store_true", help="also print a reply to each")
    args = parser.parse_args(argv)
    corpus = Corpus(args.seed)
    for i in range(args.start, args.start + args.count):
        mail = corpus.opening(i)
        sys.stdout.write(f"=== #{i} {mail.shape} complete={mail.complete} "
                         f"{len(mail.raw)} bytes rcpt={mail.rcpt_tos}\n")
        sys.stdout.write(mail.raw.decode("utf-8", "replace")[:6000] + "\n")
        if args.reply:
            reply = corpus.reply(100000 + i, mail, corpus.fake_ack(mail, 1000 + i))
            sys.stdout.write(f"--- reply {reply.shape} rcpt={reply.rcpt_tos}\n")
            sys.stdout.write(reply.raw.decode("utf-8", "replace")[:6000] + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
