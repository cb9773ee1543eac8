"""Strict line-by-line reading of UTF-8 text files (corpora, task files, vocabularies).

A file is read as bytes and decoded one line at a time, so an undecodable byte is reported as
``path:line`` plus its byte offset in the file (a ``UnicodeDecodeError``'s ``start`` counts
from the decoder's chunk, not from the start of the file). A line holding a NUL byte is
reported as a binary file (a ``.bin``, a gzip, a model file passed by mistake): UTF-8 text
never holds NUL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

BOM = "\ufeff"


def iter_lines(path: str | Path, error_type: type[Exception] = ValueError
               ) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of ``path`` (1-based numbers).

    ``text`` has its line ending (``"\\n"``, ``"\\r\\n"``) removed; a UTF-8 byte-order mark at
    the start of the file is dropped. A line that is not UTF-8, or holds a NUL byte, raises
    ``error_type("path:line: ... byte offset N ...")``.
    """
    offset = 0  # bytes before the current line
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is None or "\x00" in text:
                raise error_type(describe_bad_line(raw, f"{path}:{number}", offset))
            yield number, (text.removeprefix(BOM) if number == 1 else text).rstrip("\r\n")
            offset += len(raw)


def describe_bad_line(raw: bytes, where: str, offset: int) -> str:
    """Why ``raw`` (one line starting at byte ``offset`` of the file ``where`` = ``"path:line"``
    names) is not UTF-8 text: a NUL byte (a binary file), or the first invalid byte."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        return (f"{where}: NUL byte at byte offset {offset + nul}: the file looks binary "
                f"(a .bin, a gzip or a model file?), not UTF-8 text")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (f"{where}: invalid UTF-8 (byte 0x{raw[bad.start]:02x}) at byte offset "
                f"{offset + bad.start}; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")
    raise ValueError(f"{where}: describe_bad_line was given a valid line")


def read_lines(path: str | Path, error_type: type[Exception] = ValueError) -> list[str]:
    """All lines of ``path`` (see ``iter_lines``)."""
    return [text for _, text in iter_lines(path, error_type)]
