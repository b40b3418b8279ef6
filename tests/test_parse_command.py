"""`mailbridge parse FILE --json`: what ops read to answer "why did this mail do that?"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPENING = REPO / "tests" / "messages" / "opening"


def _parse(path: Path, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    env = {"MAILBRIDGE_RULES": str(REPO / "rules.yaml"), "MAILBRIDGE_DATA_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "mailbridge", "parse", str(path), "--json"],
                            env=env, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_parse_reports_what_would_be_read_and_stores_nothing(tmp_path) -> None:
    report = _parse(OPENING / "missing_fields.eml", tmp_path)
    for key in ("from", "from_name", "to", "cc", "subject", "body", "attachments",
                "classification", "tenant_id", "fields", "missing_fields", "defects"):
        assert key in report, key
    assert report["from"] == "paula.rios@compensar.example"
    assert report["classification"] == "normal"
    assert report["tenant_id"] == "TEN-1001"
    assert report["fields"]["cliente"] == "Compensar"
    assert "fecha_deteccion" in report["missing_fields"]
    assert not (tmp_path / "mailbridge.db").exists()  # nothing stored


def test_parse_lists_attachments_and_redacts_secrets(tmp_path) -> None:
    report = _parse(OPENING / "with_png_and_log_attachments.eml", tmp_path)
    assert [a["content_type"] for a in report["attachments"]]
    assert all(a["size"] > 0 and a["filename"] for a in report["attachments"])
    secret = _parse(OPENING / "password_inside.eml", tmp_path)
    assert "[REDACTADO]" in secret["body"] and secret["secrets_redacted"]


def test_parse_of_an_auto_reply(tmp_path) -> None:
    report = _parse(REPO / "tests" / "messages" / "auto" / "exchange_out_of_office_es.eml", tmp_path)
    assert report["classification"] == "auto-reply"
