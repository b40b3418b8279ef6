"""Every charset a mail may carry comes out as the text that was written, in both parse paths."""

from __future__ import annotations

import base64
import codecs
import encodings.aliases
import inspect
from pathlib import Path

import pytest

import mailbridge.parse.mime as mime
from mailbridge.parse.charsets import (
    _decode_iso2022jp_windows,
    codec_name,
    decode_text,
    reencode_words,
)

MESSAGES = Path(__file__).resolve().parent.parent / "messages"
CHARSETS = MESSAGES / "charsets"
JA = "メールサーバーに接続できません。\n至急、確認をお願いいたします。"


def both_paths(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[mime.ParsedMail, ...]:
    """The mail as parse_mail reads it, and as the mail-parser path alone reads it."""
    fast = mime.parse_mail(raw)
    with monkeypatch.context() as patched:
        patched.setattr(mime, "_parse_plain", lambda message, decoded=None: None)
        slow = mime.parse_mail(raw)
    return fast, slow


# file → (subject, a phrase of the text that must be there)
FIXTURES = {
    "iso2022jp_7bit_body.eml": ("TEN-1001 メール障害のお知らせ",
                                "Explicacion detallada del incidente: " + JA),
    "iso2022jp_outlook_nec_and_halfwidth_kana.eml": (
        "TEN-1001 ①送信エラー",
        "①送信エラー\u3000②受信の遅延\n㈱高橋商事（髙橋様）の全ユーザーです。\nｼｽﾃﾑ部より"),
    "iso2022jp_labelled_us_ascii.eml": ("TEN-1001 Consulta", JA),
    "iso2022jp_without_charset.eml": ("TEN-1001 Consulta", JA),
    "iso2022jp_quoted_printable_cp50220_alias.eml": ("TEN-1001 Consulta", "①" + JA),
    "shift_jis_8bit_with_windows_characters.eml": ("TEN-1001 Consulta",
                                                   "ご担当者様\n①メールが届きません。髙橋"),
    "windows_31j_alias_base64.eml": ("TEN-1001 障害", JA),
    "shift_jis_without_charset_subject_names_it.eml": ("TEN-1001 メール障害", JA),
    "euc_jp_quoted_printable.eml": ("TEN-1001 Consulta", JA),
    "euc_jp_labelled_iso2022jp.eml": ("TEN-1001 Consulta", JA),
    "shift_jis_html_meta_charset_only.eml": ("TEN-1001 Consulta", JA),
    "iso2022kr.eml": ("TEN-1001 Consulta", "메일 서버에 접속할 수 없습니다."),
    "ks_c_5601_1987_uhc_characters.eml": ("TEN-1001 Consulta",
                                          "똠방각하 메일 서버에 접속할 수 없습니다."),
    "gb2312_holding_gbk_characters.eml": ("TEN-1001 邮件故障", "镕无法连接邮件服务器，请尽快处理。"),
    "big5.eml": ("TEN-1001 Consulta", "無法連接郵件伺服器，請盡快處理。"),
    "koi8_r.eml": ("TEN-1001 Consulta", "Не работает почтовый сервер."),
    "utf7.eml": ("TEN-1001 Consulta", "Caída del servicio: " + JA),
    "utf8_labelled_iso_8859_1.eml": ("TEN-1001 Consulta", "Explicación: la conexión se cayó."),
    "windows_1252_labelled_iso_8859_1.eml": ("TEN-1001 Consulta", "Explicación: “urgente” – 5 €."),
}


def test_every_charset_fixture_is_listed() -> None:
    assert {p.name for p in CHARSETS.glob("*.eml")} == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_text_comes_out_as_written_in_both_paths(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject, phrase = FIXTURES[name]
    for mail in both_paths((CHARSETS / name).read_bytes(), monkeypatch):
        assert mail.subject == subject
        assert phrase in mail.text
        assert "\x1b" not in mail.text and "\ufffd" not in mail.text
        assert mail.from_addr == "ana@compensar.example"


def test_japanese_sender_name_in_iso2022jp_is_decoded() -> None:
    mail = mime.parse_mail((CHARSETS / "iso2022jp_7bit_body.eml").read_bytes())
    assert mail.from_name == "田中 花子"


def test_the_reading_is_reported_when_it_is_not_the_declared_charset() -> None:
    mail = mime.parse_mail((CHARSETS / "iso2022jp_labelled_us_ascii.eml").read_bytes())
    assert "charset 'us-ascii': text read as 'iso2022_jp'" in mail.defects
    mail = mime.parse_mail((CHARSETS / "euc_jp_labelled_iso2022jp.eml").read_bytes())
    assert "charset 'iso-2022-jp': text read as 'euc_jp'" in mail.defects
    clean = mime.parse_mail((CHARSETS / "shift_jis_8bit_with_windows_characters.eml").read_bytes())
    assert clean.defects == []  # cp932 is what Shift_JIS means in mail: nothing to report


def test_mail_parser_body_hook_is_still_there() -> None:
    """Fails loudly when mail-parser moves the hook the mail-parser path decodes through."""
    import mailparser

    hook = mailparser.MailParser._decode_body_payload
    assert list(inspect.signature(hook).parameters) == ["self", "part", "charset", "part_index"]
    raw = (CHARSETS / "iso2022jp_labelled_us_ascii.eml").read_bytes()
    parsed = mime._mail_parser_class().from_bytes(raw)
    assert parsed.text_plain == [JA.replace("\n", "\r\n") + "\r\n"]
    assert vars(parsed)["mailbridge_defects"] == ["charset 'us-ascii': text read as 'iso2022_jp'"]


# --- decode_text: the fallback order, one case each ---------------------------------------

@pytest.mark.parametrize(
    ("payload", "charset", "text"),
    [
        pytest.param("障害です".encode("iso2022_jp"), "ISO-2022-JP", "障害です", id="iso-2022-jp"),
        pytest.param("장애".encode("iso2022_kr"), "iso-2022-kr", "장애", id="iso-2022-kr"),
        pytest.param("①髙".encode("cp932"), "Shift_JIS", "①髙", id="shift_jis-as-cp932"),
        pytest.param("障害".encode("cp932"), "x-sjis", "障害", id="x-sjis-alias"),
        pytest.param("障害".encode("euc_jp"), "x-euc-jp", "障害", id="x-euc-jp-alias"),
        pytest.param("똠방".encode("cp949"), "euc-kr", "똠방", id="euc-kr-as-cp949"),
        pytest.param("镕".encode("gbk"), "GB2312", "镕", id="gb2312-as-gbk"),
        pytest.param("€𠀀".encode("gb18030"), "gb2312", "€𠀀", id="gb2312-as-gb18030"),
        pytest.param("故障".encode("gbk"), "x-gbk", "故障", id="x-gbk-alias"),
        pytest.param("伺服器".encode("big5"), "x-big5", "伺服器", id="x-big5-alias"),
        pytest.param("Сервер".encode("koi8_r"), "KOI8-R", "Сервер", id="koi8-r"),
        pytest.param("Сервер".encode("cp1251"), "cp-1251", "Сервер", id="cp-1251-alias"),
        pytest.param("Ελλάδα".encode("cp1253"), "windows-1253", "Ελλάδα", id="windows-1253"),
        pytest.param("Türkçe ğ".encode("cp1254"), "iso-8859-9", "Türkçe ğ", id="latin5-as-1254"),
        pytest.param("“sí” €".encode("cp1252"), "iso-8859-1", "“sí” €", id="latin1-as-1252"),
        pytest.param("שלום".encode("iso8859_8"), "iso-8859-8-i", "שלום", id="iso-8859-8-i"),
        pytest.param("Caída 障害".encode("utf-7"), "unicode-1-1-utf-7", "Caída 障害", id="utf-7"),
        pytest.param("Caída".encode("utf-16"), "utf-16", "Caída", id="utf-16"),
        pytest.param("故障".encode("hz"), "hz-gb-2312", "故障", id="hz"),
        pytest.param("\ufeffCaída".encode(), "utf-8", "Caída", id="utf-8-bom-dropped"),
        pytest.param("Caída".encode(), "utf8mb4", "Caída", id="utf8mb4-alias"),
        pytest.param("Caída".encode(), '"UTF-8";', "Caída", id="quoted-label"),
    ],
)
def test_declared_charsets_and_their_aliases(payload: bytes, charset: str, text: str) -> None:
    defects: list[str] = []
    assert decode_text(payload, charset, defects) == text
    assert defects == []


@pytest.mark.parametrize(
    ("payload", "charset", "hints", "text", "defect"),
    [
        pytest.param("障害".encode("iso2022_jp"), "iso-8859-1", (), "障害",
                     "charset 'iso-8859-1': text read as 'iso2022_jp'", id="escapes-beat-label"),
        pytest.param("障害".encode("iso2022_jp"), None, (), "障害", None, id="escapes-no-label"),
        pytest.param("Caída".encode(), "iso-8859-1", (), "Caída",
                     "charset 'iso-8859-1': text read as 'utf-8'", id="utf8-labelled-latin1"),
        pytest.param("Caída".encode("cp1252"), "utf-8", (), "Caída",
                     "charset 'utf-8': text read as 'cp1252' with replacement characters",
                     id="latin1-labelled-utf8"),
        pytest.param("Caída".encode("cp1252"), "x-unknown", (), "Caída",
                     "charset 'x-unknown': text read as 'cp1252' with replacement characters",
                     id="unknown-label"),
        pytest.param("障害".encode("cp932"), None, ("shift_jis",), "障害", None,
                     id="hint-from-the-mail"),
        pytest.param("障害".encode("euc_jp"), "iso-2022-jp", (), "障害",
                     "charset 'iso-2022-jp': text read as 'euc_jp'", id="8bit-under-7bit-label"),
        pytest.param("障害".encode("cp932"), "iso-2022-jp", (), "障害",
                     "charset 'iso-2022-jp': text read as 'cp932'", id="sjis-under-7bit-label"),
        pytest.param("ñandú ".encode() * 20 + b"\xd1f", "utf-8", (), "ñandú " * 20 + "\ufffdf",
                     "charset 'utf-8': text read as 'utf-8' with replacement characters",
                     id="utf8-with-one-broken-sequence-stays-utf8"),
        pytest.param("障害です".encode("cp932") + b"\x81\x20", "shift_jis", (), "障害です\ufffd ",
                     "charset 'shift_jis': text read as 'shift_jis' with replacement characters",
                     id="japanese-with-a-bad-byte-stays-japanese"),
    ],
)
def test_wrong_and_missing_labels_follow_the_documented_order(
    payload: bytes, charset: str | None, hints: tuple[str, ...], text: str, defect: str | None
) -> None:
    defects: list[str] = []
    assert decode_text(payload, charset, defects, hints) == text
    assert defects == ([defect] if defect else [])


def test_lone_surrogates_never_come_out() -> None:
    # UTF-7 can encode half a surrogate pair; Python decodes it to a lone surrogate.
    text = decode_text(b"+2D3-", "utf-7")
    text.encode("utf-8")


def test_windows_iso2022jp_reads_nec_rows_and_halfwidth_kana() -> None:
    assert _decode_iso2022jp_windows(b"\x1b$B-!-j|b$G$9\x1b(B \x1b(I12\x1b(B ok") == "①㈱髙です ｱｲ ok"
    assert _decode_iso2022jp_windows(b"\x0e12\x0f ok") == "ｱｲ ok"  # SO/SI kana (CP50222)
    for broken in (b"\x1b$Bx", b"\x1b$(Q!!", b"caf\xe9", b"\x1b(I\x7a"):
        with pytest.raises(ValueError):
            _decode_iso2022jp_windows(broken)


def _text_codecs() -> list[str]:
    """Every codec Python ships that encodes text as bytes (the ones a mail could name)."""
    names = set(encodings.aliases.aliases.values())
    out = []
    for name in sorted(names):
        try:
            info = codecs.lookup(name)
        except LookupError:
            continue  # platform-only (mbcs, oem)
        if getattr(info, "_is_text_encoding", True) and name not in (
            "idna", "punycode", "raw_unicode_escape", "unicode_escape", "undefined",
        ):
            out.append(name)
    return out


POOL = "Hola, caída del servicio ¿qué tal? €ñÑçß Привет Ελλάδα שלום مرحبا 障害です 장애 故障 ①ｱ"


@pytest.mark.parametrize("codec", _text_codecs())
def test_every_python_codec_decodes_in_both_paths(codec: str, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    sample = "".join(ch for ch in POOL if _encodes(ch, codec))
    if len(sample.strip()) < 3:
        pytest.skip(f"{codec} encodes too little of the sample")
    payload = sample.encode(codec)
    assert codec_name(codec) is not None
    assert decode_text(payload, codec) == sample
    raw = (b"From: ana@compensar.example\r\nTo: soporte-a@mesa.example\r\nSubject: x\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=" + codec.encode() +
           b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(payload))
    for mail in both_paths(raw, monkeypatch):
        assert mail.text == sample


def _encodes(ch: str, codec: str) -> bool:
    try:
        return ch.encode(codec).decode(codec) == ch
    except (UnicodeError, ValueError):
        return False


# --- encoded words in headers ---------------------------------------------------------

def _word(data: bytes, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(data).decode()}?="


def test_encoded_words_python_reads_are_left_alone() -> None:
    assert reencode_words(_word("障害".encode("iso2022_jp"), "iso-2022-jp")) is None
    assert reencode_words("TEN-1001 =?utf-8?q?Ca=C3=ADda?=") is None
    assert reencode_words("no words") is None


def test_words_python_cannot_read_are_reencoded_and_keep_the_plain_text() -> None:
    header = "TEN-1001 " + _word("障害".encode("cp932"), "x-sjis") + " urgente"
    fixed = reencode_words(header)
    assert fixed is not None and fixed.startswith("TEN-1001 =?utf-8?b?")
    assert fixed.endswith(" urgente")


def test_a_character_split_across_two_words_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    data = "①障害".encode("cp932")
    subject = _word(data[:3], "windows-31j") + "\r\n " + _word(data[3:], "windows-31j")
    raw = (f"From: ana@compensar.example\r\nSubject: {subject}\r\n\r\nhola\r\n").encode()
    for mail in both_paths(raw, monkeypatch):
        assert mail.subject == "①障害"
