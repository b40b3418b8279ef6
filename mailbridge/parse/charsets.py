"""Bytes of a text part → str: the declared charset read the way senders mean it, then a fallback.

Both readings of a mail (the plain stdlib path and the mail-parser path in mime.py) decode
every body part through `decode_part`, so a charset is read the same way whichever path a
mail takes.

The order, for one part (`decode_text`):

1. A 7-bit payload with ISO-2022 escape sequences (ESC $ B …) is read as the ISO-2022
   family its escapes name, whatever the declaration says: old mailers label ISO-2022-JP
   text us-ascii, iso-8859-1 or nothing at all.
2. The declared charset (for HTML with none declared: its <meta charset>), after the mail
   aliases Python's codecs do not know (windows-31j, x-sjis, x-gbk …), as the list of
   candidates in `_CANDIDATES`: the charset itself, then the superset senders really
   write in (Shift_JIS → cp932, EUC-KR → cp949, GB2312 → GBK → GB18030, Big5 → cp950,
   ISO-2022-JP → its extensions and the Windows variant with NEC/IBM characters). The
   Latin ISO-8859 charsets read windows-125x first, as browsers do (WHATWG): 0x80–0x9F
   as C1 control characters is never what a sender meant. An ISO-2022 label over 8-bit
   text is tried as the same language's 8-bit encodings (EUC-JP, Shift_JIS; EUC-KR).
   A single-byte declaration over text that is valid, non-ASCII UTF-8 is read as UTF-8
   first: UTF-8 labelled iso-8859-1 is the commonest wrong label, and Latin or Cyrillic
   text that happens to be valid UTF-8 does not occur in practice.
3. UTF-8.
4. The charsets the same mail declares elsewhere (other parts, encoded words in its
   headers): a Shift_JIS body without a charset usually has a Shift_JIS subject.
5. With replacement characters where bytes do not decode: UTF-8 when most of the text is
   valid UTF-8 (a few sequences broken in transit), else the declared multi-byte charset
   (a Japanese text with one bad byte stays Japanese), else cp1252 (8-bit text with no
   usable label, at a Spanish-speaking desk, is most likely Windows Latin).

Each candidate must decode strictly and give text without lone surrogates (some codecs,
UTF-7 and UTF-16 among them, can produce them; they break UTF-8 storage). Reading a part
other than as declared is reported in `defects`.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import functools
import quopri
import re
from collections.abc import Iterable, Iterator
from email.message import Message

# Charset names seen in real mail that Python's codecs do not know (after
# `encodings.normalize_encoding`: lower case, punctuation as "_").
_ALIASES = {
    "windows_31j": "cp932", "x_sjis": "shift_jis", "x_shift_jis": "shift_jis",
    "shift_jis_ms": "cp932", "x_ms_cp932": "cp932", "cp_932": "cp932",
    "x_euc_jp": "euc_jp", "x_euc": "euc_jp", "eucjp_ms": "euc_jp",
    "iso_2022_jp_ms": "iso2022_jp", "cp50220": "iso2022_jp", "cp50221": "iso2022_jp",
    "cp50222": "iso2022_jp", "x_windows_949": "cp949", "ks_c_5601_1989": "cp949",
    "x_gbk": "gbk", "gb_2312_80": "gb2312", "x_gb2312": "gb2312", "x_euc_cn": "gb2312",
    "x_big5": "big5", "x_x_big5": "big5", "big_5": "big5",
    "iso_8859_8_i": "iso8859_8", "iso_8859_8_e": "iso8859_8", "iso_8859_6_i": "iso8859_6",
    "iso_8859_6_e": "iso8859_6", "windows_874": "cp874", "x_cp1250": "cp1250",
    "x_cp1251": "cp1251", "x_cp1252": "cp1252", "x_user_defined": "cp1252",
    "utf8mb4": "utf_8", "utf8mb3": "utf_8", "x_unicode_2_0_utf_7": "utf_7",
    "x_mac_roman": "mac_roman", "x_mac_cyrillic": "mac_cyrillic",
}
for _number in range(1250, 1259):
    _ALIASES[f"cp_{_number}"] = f"cp{_number}"
    _ALIASES[f"x_cp{_number}"] = f"cp{_number}"

# A codec (by `codecs.lookup(...).name`) → the codecs to try, in order. Absent: itself alone.
_ISO2022_JP = ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_2004",
               "iso2022_jp_windows")
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "utf-8": ("utf-8-sig",),
    "iso2022_jp": _ISO2022_JP,
    "iso2022_jp_1": ("iso2022_jp_1", *_ISO2022_JP),
    "iso2022_jp_2": ("iso2022_jp_2", *_ISO2022_JP),
    "iso2022_jp_3": ("iso2022_jp_3", "iso2022_jp_2004", *_ISO2022_JP),
    "iso2022_jp_2004": ("iso2022_jp_2004", *_ISO2022_JP),
    "iso2022_jp_ext": ("iso2022_jp_ext", *_ISO2022_JP),
    "shift_jis": ("shift_jis", "cp932", "shift_jis_2004"),
    "shift_jis_2004": ("shift_jis_2004", "cp932"),
    "shift_jisx0213": ("shift_jisx0213", "shift_jis_2004", "cp932"),
    "euc_jp": ("euc_jp", "euc_jis_2004", "cp932"),
    "euc_kr": ("euc_kr", "cp949"),
    "gb2312": ("gb2312", "gbk", "gb18030"),
    "gbk": ("gbk", "gb18030"),
    "big5": ("big5", "cp950", "big5hkscs"),
    "cp950": ("cp950", "big5hkscs"),
    "iso8859-1": ("cp1252", "latin-1"),
    "iso8859-9": ("cp1254", "iso8859-9"),
    "iso8859-11": ("cp874", "iso8859-11"),
    "tis-620": ("cp874", "tis-620"),
}
# 7-bit ISO-2022 labels over 8-bit text: the same language's 8-bit encodings (EUC first:
# EUC-JP text also decodes as cp932 half-width katakana, Shift_JIS text never as EUC-JP).
_EIGHT_BIT_OF = {codec: ("euc_jp", "cp932") for codec in
                 ("iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_3",
                  "iso2022_jp_2004", "iso2022_jp_ext")}
_EIGHT_BIT_OF["iso2022_kr"] = ("euc_kr", "cp949")
# Charsets in which every byte is one character: the UTF-8 mislabel check applies.
_SINGLE_BYTE = re.compile(r"(iso8859-\d+|cp12[5-9]\d|cp874|cp8[5-6]\d|koi8-[rut]|latin-1|"
                          r"mac-\w+|tis-620|ascii)$")
_ESCAPE_JP = re.compile(rb"\x1b(?:\$[@B]|\$\([DOPQ]|\([BIJ])")
_ESCAPE_KR = re.compile(rb"\x1b\$\)C")
_HTML_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([\w.:-]{1,40})""",
                                re.IGNORECASE)
_ENCODED_WORD_CHARSET = re.compile(r"=\?([^?\s*]{1,40})(?:\*[^?]*)?\?[bBqQ]\?")
_HINT_HEADERS = ("subject", "from", "to", "cc", "reply-to")
# Labels that say nothing about the bytes: read as if no charset were declared.
_NO_CHARSET = frozenset({"unknown_8bit", "x_unknown", "unknown", "default", "none"})


@functools.lru_cache(maxsize=512)
def codec_name(charset: str | None) -> str | None:
    """The codec a declared charset names (aliases included), or None when it names none."""
    label = _normalise(charset)
    if not label or label in _NO_CHARSET:
        return None
    try:
        return codecs.lookup(_ALIASES.get(label, label)).name
    except LookupError:
        return None


def _normalise(charset: str | None) -> str:
    from encodings import normalize_encoding

    label = (charset or "").strip().strip("\"';").strip().lower()
    return normalize_encoding(label) if label.isascii() else ""


def decode_part(part: Message, defects: list[str] | None = None,
                hints: Iterable[str] = ()) -> str:
    """A body part's text (transfer encoding undone, charset as described above)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload:
        return ""
    charset = part.get_content_charset()
    if charset is None and part.get_content_subtype() == "html":
        found = _HTML_META_CHARSET.search(payload[:4096])
        charset = found.group(1).decode("ascii") if found else None
    return decode_text(payload, charset, defects, hints)


def decode_text(payload: bytes, charset: str | None, defects: list[str] | None = None,
                hints: Iterable[str] = ()) -> str:
    """Bytes of a text part → str, in the order the module docstring gives."""
    label = (charset or "").strip().strip("\"';").strip().lower()
    codec = codec_name(label)
    if label and codec is None and _normalise(label) not in _NO_CHARSET:
        _report(defects, f"unknown charset {label!r}")
    seven_bit = payload.isascii()
    declared = list(_CANDIDATES.get(codec, (codec,))) if codec else []
    tried: set[str] = set()
    for candidate in _candidates(payload, codec, declared, seven_bit, hints):
        if candidate in tried:
            continue
        tried.add(candidate)
        text = _strict(payload, candidate)
        if text is None:
            continue
        if codec and candidate not in declared and not (seven_bit and candidate == "utf-8-sig"):
            _report(defects, f"charset {label!r}: text read as {_shown(candidate)!r}")
        return text
    fallback = _last_resort(payload, declared)
    if label or fallback != "cp1252":
        _report(defects, f"charset {label or 'none'!r}: text read as {_shown(fallback)!r} "
                         "with replacement characters")
    return payload.decode(fallback, "replace")


def _last_resort(payload: bytes, declared: list[str]) -> str:
    """Step 5: UTF-8 with a few broken sequences stays UTF-8; a multi-byte declaration is
    kept; anything else is read as cp1252."""
    text = payload.decode("utf-8", "replace")
    broken = text.count("\ufffd")
    if sum(1 for ch in text if ord(ch) > 0x7F) - broken >= 2 * broken:
        return "utf-8"
    multi_byte = [codec for codec in declared if codec != "utf-8-sig"
                  and not _SINGLE_BYTE.match(codec) and codec != "iso2022_jp_windows"]
    return multi_byte[0] if multi_byte else "cp1252"


def _candidates(payload: bytes, codec: str | None, declared: list[str], seven_bit: bool,
                hints: Iterable[str]) -> Iterator[str]:
    """Steps 1-4 of the order, lazily: the mail's other charsets are read only if needed."""
    if seven_bit and b"\x1b" in payload:
        if _ESCAPE_JP.search(payload):
            yield from declared if (codec or "").startswith("iso2022_jp") else _ISO2022_JP
        elif _ESCAPE_KR.search(payload):
            yield "iso2022_kr"
    if declared and not seven_bit and _SINGLE_BYTE.match(codec or ""):
        yield "utf-8-sig"  # UTF-8 labelled single-byte (see above)
    yield from declared
    if not seven_bit and codec in _EIGHT_BIT_OF:
        yield from _EIGHT_BIT_OF[codec]  # 8-bit text under a 7-bit label (see above)
    yield "utf-8-sig"
    for hint in hints:
        hint_codec = codec_name(hint)
        if hint_codec:
            yield from _CANDIDATES.get(hint_codec, (hint_codec,))


def _shown(codec: str) -> str:
    return "utf-8" if codec == "utf-8-sig" else codec


def _strict(payload: bytes, codec: str) -> str | None:
    try:
        text = (_decode_iso2022jp_windows(payload) if codec == "iso2022_jp_windows"
                else payload.decode(codec))
        text.encode("utf-8")  # no lone surrogates
    except (UnicodeError, ValueError, LookupError):
        return None
    return text


def _report(defects: list[str] | None, defect: str) -> None:
    if defects is not None and defect not in defects:
        defects.append(defect)


class CharsetHints:
    """The charsets a mail declares anywhere (parts, encoded words in its main headers).

    Step 4 of the order; read from the mail the first time a part needs them (few do).
    """

    def __init__(self, message: Message) -> None:
        self._message = message
        self._found: tuple[str, ...] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._found is None:
            self._found = _declared_charsets(self._message)
        return iter(self._found)


def _declared_charsets(message: Message) -> tuple[str, ...]:
    found: list[str] = []
    with contextlib.suppress(Exception):  # a broken structure gives fewer hints, never an error
        for name in _HINT_HEADERS:
            for value in message.get_all(name, []):
                found += _ENCODED_WORD_CHARSET.findall(str(value))
        for number, part in enumerate(message.walk()):
            if number >= 1000:
                break
            charset = part.get_content_charset()
            if charset:
                found.append(charset)
    out: list[str] = []
    for charset in found:
        codec = codec_name(charset)
        if codec and codec not in ("ascii", "utf-8") and codec not in out:
            out.append(codec)
    return tuple(out)


# --- ISO-2022-JP as Windows writes it (CP50220/CP50221: NEC and IBM characters) ----------

_JP_MODES = ((b"$B", "jis"), (b"$@", "jis"), (b"(B", "ascii"), (b"(J", "ascii"),
             (b"(I", "kana"))


def _decode_iso2022jp_windows(payload: bytes) -> str:
    """ISO-2022-JP with the NEC/IBM rows Outlook writes (①, ㈱, 髙 …), via cp932.

    Python's iso2022_jp codecs refuse these; every JIS X 0208 code maps onto one cp932
    (Shift_JIS) code, so the text is carried over into cp932 bytes and decoded once.
    Anything else (another escape, an 8-bit byte) raises ValueError.
    """
    out = bytearray()
    mode = "ascii"
    shifted = False  # SO/SI half-width katakana (CP50222)
    position = 0
    end = len(payload)
    while position < end:
        byte = payload[position]
        if byte == 0x1B:
            for sequence, new_mode in _JP_MODES:
                if payload.startswith(sequence, position + 1):
                    mode = new_mode
                    position += 1 + len(sequence)
                    break
            else:
                raise ValueError("escape sequence outside ISO-2022-JP")
            continue
        position += 1
        if byte == 0x0E or byte == 0x0F:
            shifted = byte == 0x0E
        elif byte >= 0x80:
            raise ValueError("8-bit byte in ISO-2022-JP")
        elif byte < 0x21 or byte == 0x7F:
            out.append(byte)  # controls and line ends, whatever the mode
        elif shifted or mode == "kana":
            if byte > 0x5F:
                raise ValueError("not a half-width katakana")
            out.append(byte + 0x80)
        elif mode == "jis":
            if position >= end or not 0x21 <= payload[position] <= 0x7E:
                raise ValueError("half a JIS X 0208 character")
            out += _jis_to_sjis(byte, payload[position])
            position += 1
        else:
            out.append(byte)
    return out.decode("cp932")


def _jis_to_sjis(first: int, second: int) -> bytes:
    lead = ((first - 0x21) >> 1) + 0x81
    if lead > 0x9F:
        lead += 0x40
    if first & 1:
        trail = second + (0x1F if second < 0x60 else 0x20)
    else:
        trail = second + 0x7E
    return bytes((lead, trail))



# --- encoded words (RFC 2047) in headers ----------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,40})(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"\s*")


def reencode_words(header: str | None) -> str | None:
    """The header with the encoded words Python cannot decode re-encoded as UTF-8; None if none.

    An encoded word in a charset Python does not know (x-sjis, windows-31j …) or whose
    bytes its codec refuses (ISO-2022-JP with NEC characters) is decoded with
    `decode_text`, like a body, and written back as a UTF-8 word, so the usual header
    decoding then reads it. Consecutive words in one charset are decoded together:
    senders split a multi-byte character across words.
    """
    if not header or "=?" not in header:
        return None
    words = list(_ENCODED_WORD.finditer(header))
    if not words:
        return None
    groups: list[list[re.Match[str]]] = []
    for word in words:
        previous = groups[-1][-1] if groups else None
        if previous is not None and previous.group(1).lower() == word.group(1).lower() \
                and _BETWEEN_WORDS.fullmatch(header, previous.end(), word.start()):
            groups[-1].append(word)
        else:
            groups.append([word])
    out: list[str] = []
    position = 0
    changed = False
    for group in groups:
        charset = group[0].group(1)
        data = b"".join(_word_bytes(word) for word in group)
        codec = _python_codec(charset)
        if codec and _strict(data, codec) is not None:
            continue  # Python reads it as it is
        text = decode_text(data, charset)
        encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        out += [header[position:group[0].start()], f"=?utf-8?b?{encoded}?="]
        position = group[-1].end()
        changed = True
    if not changed:
        return None
    out.append(header[position:])
    return "".join(out)


def _python_codec(charset: str) -> str | None:
    """The codec Python's own header decoding finds for a label (no mail aliases)."""
    try:
        return codecs.lookup(charset.lower()).name
    except LookupError:
        return None


def _word_bytes(word: re.Match[str]) -> bytes:
    data = word.group(3)
    if word.group(2) in "bB":
        try:
            return base64.b64decode(data + "=" * (-len(data) % 4))
        except ValueError:
            return data.encode("ascii", "replace")
    return quopri.decodestring(data.encode("ascii", "replace"), header=True)
