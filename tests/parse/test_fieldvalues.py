"""Typed field values: detection date and zone, LCCD contact, severity, product lists."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.parse.fieldvalues import (
    detect_severity,
    fold,
    parse_contact,
    parse_detection_datetime,
    split_list,
    zone_for_place,
)

BOGOTA = ZoneInfo("America/Bogota")

# (what the customer wrote, the instant it means as ISO 8601) with default zone Bogotá.
DATES = [
    ("12/03/2026 14:30 hora Colombia", "2026-03-12T14:30:00-05:00"),
    ("3 de marzo de 2026, 9:15 a. m. (GMT-5)", "2026-03-03T09:15:00-05:00"),
    ("2026-03-12 08:00 CDMX", "2026-03-12T08:00:00-06:00"),
    ("2026-03-12T08:00:00-05:00", "2026-03-12T08:00:00-05:00"),
    ("2026-03-12T13:00:00Z", "2026-03-12T13:00:00+00:00"),
    ("12 mar 2026 3:45 pm hora de Perú", "2026-03-12T15:45:00-05:00"),
    ("Mar 12/03/2026 10h30 (UTC-03:00)", "2026-03-12T10:30:00-03:00"),
    ("12.03.26 14:30 America/Santiago", "2026-03-12T14:30:00-03:00"),
    ("martes 3 de marzo del 2026 a las 10 hrs, hora España", "2026-03-03T10:00:00+01:00"),
    ("12/03/2026 9:15 de la noche (CO)", "2026-03-12T21:15:00-05:00"),
    ("12/03/2026 12:30 p. m. Ecuador", "2026-03-12T12:30:00-05:00"),
    ("12/03/2026 12:10 a. m. Ecuador", "2026-03-12T00:10:00-05:00"),
    ("12/03/2026 01:10 Nicaragua", "2026-03-12T01:10:00-06:00"),
    ("12/03/2026 16:00 hora Argentina", "2026-03-12T16:00:00-03:00"),
    ("12-03-2026 16:00 COT", "2026-03-12T16:00:00-05:00"),
    ("(UTC-05:00) Bogotá, Lima, Quito — 12/03/2026 07:05", "2026-03-12T07:05:00-05:00"),
    ("12/03/2026 07:05 UTC+1", "2026-03-12T07:05:00+01:00"),
    ("12/03/2026 07:05 UTC", "2026-03-12T07:05:00+00:00"),
    # Month first when the "month" cannot be one.
    ("03/25/2026 11:00 COT", "2026-03-25T11:00:00-05:00"),
    # No zone: the default zone.
    ("12/03/2026 14:30", "2026-03-12T14:30:00-05:00"),
    ("12 de marzo de 2026", "2026-03-12T00:00:00-05:00"),
    ("March 3, 2026 9:00 AM EST", "2026-03-03T09:00:00-05:00"),
    # Summer time where it applies: Madrid in July.
    ("15/07/2026 10:00 Madrid", "2026-07-15T10:00:00+02:00"),
]


@pytest.mark.parametrize(("raw", "expected"), DATES)
def test_detection_datetime(raw: str, expected: str) -> None:
    found = parse_detection_datetime(raw, BOGOTA, None)
    assert found is not None
    assert found.isoformat() == expected


@pytest.mark.parametrize(
    "raw",
    ["ayer", "hoy a las 10:00", "anoche", "", "el lunes pasado", "31/02/2026 10:00", "14:30"],
)
def test_no_explicit_date_means_none(raw: str) -> None:
    assert parse_detection_datetime(raw, BOGOTA, None) is None


def test_without_default_zone_the_time_is_utc() -> None:
    found = parse_detection_datetime("12/03/2026 14:30", None, None)
    assert found is not None and found.isoformat() == "2026-03-12T14:30:00+00:00"


def test_country_zones_add_places() -> None:
    found = parse_detection_datetime(
        "12/03/2026 14:30 hora Galápagos", BOGOTA, {"galapagos": "Pacific/Galapagos"}
    )
    assert found is not None and found.utcoffset().total_seconds() == -6 * 3600  # type: ignore[union-attr]


def test_a_day_and_month_take_the_year_of_the_reference() -> None:
    sent_in_january = datetime(2026, 1, 5, tzinfo=BOGOTA)
    found = parse_detection_datetime(
        "28 de diciembre 10:00", BOGOTA, None, reference=sent_in_january
    )
    assert found is not None and found.isoformat() == "2025-12-28T10:00:00-05:00"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_detection_datetime_never_raises_and_is_aware(raw: str) -> None:
    found = parse_detection_datetime(raw, BOGOTA, {"x": "Not/AZone"})
    assert found is None or found.tzinfo is not None


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("Colombia", "America/Bogota"),
        ("PERÚ", "America/Lima"),
        ("México", "America/Mexico_City"),
        ("Ciudad de México", "America/Mexico_City"),
        ("Costa Rica", "America/Costa_Rica"),
        ("España – Madrid", "Europe/Madrid"),
        ("Otro", None),
        ("Escocia", None),
    ],
)
def test_zone_for_place(text: str, zone: str | None) -> None:
    found = zone_for_place(text)
    assert (str(found) if found else None) == zone


# --- contact ------------------------------------------------------------------------

CONTACTS = [
    (
        "Ana Gómez – ana@compensar.example – +57 300 123 4567",
        ("Ana Gómez", "ana@compensar.example", "+57 300 123 4567"),
    ),
    (
        "Ana Gómez — ana@compensar.example — 3001234567",
        ("Ana Gómez", "ana@compensar.example", "3001234567"),
    ),
    (
        "Juan Pérez - juan.perez@lccd.example - 300 123 4567",
        ("Juan Pérez", "juan.perez@lccd.example", "300 123 4567"),
    ),
    (
        "Juan Pérez, Juan.Perez@LCCD.example, 3001234567 ext. 12",
        ("Juan Pérez", "juan.perez@lccd.example", "3001234567 ext. 12"),
    ),
    (
        "Juan Pérez / juan.perez@lccd.example / 300-123-4567",
        ("Juan Pérez", "juan.perez@lccd.example", "300-123-4567"),
    ),
    (
        "Luis Hernández\nluis@bimbo.example\nTel: +52 55 1234 5678",
        ("Luis Hernández", "luis@bimbo.example", "+52 55 1234 5678"),
    ),
    (
        "Tel: (57) 601 555 1234\nCorreo: <mailto:ana@x.example>\nNombre: Ana María Gómez",
        ("Ana María Gómez", "ana@x.example", "(57) 601 555 1234"),
    ),
    (
        "María Vera / maria.vera@pichincha.example <mailto:maria.vera@pichincha.example> / 0991234567",
        ("María Vera", "maria.vera@pichincha.example", "0991234567"),
    ),
    ("ana@compensar.example", (None, "ana@compensar.example", None)),
    ("Ana Gómez", ("Ana Gómez", None, None)),
    ("Ana Gómez – 3001234567", ("Ana Gómez", None, "3001234567")),
    ("", (None, None, None)),
]


@pytest.mark.parametrize(("raw", "expected"), CONTACTS)
def test_parse_contact(raw: str, expected: tuple[str | None, str | None, str | None]) -> None:
    nombre, correo, telefono = expected
    assert parse_contact(raw) == {"nombre": nombre, "correo": correo, "telefono": telefono}


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_contact_never_raises(raw: str) -> None:
    assert set(parse_contact(raw)) == {"nombre", "correo", "telefono"}


# --- severity ---------------------------------------------------------------------------

SEVERITIES = [
    ("Gravedad: Crítica", "URGENTE"),
    ("gravedad 1", "URGENTE"),
    ("Incidente de gravedad 1: servicio caído", "URGENTE"),
    ("Prioridad: P1", "URGENTE"),
    ("P1 - caída total", "URGENTE"),
    ("URGENTE: no hay correo", "URGENTE"),
    ("Urgencia: crítica", "URGENTE"),
    ("Es de máxima prioridad", "URGENTE"),
    ("Prioridad: Alta", "ALTA"),
    ("prioridad alta, por favor", "ALTA"),
    ("Es de alta prioridad", "ALTA"),
    ("Severidad: High", "ALTA"),
    ("P2", "ALTA"),
    ("Gravedad: Moderada", "MEDIA"),
    ("Prioridad del caso: Media", "MEDIA"),
    ("gravedad 2", "MEDIA"),
    ("Nivel de urgencia: medio", "MEDIA"),
    ("Gravedad: Mínima", "BAJA"),
    ("gravedad 3", "BAJA"),
    ("Prioridad: baja", "BAJA"),
    ("Prioridad del caso (según tabla): Baja", "BAJA"),
    ("Impacto a la Operación del Cliente: Crítico, sin atención", "URGENTE"),
    ("Impacto: alto", "ALTA"),
    # A stated priority wins over an impact word written before it.
    ("Impacto: alto\nPrioridad: baja", "BAJA"),
]


@pytest.mark.parametrize(("text", "level"), SEVERITIES)
def test_detect_severity(text: str, level: str) -> None:
    assert detect_severity(text) == level


@pytest.mark.parametrize(
    "text",
    [
        "La alta dirección pidió revisar el caso.",
        "Tenemos una media de 30 llamadas por hora.",
        "Dimos de baja al usuario anterior.",
        "Lo escalamos al soporte de nivel 3.",
        "Es urgente que nos llamen.",  # prose: only URGENTE in capitals counts
        "Tenemos 3 sedes y 2 centros de datos.",
        "Altamente disponible, sin cambios.",
        "X-Priority: 3\nImportance: normal",  # quoted headers of a bounced mail
        "",
    ],
)
def test_prose_is_not_a_severity(text: str) -> None:
    assert detect_severity(text) is None


# --- lists ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "items"),
    [
        ("Exchange Online, Microsoft Teams", ["Exchange Online", "Microsoft Teams"]),
        (
            "Contact Center, IVR y Grabación de llamadas",
            ["Contact Center", "IVR", "Grabación de llamadas"],
        ),
        ("- Conector CRM\n- API de contactos", ["Conector CRM", "API de contactos"]),
        ("1. Portal\n2) App móvil\n• Correo", ["Portal", "App móvil", "Correo"]),
        ("Portal de Facturación; Almacenamiento", ["Portal de Facturación", "Almacenamiento"]),
        (
            "Microsoft 365 (Exchange, Teams y SharePoint)",
            ["Microsoft 365 (Exchange, Teams y SharePoint)"],
        ),
        ("Teams, teams, TEAMS", ["Teams"]),
        ("Red MPLS.", ["Red MPLS"]),
        ("", []),
    ],
)
def test_split_list(raw: str, items: list[str]) -> None:
    assert split_list(raw) == items


def test_fold_keeps_positions() -> None:
    text = "País/Región ÑANDÚ İstanbul ß\u00a0x"
    assert len(fold(text)) == len(text)
    assert fold("País/Región ÑANDÚ") == "pais/region nandu"
