"""The board in a real browser (issue 18.4): Debian's headless Chromium driven by Selenium
against the real daemon. Login with a token, the queues with their SLA clocks by colour,
a case with its thread, changes and an answer through the forms (CSRF-protected), the
quarantine, the chart, logout; a read-only token sees and never writes. A screenshot of
the case page is looked at: the case number drawn as the browser draws that text, and
the page's own colours."""

from __future__ import annotations

import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, opening_mail
from tests.support.faults import quarantine_one
from tests.support.png import colours, decode
from tests.support.sink import SmtpSink

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed "
           "(scripts/install-test-deps.sh installs them)")
ANA = "ana@compensar.example"
RED = (198, 40, 40)  # .sla-vencido
GREEN = (46, 125, 50)  # .sla-a_tiempo
NAVY = (31, 58, 95)  # the case number and the header


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1280,1400", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def relay() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def login(driver, daemon: Daemon, token: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.get(f"http://127.0.0.1:{daemon.http_port}/entrar")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "entrar").click()


def wait_url(driver, url: str) -> None:  # type: ignore[no-untyped-def]
    """A click that navigates returns before the next page is there: wait for it."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(expected_conditions.url_to_be(url))


def wait_text(driver, element_id: str, text: str) -> None:  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    # Right after a click the old page may still be there, and be torn down while its
    # element is read ("Node with given id does not belong to the document"): poll on.
    WebDriverWait(driver, 15, ignored_exceptions=(WebDriverException,)).until(
        expected_conditions.text_to_be_present_in_element((By.ID, element_id), text))


def post_form(daemon: Daemon, path: str, fields: dict[str, str], cookie: str) -> tuple[int, str]:
    """A form POST outside the browser (as another site's page would make one)."""
    from urllib.parse import urlencode

    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.http_port}{path}", data=urlencode(fields).encode(),
        method="POST", headers={"Cookie": f"mb_session={cookie}",
                                "Content-Type": "application/x-www-form-urlencoded"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def element_pixels(element) -> tuple[int, int, list[bytes]]:  # type: ignore[no-untyped-def]
    return decode(element.screenshot_as_png)


def test_the_desk_works_its_cases_on_the_board(make_daemon, relay, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    daemon = make_daemon(relay_port=relay.port)
    quarantined = quarantine_one(daemon, subject="TEN-1001 Correo que falló")
    daemon.start()
    writer = daemon.cli("api-token", "create", "ana-mesa").stdout.decode().strip()
    reader = daemon.cli("api-token", "create", "gerencia", "--read-only").stdout.decode().strip()
    daemon.send(opening_mail())
    daemon.send(opening_mail(sender="maria@lafise.example", to="soporte-b@mesa.example",
                             subject="TEN-2002 Reportes lentos"))
    daemon.settle()
    # Case 2's clock ran out: its due time moved into the past (the clock, not the code).
    daemon.query("UPDATE tickets SET response_due_at = created_at, response_at_risk_at = "
                 "created_at WHERE number = 2")
    base = f"http://127.0.0.1:{daemon.http_port}"

    driver.get(base + "/")
    assert driver.current_url == base + "/entrar"
    login(driver, daemon, "mbt_not-a-token")
    wait_text(driver, "problem", "Ese token no es válido.")
    login(driver, daemon, writer)
    wait_url(driver, base + "/")
    cookie = driver.get_cookie("mb_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # The queues, each open case with its clock by colour.
    row1 = driver.find_element(By.CSS_SELECTOR, "#cola-critica #caso-1")
    row2 = driver.find_element(By.CSS_SELECTOR, "#cola-moderada #caso-2")
    badge1 = row1.find_element(By.CSS_SELECTOR, ".sla")
    badge2 = row2.find_element(By.CSS_SELECTOR, ".sla")
    assert (badge1.text, badge2.text) == ("A tiempo", "Vencido")
    assert badge1.value_of_css_property("background-color") == f"rgba{(*GREEN, 1)}"
    assert badge2.value_of_css_property("background-color") == f"rgba{(*RED, 1)}"
    assert "TEN-2002 Reportes lentos" in row2.text
    # The chart: 24 intervals of 15 minutes, the mails received in the last one.
    bars = driver.find_elements(By.CSS_SELECTOR, "#chart svg rect[width]")
    assert len(bars) == 25  # the background and one bar per interval
    summary = driver.find_element(By.CSS_SELECTOR, "#chart p").text
    assert "3 correos recibidos en las últimas 6 horas" in summary, summary
    assert re.search(r"acuse de recibo más lento: \d+\.\d s", summary), summary
    assert len(driver.find_elements(By.CSS_SELECTOR, "#chart svg circle")) >= 1
    driver.save_screenshot(str(tmp_path / "colas.png"))  # kept beside the test's files

    # The case page: its number, as the browser draws "Caso 1" (and not "Caso 7").
    row1.find_element(By.LINK_TEXT, "1").click()
    wait_url(driver, base + "/casos/1")
    number = driver.find_element(By.ID, "case-number")
    assert number.text == "Caso 1"
    shot = element_pixels(number)
    driver.execute_script("arguments[0].textContent = 'Caso 7'", number)
    assert element_pixels(number)[2] != shot[2], "the screenshot does not show the number"
    driver.execute_script("arguments[0].textContent = 'Caso 1'", number)
    assert element_pixels(number) == shot
    page = driver.get_screenshot_as_png()
    (tmp_path / "caso-1.png").write_bytes(page)
    width, height, rows = decode(page)
    seen = colours(rows)
    assert (width, height) == (1280, 1400) or width >= 800
    assert seen.get(NAVY, 0) > 500 and seen.get(GREEN, 0) > 50, sorted(
        seen.items(), key=lambda kv: -kv[1])[:8]
    assert len(seen) > 30
    assert "Explicación detallada del incidente" in driver.find_element(
        By.CSS_SELECTOR, ".message.customer").text

    # A change through the form (the staff commands' rules), recorded with the token.
    Select(driver.find_element(By.ID, "new-status")).select_by_value("en_progreso")
    driver.find_element(By.ID, "apply-change").click()
    wait_text(driver, "notice", "Estado cambiado")
    assert "Estado cambiado de «abierto» a «en_progreso»." in driver.find_element(
        By.ID, "notice").text
    assert driver.find_element(By.ID, "status").text == "en_progreso"
    events = daemon.wait_ticket(1)["events"]
    assert {"from": "abierto", "to": "en_progreso", "by": "board:ana-mesa"} in [
        e["data"] for e in events if e["kind"] == "status"]
    # An answer through the form reaches the customer.
    driver.find_element(By.ID, "reply-author").send_keys("carlos@mesa.example")
    driver.find_element(By.ID, "reply-name").send_keys("Carlos Ruiz")
    driver.find_element(By.ID, "reply-body").send_keys("Hola Ana, el servicio ya se restableció.")
    driver.find_element(By.ID, "send-reply").click()
    wait_text(driver, "notice", "Respuesta")
    assert driver.find_element(By.ID, "notice").text == "Respuesta enviada al cliente."
    deadline = time.monotonic() + 15
    while not any(ANA in r.rcpt_tos and "ya se restableció" in r.message.get_body(
            ("plain",)).get_content() for r in relay.received):
        assert time.monotonic() < deadline, "the answer never reached the customer"
        time.sleep(0.05)
    assert driver.find_element(By.ID, "owner").text == "carlos@mesa.example"

    # Forms without the session's CSRF token are refused and change nothing.
    session = driver.get_cookie("mb_session")["value"]
    for fields in ({"action": "cambiar", "status": "cerrado"},
                   {"action": "cambiar", "status": "cerrado", "csrf": "0" * 64}):
        status, page = post_form(daemon, "/casos/1", fields, session)
        assert status == 403 and "vuelva a cargar la página" in page
    assert daemon.wait_ticket(1)["status"] == "en_progreso"

    # The quarantine, and a replay from it.
    driver.find_element(By.LINK_TEXT, "Cuarentena").click()
    wait_url(driver, base + "/cuarentena")
    row = driver.find_element(By.ID, f"correo-{quarantined}")
    assert "RuntimeError: boom in a stage" in row.text
    row.find_element(By.TAG_NAME, "button").click()
    wait_text(driver, "notice", "reprocesado")
    assert f"Correo {quarantined} reprocesado: ticket (caso 3)." == driver.find_element(
        By.ID, "notice").text

    # Logout ends the session: the old cookie opens nothing.
    driver.find_element(By.CSS_SELECTOR, "header form button").click()
    wait_url(driver, base + "/entrar")
    status, _page = post_form(daemon, "/casos/1", {"action": "cambiar", "status": "cerrado"},
                              session)
    assert status == 303

    # A read-only token sees the board and its cases, without forms, and may not write.
    login(driver, daemon, reader)
    wait_url(driver, base + "/")
    driver.get(base + "/casos/2")
    assert driver.find_element(By.ID, "case-number").text == "Caso 2"
    assert "gerencia (solo lectura)" in driver.find_element(By.TAG_NAME, "header").text
    assert driver.find_elements(By.ID, "change") == []
    assert driver.find_elements(By.ID, "reply") == []
    from mailbridge.tokens import csrf_token

    session = driver.get_cookie("mb_session")["value"]
    status, page = post_form(daemon, "/casos/2", {"action": "cambiar", "status": "cerrado",
                                                  "csrf": csrf_token(session)}, session)
    assert status == 403 and "solo lectura" in page
    assert daemon.wait_ticket(2)["status"] == "abierto"
