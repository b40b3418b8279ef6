"""Hostile mails, built at test time (nothing big is kept in the repository).

Each builder returns the raw bytes of one mail from the demo contact Ana to soporte-a;
`SMALL` lists the small hostile fixture files kept in tests/messages/hostile/.
"""

from __future__ import annotations

import base64
import io
import zipfile
import zlib
from pathlib import Path

HOSTILE_DIR = Path(__file__).resolve().parents[1] / "messages" / "hostile"


def _head(tag: str, subject: str, extra: bytes = b"") -> bytes:
    return (b"From: Ana G\xc3\xb3mez <ana@compensar.example>\r\n"
            b"To: soporte-a@mesa.example\r\n"
            b"Subject: " + subject.encode() + b"\r\n"
            b"Message-ID: <" + tag.encode() + b"@compensar.example>\r\n"
            b"Date: Tue, 10 Nov 2026 09:00:00 -0500\r\n" + extra)


def nested_multipart(depth: int = 1000) -> bytes:
    """`depth` multipart/mixed containers, one inside the other, a text part at the bottom."""
    out = [_head("bomb-nested", f"TEN-1001 Anidado {depth} niveles", b"MIME-Version: 1.0\r\n")]
    for level in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (level, level))
    out.append(b"Content-Type: text/plain; charset=utf-8\r\n\r\nExplicaci\xc3\xb3n detallada del "
               b"incidente: anidado.\r\n")
    for level in reversed(range(depth)):
        out.append(b"--n%d--\r\n" % level)
    return b"".join(out)


def many_headers(count: int = 100_000) -> bytes:
    lines = b"".join(b"X-Relleno-%d: valor %d\r\n" % (n, n) for n in range(count))
    return (_head("bomb-headers", f"TEN-1001 Cabeceras {count}") + lines
            + b"\r\nExplicaci\xc3\xb3n detallada del incidente: muchas cabeceras.\r\n")


def long_line(size: int = 10 * 1024 * 1024) -> bytes:
    """One body line of `size` bytes (no line break): only a pipe or IMAP can carry it."""
    return (_head("bomb-line", "TEN-1001 Linea de 10 MB",
                  b"Content-Type: text/plain; charset=utf-8\r\n")
            + b"\r\nExplicaci\xc3\xb3n detallada del incidente: " + b"A" * size + b"\r\n")


def invalid_utf8_and_nul() -> bytes:
    return (_head("bomb-utf8", "TEN-1001 Bytes inv\xe1lidos \x00 y NUL",
                  b"X-Binario: \xff\xfe\x00\x01\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Transfer-Encoding: 8bit\r\n")
            + b"\r\nExplicaci\xf3n detallada del incidente: \xc3\x28 \xa0\xa1 \xf0\x28\x8c\xbc "
              b"\x00\x00\x00 texto con NUL\x00 en medio\r\n\xed\xa0\x80 sustituto\r\n")


def broken_encodings() -> bytes:
    boundary = b"rotas"
    return (_head("bomb-encodings", "TEN-1001 Codificaciones rotas",
                  b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="rotas"\r\n')
            + b"\r\n--" + boundary + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nRXhwbGljYWNp*$%\xff===b24gZGV0YWxsYWRh\r\nQQ\r\n"
            b"--" + boundary + b"\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\nImpacto =ZZ =4 =\r\n=\r\n=3D=3\r\n"
            b"--" + boundary + b"\r\nContent-Type: application/pdf; name=\"roto.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; "
            b"filename=\"roto.pdf\"\r\n\r\nJVBERi0xLjQK!!!!not base64 at all\x00\r\nQ\r\n"
            b"--" + boundary + b"\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n<<<>>>\r\n"
            b"--" + boundary + b"--\r\n")


def _deflate_zeros(size: int) -> tuple[bytes, int]:
    """Raw DEFLATE of `size` zero bytes (streamed: the test never holds `size` bytes)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    out = [compressor.compress(block) for _ in range(size >> 20)]
    out.append(compressor.flush())
    return b"".join(out), zlib.crc32(bytes(0))


def zip_bomb(inner_mb: int = 100, copies: int = 20) -> bytes:
    """A zip whose `copies` members each inflate to `inner_mb` MiB of zeros (2 GiB in all)."""
    data, _ = _deflate_zeros(inner_mb << 20)
    crc = 0
    block = bytes(1 << 20)
    for _ in range(inner_mb):
        crc = zlib.crc32(block, crc)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n in range(copies):
            info = zipfile.ZipInfo(f"registro-{n}.log")
            info.compress_type = zipfile.ZIP_DEFLATED
            # Write the compressed member as it is: no 100 MiB ever in memory here.
            info.CRC, info.compress_size, info.file_size = crc, len(data), inner_mb << 20
            archive.fp.write(info.FileHeader())  # type: ignore[union-attr]
            archive.fp.write(data)  # type: ignore[union-attr]
            info.header_offset = archive.fp.tell() - len(data) - len(info.FileHeader())  # type: ignore[union-attr]
            archive.filelist.append(info)
            archive.NameToInfo[info.filename] = info
            archive.start_dir = archive.fp.tell()  # type: ignore[union-attr]
    return buffer.getvalue()


def gzip_bomb(size_mb: int = 256) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    block = bytes(1 << 20)
    return b"".join([*(compressor.compress(block) for _ in range(size_mb)), compressor.flush()])


def decompression_bombs() -> bytes:
    parts = [
        ("evidencias.zip", "application/zip", zip_bomb()),
        ("registro.log.gz", "application/gzip", gzip_bomb()),
        # A PNG header claiming 100000 × 100000 pixels (never decoded here).
        ("captura.png", "image/png", bytes.fromhex("89504e470d0a1a0a0000000d49484452")
         + (100000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + b"\x00" * 64),
    ]
    body = [_head("bomb-zip", "TEN-1001 Adjuntos comprimidos",
                  b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="zz"\r\n'),
            b"\r\n--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"Explicaci\xc3\xb3n detallada del incidente: adjunto los registros.\r\n"]
    for name, ctype, data in parts:
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
        body.append(b"--zz\r\nContent-Type: " + ctype.encode() + b"\r\n"
                    b"Content-Encoding: gzip\r\nContent-Transfer-Encoding: base64\r\n"
                    b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n\r\n'
                    + encoded)
    body.append(b"--zz--\r\n")
    return b"".join(body)


def hostile_filenames() -> bytes:
    names = [
        b'filename="../../../../etc/cron.d/mailbridge"',
        b'filename="..\\\\..\\\\Windows\\\\System32\\\\drivers\\\\etc\\\\hosts"',
        b'filename="/var/lib/mailbridge/mailbridge.db"',
        b"filename*=utf-8''..%2F..%2Fescape%0D%0ABcc%3A%20x%40otro.example.txt",
        b'filename="=?utf-8?q?=2E=2E=2F=2E=2E=2Fqp=0D=0AX-Inyectada=3A_1.txt?="',
        b'filename="nul\x00byte\x07bell\x1b[31mred.txt"',
        b'filename="factura\xe2\x80\xaegpj.exe"',  # right-to-left override
        b'filename="' + b"x" * 600 + b'.pdf"',
        b'filename=".."',
        b'filename="   "',
    ]
    body = [_head("bomb-names", "TEN-1001 Nombres de adjuntos hostiles",
                  b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="nn"\r\n'),
            b"\r\n--nn\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b"Explicaci\xc3\xb3n detallada del incidente: adjuntos.\r\n"]
    for n, disposition in enumerate(names):
        body.append(b"--nn\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Disposition: attachment; " + disposition + b"\r\n\r\n"
                    b"contenido %d\r\n" % n)
    body.append(b"--nn--\r\n")
    return b"".join(body)


def eight_bit_headers() -> bytes:
    return (b"From: Jos\xe9 N\xfa\xf1ez \xff <ana@compensar.example>\r\n"
            b"To: Soporte \xc3\xa1 <soporte-a@mesa.example>\r\n"
            b"Subject: TEN-1001 Ca\xc3\xadda del servicio \xe9\xe8 \xf0\x9f\x94\xa5 \x80\x81\r\n"
            b"Message-ID: <bomb-8bit@compensar.example>\r\n"
            b"X-Raro: \xc0\xc1\xf5\xf6\xf7\xf8\r\n"
            b"\r\nExplicaci\xc3\xb3n detallada del incidente: cabeceras de 8 bits.\r\n")


# Small fixtures kept as files (each a few hundred bytes), built by the builders above.
SMALL = {
    "invalid_utf8_and_nul.eml": invalid_utf8_and_nul,
    "broken_base64_qp.eml": broken_encodings,
    "attachment_names_traversal.eml": hostile_filenames,
    "eight_bit_headers.eml": eight_bit_headers,
}

BIG = {
    "nested_multipart_1000": nested_multipart,
    "headers_100000": many_headers,
    "single_line_10MB": long_line,
    "zip_gzip_png_bombs": decompression_bombs,
}
