"""Every mail of the shared corpus goes through intake and the pipeline without a crash."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from mailbridge.pipeline import Pipeline
from mailbridge.spool import new_inbound, store_inbound
from tests.support.corpus import corpus_dir


def _corpus_files() -> list[Path]:
    root = corpus_dir()
    if not root.is_dir():
        return []
    skip = {"README.md", "LICENSE", "PROVENANCE.tsv"}
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name not in skip and p.suffix not in (".json", ".md", ".tsv", ".rb", ".txt_expected")
        and "expectations" not in p.parts[-2]
    )


@pytest.mark.corpus
def test_whole_corpus_is_stored_and_processed_without_quarantine(db, settings, rules) -> None:
    files = _corpus_files()
    if not files:
        pytest.skip(f"shared corpus not found at {corpus_dir()} (set MAILBRIDGE_CORPUS)")
    pipeline = Pipeline(db, settings, lambda: rules)
    outcomes: collections.Counter[str] = collections.Counter()
    quarantined: list[str] = []
    started = time.perf_counter()
    for path in files:
        raw = path.read_bytes()
        (inbound_id,) = store_inbound(db, [new_inbound(raw, channel="pipe", source=str(path),
                                                       rcpt_tos=["soporte-b@mesa.example"])])
        result = pipeline.process(inbound_id)
        assert result is not None
        outcomes[result.outcome.split(":")[0]] += 1
        if result.outcome == "quarantined":
            quarantined.append(str(path.relative_to(corpus_dir())))
    elapsed = time.perf_counter() - started
    print(f"{len(files)} corpus mails in {elapsed:.1f} s "
          f"({elapsed / len(files) * 1000:.1f} ms each): {dict(outcomes)}")
    assert quarantined == []
    assert sum(outcomes.values()) == len(files)


@pytest.mark.corpus
def test_ingest_command_exits_zero_on_broken_corpus_mail(make_daemon) -> None:
    root = corpus_dir()
    if not root.is_dir():
        pytest.skip(f"shared corpus not found at {root} (set MAILBRIDGE_CORPUS)")
    daemon = make_daemon()
    for name in ("ruby-mail/rfc2822/example13", "mailparser/mail_outlook_1",
                 "sisimai/set-of-emails/mailbox/mac-01.eml"):
        path = root / name
        if not path.exists():
            candidates = sorted(root.glob(f"{name.split('/')[0]}/**/*"))
            path = next(p for p in candidates if p.is_file())
        result = daemon.cli("ingest", str(path), "--json", check=False)
        assert result.returncode == 0, (name, result.stderr)
