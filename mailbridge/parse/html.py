"""HTML → readable text, keeping line structure (for HTML-only mail)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

_BLOCK = {
    "p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
    "pre", "ul", "ol", "hr", "dt", "dd", "section", "article", "header", "footer",
}  # fmt: skip
# <head> is not skipped: its only text is in <title>, <style> and <script>, and an
# unclosed <head> must not swallow the body.
_SKIP = {"script", "style", "title", "template"}
_LINE_BREAK = re.compile(r"\s*\n\s*")
_SOURCE_SPACE = re.compile(r"[ \t\r\n\f]+")
_CELL_SPACE = re.compile(r"[ \f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class _Frame:
    kind: str  # "root", "table", "row" or "cell"
    parts: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)


def _render_row(cells: list[str]) -> str:
    """A row whose cells are one line each reads "label<TAB>value"; others stay as lines."""
    texts = [text.strip() for text in cells]
    texts = [text for text in texts if text]
    if not texts:
        return ""
    single = [_LINE_BREAK.sub("\n", text) for text in texts]
    if all("\n" not in text for text in single):
        return "\t".join(single)
    return "\n".join(texts)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._frames: list[_Frame] = [_Frame("root")]
        self._skip = 0
        self._pre = 0

    # -- frames: table cells are collected so that a row can become one line
    @property
    def _top(self) -> _Frame:
        return self._frames[-1]

    def _emit(self, text: str) -> None:
        self._top.parts.append(text)

    def _newline(self) -> None:
        parts = self._top.parts
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")

    def _close_cell(self) -> None:
        if self._top.kind == "cell" and len(self._frames) > 1:
            cell = self._frames.pop()
            if self._top.kind == "row":
                self._top.cells.append("".join(cell.parts))
            else:
                self._emit("".join(cell.parts))

    def _close_row(self) -> None:
        self._close_cell()
        if self._top.kind == "row" and len(self._frames) > 1:
            row = self._frames.pop()
            text = _render_row(row.cells)
            if text:
                self._newline()
                self._emit(text)
                self._emit("\n")

    def _close_table(self) -> None:
        self._close_row()
        if self._top.kind == "table" and len(self._frames) > 1:
            table = self._frames.pop()
            self._newline()
            self._emit("".join(table.parts))
            self._newline()

    def close_all(self) -> str:
        while len(self._frames) > 1:
            kind = self._top.kind
            if kind == "cell":
                self._close_cell()
            elif kind == "row":
                self._close_row()
            else:
                self._close_table()
        return "".join(self._frames[0].parts)

    # -- parser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self._pre += 1
        if tag in _SKIP:
            self._skip += 1
        elif tag == "table":
            self._frames.append(_Frame("table"))
        elif tag == "tr":
            self._close_row()
            self._frames.append(_Frame("row"))
        elif tag in ("td", "th"):
            self._close_cell()
            if self._top.kind != "row":
                self._frames.append(_Frame("row"))
            self._frames.append(_Frame("cell"))
        elif tag in _BLOCK:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th"):
            self._close_cell()
        elif tag == "tr":
            self._close_row()
        elif tag == "table":
            self._close_table()
        elif tag == "br":
            return  # "<br/>" already broke the line
        elif tag in _BLOCK:
            self._emit("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self._emit(data.replace("\t", "    "))
        else:
            # Source line breaks and indentation are not text in HTML.
            self._emit(_SOURCE_SPACE.sub(" ", data))


def html_to_text(markup: str) -> str:
    """Readable text of an HTML body; never raises.

    Blocks and <br> break lines; a table row whose cells are one line each becomes one
    line with the cells separated by a tab ("Nombre del Cliente<TAB>Compensar").
    """
    if not isinstance(markup, str) or not markup:
        return ""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        text = parser.close_all()
    except Exception:  # malformed markup: fall back to stripping tags
        text = html.unescape(re.sub(r"<[^>]+>", " ", markup))
    text = text.replace("\xa0", " ").replace("\r\n", "\n").replace("\r", "\n")
    lines = []
    for line in text.splitlines():
        cells = [_CELL_SPACE.sub(" ", cell).strip() for cell in line.split("\t")]
        lines.append("\t".join(cell for cell in cells if cell))
    result = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    if not result and "<" in markup:
        # An unclosed <style> or <script> swallowed everything: strip the tags instead.
        stripped = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>|<[^>]+>", " ", markup)
        result = re.sub(r"[ \t]+", " ", html.unescape(stripped)).strip()
    return result
