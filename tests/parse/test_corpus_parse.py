"""Every mail of the shared corpus (other projects' real test mail) parses without an exception."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from mailbridge.parse.encryption import is_encrypted
from mailbridge.parse.mime import parse_mail
from mailbridge.parse.secrets import redact_secrets
from mailbridge.parse.template import FieldSpec, extract_fields
from tests.support.corpus import corpus_dir

pytestmark = pytest.mark.corpus

REPO = Path(__file__).resolve().parents[2]
CORPUS = corpus_dir()
SPECS = [
    FieldSpec(**item)
    for item in yaml.safe_load((Path(__file__).parent / "demo_fields.yaml").read_text("utf-8"))
]
# Notes and expectations that sit next to the mails, not mail themselves.
NOT_MAIL = {".md", ".json", ".tsv", ".rb", ".py", ".gitattributes"}


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(
        path
        for path in CORPUS.rglob("*")
        if path.is_file()
        and path.suffix not in NOT_MAIL
        and not path.name.startswith(("LICENSE", "."))
    )


FILES = corpus_files()
needs_corpus = pytest.mark.skipif(
    not FILES, reason=f"shared corpus not found at {CORPUS} (set MAILBRIDGE_CORPUS)"
)


@needs_corpus
@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_corpus_mail_goes_through_the_parse_stages(path: Path) -> None:
    mail = parse_mail(path.read_bytes())
    fields = extract_fields(mail.text, SPECS)
    stored, kinds = redact_secrets(mail.text)
    encrypted = is_encrypted(mail.message)
    assert isinstance(mail.text, str) and isinstance(stored, str)
    assert (stored == mail.text) == (not kinds)
    assert set(fields.missing) <= {spec.key for spec in SPECS}
    assert isinstance(encrypted, bool)
    for attachment in mail.attachments:
        assert attachment.filename and "/" not in attachment.filename
        assert len(attachment.filename.encode("utf-8")) <= 255


@needs_corpus
def test_the_whole_corpus_parses_quickly() -> None:
    start = time.perf_counter()
    failures: list[str] = []
    for path in FILES:
        try:
            mail = parse_mail(path.read_bytes())
            extract_fields(mail.text, SPECS)
            redact_secrets(mail.text)
            is_encrypted(mail.message)
        except Exception as exc:  # the per-file test names the culprit
            failures.append(f"{path.relative_to(CORPUS)}: {exc!r}")
    elapsed = time.perf_counter() - start
    print(f"corpus: {len(FILES) - len(failures)}/{len(FILES)} parsed in {elapsed:.2f} s")
    assert failures == []
    assert elapsed / len(FILES) < 0.05


@needs_corpus
def test_html_only_corpus_mail_gets_text_from_its_html() -> None:
    path = CORPUS / "imap-to-webhook" / "html_only.eml"
    if not path.exists():
        pytest.skip(f"{path} is not in this corpus")
    mail = parse_mail(path.read_bytes())
    assert mail.html and mail.text.strip()
    assert "<" not in mail.text and "&nbsp;" not in mail.text
