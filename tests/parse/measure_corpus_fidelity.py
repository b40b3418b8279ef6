"""Figures over the shared corpus: undecoded ISO-2022 text, lost senders, the two parse paths.

Run: `.venv/bin/python -m tests.parse.measure_corpus_fidelity` (MAILBRIDGE_CORPUS overrides
the corpus path). Prints counts and the files behind them; stores nothing.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import sys
from unittest import mock

import mailbridge.parse.mime as mime
from tests.parse.test_corpus_parse import CORPUS, FILES


def _seen(mail: mime.ParsedMail) -> tuple[object, ...]:
    return (mail.message_id, mail.in_reply_to, mail.references, mail.subject, mail.from_addr,
            mail.from_name, mail.to, mail.cc, mail.reply_to, mail.date, mail.text, mail.html,
            [(a.filename, a.content_type, a.payload, a.inline, a.content_id)
             for a in mail.attachments], mail.defects)


def main() -> int:
    if not FILES:
        print(f"shared corpus not found at {CORPUS} (set MAILBRIDGE_CORPUS)")
        return 1
    escapes: list[str] = []
    replaced: list[str] = []
    lost: list[str] = []
    differ: list[str] = []
    plain = 0
    for path in FILES:
        raw = path.read_bytes()
        name = str(path.relative_to(CORPUS))
        mail = mime.parse_mail(raw)
        if any("\x1b" in v for v in (mail.text, mail.html or "", mail.subject, mail.from_name)):
            escapes.append(name)
        if "\ufffd" in mail.text:
            replaced.append(name)
        header = mail.header("From")
        if "@" in header and "@" not in mail.from_addr:
            lost.append(f"{name}: {header[:80]!r}")
        with contextlib.suppress(Exception):  # the full path reads it; nothing to count
            message = email.message_from_bytes(raw, policy=email.policy.compat32)
            plain += mime._parse_plain(message) is not None
        with mock.patch.object(mime, "_parse_plain", lambda message, decoded=None: None), \
                mock.patch.object(mime, "_parse_large", lambda raw: None):
            if _seen(mime.parse_mail(raw)) != _seen(mail):
                differ.append(name)
    for title, names in (("ISO-2022 escape sequences left in text/subject/name", escapes),
                         ("replacement characters in the text", replaced),
                         ("an address in From but no sender", lost),
                         ("plain and mail-parser readings differ", differ)):
        print(f"{title}: {len(names)}")
        for item in names:
            print(f"    {item}")
    print(f"{len(FILES)} corpus files, {plain} read by the plain path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
