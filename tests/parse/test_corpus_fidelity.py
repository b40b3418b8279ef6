"""On the shared corpus of real mail: no undecoded ISO-2022 text, and no mail without its sender."""

from __future__ import annotations

import pytest

from mailbridge.parse.mime import parse_mail
from tests.parse.test_corpus_parse import CORPUS, FILES, needs_corpus

pytestmark = pytest.mark.corpus
OLE = b"\xd0\xcf\x11\xe0"  # a binary Outlook .msg, not RFC 5322 mail


def corpus_mail(relative: str) -> bytes:
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"{relative} is not in the corpus at {CORPUS} (set MAILBRIDGE_CORPUS)")
    return path.read_bytes()


@needs_corpus
def test_no_corpus_mail_keeps_iso2022_escapes_or_loses_its_sender() -> None:
    escapes: list[str] = []
    lost: list[str] = []
    for path in FILES:
        raw = path.read_bytes()
        if raw.startswith(OLE):
            continue
        mail = parse_mail(raw)
        name = str(path.relative_to(CORPUS))
        if any("\x1b" in value for value in (mail.text, mail.html or "", mail.subject,
                                               mail.from_name)):
            escapes.append(name)
        header = mail.header("From")
        if "@" in header and "@" not in mail.from_addr:
            lost.append(f"{name}: {header!r}")
    print(f"corpus: {len(FILES)} files, {len(escapes)} with ISO-2022 escapes left, "
          f"{len(lost)} with an address in From but no sender")
    assert escapes == []
    assert lost == []


@pytest.mark.parametrize(
    ("relative", "phrase"),
    [
        ("ruby-mail/multi_charset/japanese_iso_2022.eml", "すみません。"),
        ("ruby-mail/multi_charset/japanese_shift_jis.eml", "このメールはテスト用のメールです。"),
        ("ruby-mail/multi_charset/ks_c_5601-1987.eml", "스티해"),
        # ISO-2022-JP bounces (7bit, the case mail-parser left as escape sequences).
        ("sisimai/set-of-emails/maildir/bsd/lhost-mfilter-01.eml",
         "このメールは「m-FILTER」が自動的に生成して送信しています。"),
        ("sisimai/set-of-emails/maildir/bsd/lhost-sendmail-14.eml", "2009年4月28日"),
        # EUC-JP labelled ISO-2022-JP.
        ("sisimai/set-of-emails/maildir/bsd/lhost-ezweb-02.eml",
         "次のあて先へのメッセージはエラーのため送信できませんでした。"),
        # GB2312 label over GBK text, body and subject.
        ("mailparser/mail_test_9", "我把镜头拉近些"),
    ],
)
def test_cjk_corpus_mail_comes_out_as_written(relative: str, phrase: str) -> None:
    mail = parse_mail(corpus_mail(relative))
    assert phrase in mail.text
    assert "\x1b" not in mail.text and "\ufffd" not in mail.text


def test_gbk_subject_of_a_corpus_mail() -> None:
    mail = parse_mail(corpus_mail("mailparser/mail_test_9"))
    assert mail.subject.startswith("我把镜头拉近些")


@pytest.mark.parametrize(
    ("relative", "sender"),
    [
        ("ruby-mail/plain_emails/mix_caps_content_type.eml", ("Big Bug", "bb@bug.com")),
        ("ruby-mail/plain_emails/raw_email_multiple_from.eml", ("", "tim@powerupdev.com")),
    ],
)
def test_corpus_mail_with_a_broken_from_keeps_its_sender(
    relative: str, sender: tuple[str, str]
) -> None:
    mail = parse_mail(corpus_mail(relative))
    assert (mail.from_name, mail.from_addr) == sender

