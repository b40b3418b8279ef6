"""HTML → readable text, keeping line structure (for HTML-only mail)."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_BLOCK = {
    "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote",
    "pre", "ul", "ol", "hr", "dt", "dd",
}  # fmt: skip
_SKIP = {"script", "style", "head", "title"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        # Cells of one table row come out on one line, separated by a tab, so that
        # "<td>Nombre del Cliente</td><td>Compensar</td>" reads as label and value.
        self._cells_in_row = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self._pre += 1
        if tag in _SKIP:
            self._skip += 1
        elif tag == "tr":
            self._cells_in_row = 0
            self.parts.append("\n")
        elif tag in ("td", "th"):
            if self._cells_in_row:
                self.parts.append("\t")
            self._cells_in_row += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "br":
            return  # "<br/>" already broke the line
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self.parts.append(data.replace("\t", "    "))
        else:
            # Source line breaks and indentation are not text in HTML.
            self.parts.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def html_to_text(markup: str) -> str:
    """Readable text of an HTML body: blocks and <br> break lines, table cells are tab-separated."""
    if not isinstance(markup, str) or not markup:
        return ""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # malformed markup: fall back to stripping tags
        text = html.unescape(re.sub(r"<[^>]+>", " ", markup))
    text = text.replace("\xa0", " ").replace("\r\n", "\n").replace("\r", "\n")
    lines = []
    for line in text.splitlines():
        cells = [re.sub(r"[ \f\v]+", " ", cell).strip() for cell in line.split("\t")]
        lines.append("\t".join(cell for cell in cells if cell))
    result = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if not result and "<" in markup:
        # An unclosed <head> or <style> swallowed everything: strip the tags instead.
        stripped = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>|<[^>]+>", " ", markup)
        result = re.sub(r"[ \t]+", " ", html.unescape(stripped)).strip()
    return result
