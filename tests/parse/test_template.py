"""The opening-template extractor: real fixture mails, label variants, properties."""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path
from zoneinfo import ZoneInfo

import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailbridge.parse.mime import parse_mail
from mailbridge.parse.template import ExtractedFields, FieldSpec, extract_fields

HERE = Path(__file__).resolve().parent
OPENING = HERE.parent / "messages" / "opening"
DEMO_FIELDS = yaml.safe_load((HERE / "demo_fields.yaml").read_text("utf-8"))
SPECS = [FieldSpec(**item) for item in DEMO_FIELDS]
BY_KEY = {spec.key: spec for spec in SPECS}


def extract(text: str, **kwargs: object) -> ExtractedFields:
    return extract_fields(text, SPECS, **kwargs)  # type: ignore[arg-type]


def extract_file(name: str) -> ExtractedFields:
    parsed = parse_mail((OPENING / name).read_bytes())
    return extract(parsed.text)


# --- the demo spec is a contract with rules.yaml ---------------------------------------


def test_demo_fields_have_the_contract_keys_types_and_required_flags() -> None:
    assert [spec.key for spec in SPECS] == [
        "explicacion",
        "fecha_deteccion",
        "evidencias",
        "cliente",
        "pais_region",
        "impacto",
        "justificacion_urgencia",
        "productos",
        "redes_sociales",
        "contacto_lccd",
    ]
    assert [s.key for s in SPECS if not s.required] == ["evidencias", "redes_sociales"]
    assert BY_KEY["fecha_deteccion"].type == "datetime"
    assert BY_KEY["productos"].type == "list"
    assert BY_KEY["contacto_lccd"].type == "contact"
    assert BY_KEY["explicacion"].label == "Explicación detallada del incidente"


@pytest.mark.parametrize(
    "bad",
    [
        {"key": "cliente", "label": "Nombre del Cliente", "typo": True},
        {"key": "cliente", "label": "Nombre del Cliente", "type": "number"},
        {"key": "Cliente Nombre", "label": "Nombre del Cliente"},
        {"key": "cliente", "label": "::"},
        {"key": "cliente", "label": "Nombre", "synonyms": ["--"]},
    ],
)
def test_a_wrong_field_spec_is_refused_when_rules_load(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        FieldSpec(**bad)  # type: ignore[arg-type]


def test_field_spec_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        SPECS[0].label = "otra"  # type: ignore[misc]


# --- real opening mails -------------------------------------------------------------

CONTACT_ANA = {
    "nombre": "Ana María Gómez",
    "correo": "ana@compensar.example",
    "telefono": "+57 300 123 4567",
}
PLAIN_UTF8 = {
    "explicacion": "Desde las 08:00 ningún usuario de Compensar puede enviar correos externos.\n"
    'Outlook muestra el error "550 5.7.1 Relaying denied" al enviar.',
    "fecha_deteccion": "2026-03-12T08:15:00-05:00",
    "evidencias": "Captura del error en el adjunto del ticket anterior.",
    "cliente": "Compensar",
    "pais_region": "Colombia",
    "impacto": "Alto. 300 usuarios sin correo saliente.",
    "justificacion_urgencia": "Gravedad 1, la facturación electrónica depende del correo.",
    "productos": ["Exchange Online", "Microsoft Teams"],
    "redes_sociales": "Ninguna",
    "contacto_lccd": CONTACT_ANA,
}

FIXTURES: list[tuple[str, dict[str, object], list[str], str | None]] = [
    ("plain_utf8_8bit.eml", PLAIN_UTF8, [], "URGENTE"),
    ("crlf_line_endings.eml", PLAIN_UTF8, [], "URGENTE"),
    (
        "quoted_printable_latin1.eml",
        {
            "explicacion": "El portal de autogestión no carga para los\n"
            "agentes de Lima; la página queda en blanco tras iniciar sesión.",
            "fecha_deteccion": "2026-03-03T09:15:00-05:00",
            "cliente": "Rímac Seguros",
            "pais_region": "Perú",
            "productos": ["Portal de Autoatención"],
            "redes_sociales": "WhatsApp, Facebook Messenger",
            "contacto_lccd": {
                "nombre": "José Ñúñez",
                "correo": "jose.nunez@rimac.example",
                "telefono": "(51) 1 635 8614",
            },
        },
        [],
        "MEDIA",
    ),
    (
        "base64_utf8.eml",
        {
            "fecha_deteccion": "2026-03-12T08:00:00-06:00",
            "cliente": "Grupo Bimbo",
            "pais_region": "México",
            "justificacion_urgencia": "Cierre de mes el viernes.",
            "productos": ["Conector CRM", "API de contactos"],
            "contacto_lccd": {
                "nombre": "Luis Hernández",
                "correo": "luis.hernandez@bimbo.example",
                "telefono": "+52 55 1234 5678",
            },
        },
        [],
        None,
    ),
    (
        "html_only_outlook.eml",
        {
            "explicacion": "Los enlaces de descarga de facturas devuelven error 404 desde la "
            "actualización de anoche.",
            "fecha_deteccion": "2026-03-11T22:40:00-03:00",
            "cliente": "Falabella",
            "pais_region": "Chile",
            "impacto": "Clientes finales no pueden descargar facturas.",
            "productos": ["Portal de Facturación", "Almacenamiento de documentos"],
            "contacto_lccd": {
                "nombre": "Carolina Muñoz",
                "correo": "carolina.munoz@falabella.example",
                "telefono": "+56 2 2790 9529",
            },
        },
        [],
        None,
    ),
    (
        "gmail_multipart_alternative.eml",
        {
            "explicacion": "Las llamadas entrantes se cortan a los 30 segundos en la cola de "
            "ventas.",
            "fecha_deteccion": "2026-03-10T16:20:00-05:00",
            "cliente": "Banco Pichincha",
            "pais_region": "Ecuador",
            "productos": ["Contact Center", "IVR", "Grabación de llamadas"],
            "contacto_lccd": {
                "nombre": "María Vera",
                "correo": "maria.vera@pichincha.example",
                "telefono": "0991234567",
            },
        },
        [],
        None,
    ),
    (
        "shuffled_labels_no_accents.eml",
        {
            "explicacion": "El enlace principal no responde al ping desde la medianoche.",
            "fecha_deteccion": "2026-03-12T01:10:00-06:00",
            "cliente": "Claro Nicaragua",
            "pais_region": "Nicaragua",
            "impacto": "Critico, sin atencion en sucursales",
            "justificacion_urgencia": "Caida total de la sede de Managua.\n"
            "Sin servicio para 3 sucursales.",
            "productos": ["Red MPLS"],
            "contacto_lccd": {
                "nombre": "Roberto Castillo",
                "correo": "roberto.castillo@claro-ni.example",
                "telefono": "505 2255 1234",
            },
        },
        [],
        "URGENTE",
    ),
    (
        "missing_fields.eml",
        {
            "explicacion": "No podemos entrar a la consola de administración.",
            "cliente": "Compensar",
        },
        [
            "fecha_deteccion",
            "pais_region",
            "impacto",
            "justificacion_urgencia",
            "productos",
            "contacto_lccd",
        ],
        None,
    ),
    (
        "with_png_and_log_attachments.eml",
        {
            "fecha_deteccion": "2026-03-12T07:58:00-05:00",
            "evidencias": "captura en línea y relay.log adjunto",
            "productos": ["Relay SMTP"],
            "contacto_lccd": {
                "nombre": "Ana Gómez",
                "correo": "ana@compensar.example",
                "telefono": "3001234567",
            },
        },
        [],
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "expected", "missing", "severity"), FIXTURES, ids=[f[0] for f in FIXTURES]
)
def test_opening_mail_fields(
    name: str, expected: dict[str, object], missing: list[str], severity: str | None
) -> None:
    result = extract_file(name)
    for key, value in expected.items():
        assert result.values.get(key) == value, key
    assert result.missing == missing
    assert result.severity == severity
    assert result.invalid == []


def test_a_missing_field_is_neither_in_values_nor_in_raw() -> None:
    result = extract_file("missing_fields.eml")
    # "Producto(s) Involucrado(s):" with nothing after it, and the contact line that
    # only repeats the template hint, count as not filled in.
    assert "productos" not in result.values and "productos" not in result.raw
    assert "contacto_lccd" not in result.values


def test_the_redacted_fixture_still_yields_its_fields() -> None:
    result = extract_file("password_inside.eml")
    assert result.missing == []
    assert result.values["fecha_deteccion"] == "2026-03-12T10:30:00-05:00"


# --- label variants -------------------------------------------------------------------

LABEL_VARIANTS = [
    "Nombre del Cliente: Compensar",
    "NOMBRE DEL CLIENTE: Compensar",
    "nombre del cliente:Compensar",
    "Nombre del Cliente : Compensar",
    "Nombre del Cliente\nCompensar",
    "Nombre del Cliente:\n\n   Compensar",
    "Nombre del Cliente\tCompensar",
    "Nombre del Cliente    Compensar",
    "Nombre del Cliente - Compensar",
    "Nombre del Cliente = Compensar",
    "- Nombre del Cliente: Compensar",
    "• Nombre del Cliente: Compensar",
    "4. Nombre del Cliente: Compensar",
    "**Nombre del Cliente:** Compensar",
    "*Nombre del Cliente*: Compensar",
    "Cliente: Compensar",
    "   Nombre del cliente: Compensar   ",
    "Nombre del Cliente: Compensar\r\n",
]


@pytest.mark.parametrize("text", LABEL_VARIANTS)
def test_label_variants_are_all_found(text: str) -> None:
    result = extract("Buenos días,\n" + text + "\nGracias")
    assert result.values["cliente"] == "Compensar"


@pytest.mark.parametrize(
    "text",
    [
        "Cliente nuevo en la plataforma, sin datos.",
        "El nombre del cliente aparece mal escrito en la factura.",
        "Nombre del Cliente es Compensar",  # prose, not "Label: value"
        "Nos dijo: Nombre del Cliente: Compensar",  # not at the start of a line
    ],
)
def test_prose_that_contains_label_words_is_not_a_label(text: str) -> None:
    assert "cliente" not in extract(text).raw


def test_accent_and_case_insensitive_labels_with_template_hints() -> None:
    text = (
        "FECHA Y HORA DE LA DETECCION DEL INCIDENTE (declarando a que zona o país pertenece "
        "el dato).\n12/03/2026 14:30 hora Colombia\n"
        "pais/region del cliente: Colombia\n"
        "Producto(s) Involucrado(s): Exchange\n"
        "Productos involucrados: Teams\n"
    )
    result = extract(text)
    assert result.values["fecha_deteccion"] == "2026-03-12T14:30:00-05:00"
    assert result.values["pais_region"] == "Colombia"
    # The first value written wins; the repeated label does not overwrite it.
    assert result.values["productos"] == ["Exchange"]


def test_a_value_runs_over_lines_until_the_next_label() -> None:
    text = (
        "Explicación detallada del incidente:\nLínea uno.\n\n\n\nLínea dos.\n"
        "   Línea tres con sangría.\nNombre del Cliente: Compensar\n"
    )
    result = extract(text)
    assert result.values["explicacion"] == "Línea uno.\n\nLínea dos.\nLínea tres con sangría."


@pytest.mark.parametrize(
    "ending",
    [
        "--\nAna",
        "-- \nAna",
        "Saludos,\nAna",
        "Saludos cordiales,\nAna",
        "Atentamente\nAna",
        "Cordialmente,\nAna Gómez",
        "Un saludo.\nAna",
        "Best regards,\nAna",
        "Gracias\nAna",
        "Quedo atenta a sus comentarios.\nAna",
        "Enviado desde mi iPhone",
        "Agradezco de antemano su pronta atención a este caso, por favor.",
        "Quedo a la espera de su respuesta.",
        "AVISO DE CONFIDENCIALIDAD: este mensaje es solo para su destinatario.",
        "Este correo y sus anexos son confidenciales y para uso exclusivo del destinatario.",
        "This e-mail is confidential and intended solely for the addressee.",
        "-----Mensaje original-----\nDe: otro@x.example",
        "El jue, 12 mar 2026 a las 9:00, Soporte <soporte@lynn.example> escribió:\n> hola",
        "On Thu, Mar 12, 2026 at 9:00 AM Soporte <soporte@lynn.example> wrote:\n> hi",
    ],
)
def test_a_value_stops_at_the_signature_or_a_quoted_message(ending: str) -> None:
    text = "Impacto a la Operación del Cliente: 300 usuarios sin correo.\n\n" + ending
    assert extract(text).values["impacto"] == "300 usuarios sin correo."


def test_a_format_hint_after_the_colon_is_not_the_value() -> None:
    text = (
        "Datos de Contacto del LCCD responsable del caso: (Nombre – Correo – Teléfono). "
        "Ana Gómez – ana@compensar.example – 3001234567\n"
        "Evidencias: (ver adjunto)\n"
    )
    result = extract(text)
    assert result.values["contacto_lccd"] == {
        "nombre": "Ana Gómez",
        "correo": "ana@compensar.example",
        "telefono": "3001234567",
    }
    assert result.values["evidencias"] == "(ver adjunto)"


@pytest.mark.parametrize("value", ["", "-", "—", "...", "N/A:", "   ", "*", "?"])
def test_an_empty_or_placeholder_value_counts_as_missing(value: str) -> None:
    result = extract(f"Nombre del Cliente: {value}\nPaís/Región del Cliente: Chile\n")
    if value.strip() == "N/A:":
        assert result.values["cliente"] == "N/A:"  # an answer, even if unhelpful
    else:
        assert "cliente" in result.missing
    assert "pais_region" not in result.missing


def test_missing_lists_required_keys_in_spec_order() -> None:
    result = extract("Nombre del Cliente: Compensar")
    assert result.missing == [
        "explicacion",
        "fecha_deteccion",
        "pais_region",
        "impacto",
        "justificacion_urgencia",
        "productos",
        "contacto_lccd",
    ]
    assert result.values == {"cliente": "Compensar"}


def test_html_table_mail_converted_by_html_to_text() -> None:
    from mailbridge.parse.html import html_to_text

    markup = (
        "<table><tr><td><b>Nombre del Cliente</b></td><td>Compensar</td></tr>"
        "<tr><td>País/Región del Cliente</td><td>Colombia</td></tr></table>"
        "<p><strong>Explicación detallada del incidente:</strong><br>Sin correo.<br>"
        "Desde ayer.</p><p>Saludos</p>"
    )
    result = extract(html_to_text(markup))
    assert result.values["cliente"] == "Compensar"
    assert result.values["pais_region"] == "Colombia"
    assert result.values["explicacion"] == "Sin correo.\nDesde ayer."


# --- detection date and its zone --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The zone is in the value.
        ("Fecha y hora de la detección del incidente: 12/03/2026 14:30 (GMT-3)", "-03:00"),
        # In the label's hint.
        ("Fecha y hora de la detección del incidente (hora Perú): 12/03/2026 14:30", "-05:00"),
        # From the country the client field names.
        (
            "Fecha y hora de la detección del incidente: 12/03/2026 14:30\n"
            "País/Región del Cliente: México",
            "-06:00",
        ),
    ],
)
def test_detection_time_zone_comes_from_value_hint_or_country_field(
    text: str, expected: str
) -> None:
    result = extract(text, default_zone=ZoneInfo("Europe/Madrid"))
    assert result.values["fecha_deteccion"] == "2026-03-12T14:30:00" + expected


def test_detection_time_without_any_zone_uses_the_default_zone_then_utc() -> None:
    text = "Fecha y hora de la detección del incidente: 12/03/2026 14:30"
    madrid = extract(text, default_zone=ZoneInfo("Europe/Madrid"))
    assert madrid.values["fecha_deteccion"] == "2026-03-12T14:30:00+01:00"
    assert extract(text).values["fecha_deteccion"] == "2026-03-12T14:30:00+00:00"


def test_custom_country_zones_extend_the_builtin_table() -> None:
    text = "Fecha y hora de la detección del incidente: 12/03/2026 14:30 hora Islas Galápagos"
    result = extract(text, country_zones={"Islas Galápagos": "Pacific/Galapagos"})
    assert result.values["fecha_deteccion"] == "2026-03-12T14:30:00-06:00"


def test_a_detection_time_without_an_explicit_date_is_invalid_not_missing() -> None:
    result = extract("Fecha y hora de la detección del incidente: ayer en la tarde")
    assert "fecha_deteccion" in result.invalid
    assert "fecha_deteccion" not in result.missing
    assert "fecha_deteccion" not in result.values
    assert result.raw["fecha_deteccion"] == "ayer en la tarde"


def test_the_mail_date_supplies_a_missing_year() -> None:
    from datetime import datetime

    text = "Fecha y hora de la detección del incidente: 3 de marzo, 9:15 hora Colombia"
    sent = datetime(2026, 3, 4, 8, 0, tzinfo=ZoneInfo("America/Bogota"))
    result = extract(text, reference=sent)
    assert result.values["fecha_deteccion"] == "2026-03-03T09:15:00-05:00"


# --- severity ------------------------------------------------------------------------


def test_severity_is_read_anywhere_in_the_text() -> None:
    assert extract("Hola.\nGravedad: Crítica\nNombre del Cliente: X").severity == "URGENTE"
    assert extract("Justificación de la Urgencia: prioridad baja").severity == "BAJA"
    assert extract("La alta dirección pidió revisar el caso.").severity is None


def test_a_severity_field_wins_over_prose() -> None:
    specs = [*SPECS, FieldSpec(key="gravedad", label="Gravedad", type="severity", required=False)]
    result = extract_fields("Gravedad: 3\nImpacto: alto", specs)
    assert result.values["gravedad"] == "BAJA"
    assert result.severity == "BAJA"


# --- robustness and speed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "\x00\x01\x02", "Nombre del Cliente:" * 5000, "(" * 10000, "\n" * 10000, "ñ" * 300_000],
)
def test_odd_input_never_raises(text: str) -> None:
    result = extract(text)
    assert isinstance(result.missing, list)


def test_non_string_input_is_treated_as_empty() -> None:
    result = extract_fields(None, SPECS)  # type: ignore[arg-type]
    assert result.values == {}
    assert "cliente" in result.missing


def test_a_typical_mail_is_extracted_in_well_under_a_millisecond() -> None:
    text = parse_mail((OPENING / "plain_utf8_8bit.eml").read_bytes()).text
    extract(text)  # compile and cache the regex once
    rounds = 300
    start = time.perf_counter()
    for _ in range(rounds):
        extract(text)
    per_message = (time.perf_counter() - start) / rounds
    print(f"extract_fields: {per_message * 1000:.3f} ms per message")
    assert per_message < 0.005  # generous for slow CI; typically ~0.3 ms


# --- properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    result = extract(text)
    assert set(result.missing) <= {spec.key for spec in SPECS if spec.required}
    assert set(result.values) <= set(result.raw)


def _strip_accents(text: str) -> str:
    return "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn"
    )


# Words that cannot form a label, a signature or a quote header.
VALUE_WORDS = st.sampled_from(
    ["servidor", "caído", "usuarios", "error", "enlace", "lento", "sede", "norte", "cola",
     "503", "Bogotá", "VPN", "núcleo", "réplica", "x-42", "ÑANDÚ", "tráfico", "(sin", "datos)"]
)  # fmt: skip
VALUES = st.lists(VALUE_WORDS, min_size=1, max_size=8).map(" ".join)
CASES = st.sampled_from([str, str.upper, str.lower, str.title])


@st.composite
def planted_templates(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    chosen = draw(st.permutations(SPECS))
    chosen = chosen[: draw(st.integers(min_value=1, max_value=len(chosen)))]
    lines = [draw(st.sampled_from(["Buenos días,", "Hola equipo", ""]))]
    planted: dict[str, str] = {}
    for spec in chosen:
        label = draw(st.sampled_from(spec.labels))
        label = draw(CASES)(label)
        if draw(st.booleans()):
            label = _strip_accents(label)
        value = draw(VALUES)
        layout = draw(st.sampled_from(["colon", "colon-next-line", "next-line"]))
        if layout == "colon":
            lines.append(f"{label}: {value}")
        elif layout == "colon-next-line":
            lines.extend([f"{label}:", value])
        else:
            lines.extend([label, value])
        lines.append(draw(st.sampled_from(["", ""])))
        planted[spec.key] = value
    lines.append(draw(st.sampled_from(["Saludos,", "--", "Atentamente", ""])))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return newline.join(lines), planted


@settings(max_examples=400, deadline=None)
@given(planted_templates())
def test_planted_labels_are_always_found_with_their_values(
    template: tuple[str, dict[str, str]],
) -> None:
    text, planted = template
    result = extract(text)
    for key, value in planted.items():
        assert result.raw.get(key) == value, (key, text)
    assert not set(result.missing) & set(planted)
