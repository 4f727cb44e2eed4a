"""One streaming pass over a landed file: checksum, encoding, and its physical records.

The lakehouse never trusts its CSV or JSON reader to have seen every record: a reader can drop
a record it cannot hold (a line longer than its buffer), or read line endings it does not
expect as content. :func:`scan_file` counts the file's records independently, with the same
rules the ingest step documents, so the ingest step can prove that the reader returned exactly
one Bronze row per physical record (and reject the file, with the numbers, when not).

The rules:

* A line ends at LF, CRLF or a lone CR (universal newlines); the same in every format.
* JSON Lines: every line is a record; a line that is empty or holds only spaces and tabs is
  *blank* (skipped, counted).
* CSV (RFC 4180, quote ``"``, a quote inside a quoted field doubled): a record ends at a line
  end outside a quoted field; a quote opens a quoted field only at the start of a field, anywhere
  else it is an ordinary character; an unterminated quoted field runs to the end of the file
  (one record). An empty line is blank. The first record is the header.

Counting is vectorised (numpy) over chunks; a chunk whose quotes are not RFC 4180 (a quote in
the middle of a field, a quoted field closed in the middle of one) is split by an exact state
machine instead, slower. Pure: no DuckDB, no Iceberg.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHUNK = 4 << 20
LF, CR, QUOTE, SPACE, TAB = 10, 13, 34, 32, 9
BOM = b"\xef\xbb\xbf"
_CONTROLS = ("\x1f", "\x1e", "\x1d", "\x1c")  # candidate delimiters for reading whole lines

# states of the exact CSV state machine
_START, _UNQUOTED, _QUOTED, _QUOTE_SEEN = 0, 1, 2, 3


@dataclass
class FileScan:
    """What one pass over a file found. Offsets are bytes from the start of the file."""

    sha256: str
    size: int
    head: bytes  # the first bytes, for naming what a binary file is
    lines: int = 0  # physical lines (universal newlines), blank ones and the header included
    records: int = 0  # non-blank records, the CSV header included
    blank: int = 0  # blank lines (not records)
    lf: int = 0  # record ends by kind (CSV: outside quoted fields only)
    crlf: int = 0
    cr: int = 0
    longest: int = 0  # bytes of the longest record (line end excluded)
    longest_line: int = 0  # the physical line where it starts
    multiline: bool = False  # a CSV record spans lines (a line end inside quotes)
    nul_offset: int | None = None  # first NUL byte
    invalid_utf8: tuple[int, int] | None = None  # (offset, line) of the first invalid UTF-8 byte
    bom: bool = False
    quote_error: tuple[int, int] | None = None  # (offset, line): a quoted field closed mid-field
    controls: set[str] = field(default_factory=set)  # which of U+001C..U+001F the file holds
    # only for irregular files (blank lines or multi-line records): per record after the header,
    # blank ones included, its first physical line and whether it is blank
    seq_lines: np.ndarray | None = field(default=None, repr=False)
    seq_blank: np.ndarray | None = field(default=None, repr=False)

    @property
    def only_lf(self) -> bool:
        return self.crlf == 0 and self.cr == 0

    @property
    def regular(self) -> bool:
        """Every record is one line and no line is blank: record n is physical line n."""
        return not self.blank and not self.multiline

    def endings(self) -> str:
        kinds = [f"{n} {k}" for k, n in (("LF", self.lf), ("CRLF", self.crlf), ("CR", self.cr)) if n]
        return ", ".join(kinds) or "none"


class _Splitter:
    """Record ends of a byte stream, chunk by chunk: universal newlines; for CSV only those
    outside quoted fields. A chunk handed in never ends with a CR unless the stream ends."""

    def __init__(self, csv_delim: int | None):
        self.csv = csv_delim is not None
        self.delim = csv_delim if csv_delim is not None else -1
        self.parity = 0  # quotes seen so far, mod 2 (the fast path)
        self.exact = False  # the last chunk was split by the exact state machine
        self.state = _START
        self.prev = -1  # last byte of the previous chunk (-1: start of the stream)
        self.base = 0  # offset of the current chunk
        self.quote_error: int | None = None  # offset of the first quoted field closed mid-field
        delim = re.escape(bytes([self.delim])) if self.csv else b""
        self._pattern = re.compile(b'["\\r\\n' + delim + b"]")

    def split(self, a: np.ndarray, b: bytes, phys: np.ndarray, plen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions where a record's content ends in this chunk, and the length (1 or 2) of
        the line end there. ``phys``/``plen``: every line end of the chunk (quotes ignored)."""
        if not self.csv:
            return phys, plen
        if self.exact:  # the previous chunk needed the exact machine: carry its state as parity
            self.parity = 1 if self.state == _QUOTED else 0
            if self.state == _UNQUOTED:
                self.prev = ord("a")  # in the middle of a field: a quote here is not an opening one
            elif self.state == _START:
                self.prev = self.delim
            self.exact = False
        quotes = np.flatnonzero(a == QUOTE)
        if quotes.size == 0 and not self.parity and not (self.prev == QUOTE and a.size and a[0] != self.delim):
            if a.size:
                self.prev = int(a[-1])
            return phys, plen
        # a quote with an even number of quotes before it opens a quoted field: valid only at a
        # field start (or as the second quote of a doubled pair); anything else needs the exact
        # state machine, from this chunk on
        opening = quotes[((self.parity + np.arange(quotes.size)) & 1) == 0]
        # and a quote closing a quoted field must end the field (or be doubled)
        closing = quotes[((self.parity + np.arange(quotes.size)) & 1) == 1]
        ok = True
        if opening.size:
            before = np.where(opening > 0, a[np.maximum(opening - 1, 0)].astype(np.int64), self.prev)
            ok = bool(np.isin(before, (self.delim, LF, CR, QUOTE, -1)).all())
        if ok and closing.size:
            inner = closing[closing + 1 < a.size]
            ok = bool(np.isin(a[inner + 1], (self.delim, LF, CR, QUOTE)).all())
        if ok and not self.parity and self.prev == QUOTE and a.size:  # the last chunk ended by closing a field
            ok = int(a[0]) in (self.delim, LF, CR, QUOTE)
        if not ok:
            self.exact = True
            self.state = self._state_from_parity()
            return self._exact(b)
        inside = (self.parity + np.searchsorted(quotes, phys)) & 1
        self.parity = (self.parity + int(quotes.size)) & 1
        self.prev = int(a[-1])
        keep = inside == 0
        return phys[keep], plen[keep]

    def _state_from_parity(self) -> int:
        if self.parity:
            return _QUOTED
        if self.prev == QUOTE:
            return _QUOTE_SEEN
        if self.prev in (self.delim, LF, CR, -1):
            return _START
        return _UNQUOTED

    def _exact(self, b: bytes) -> tuple[np.ndarray, np.ndarray]:
        ends: list[int] = []
        tlen: list[int] = []
        state, last, skip = self.state, -1, -1
        n = len(b)
        for m in self._pattern.finditer(b):
            i = m.start()
            if i == skip:
                last = i
                continue
            if i > last + 1 and state in (_START, _QUOTE_SEEN):
                if state == _QUOTE_SEEN and self.quote_error is None:
                    self.quote_error = self.base + last + 1
                state = _UNQUOTED  # ordinary bytes since the last special one
            last = i
            c = b[i]
            if state == _QUOTED:
                if c == QUOTE:
                    state = _QUOTE_SEEN
                continue
            if c == QUOTE:
                state = _QUOTED if state in (_START, _QUOTE_SEEN) else _UNQUOTED
            elif c == self.delim:
                state = _START
            else:  # a line end outside quotes
                two = c == CR and i + 1 < n and b[i + 1] == LF
                ends.append(i)
                tlen.append(2 if two else 1)
                if two:
                    skip = i + 1
                state = _START
        if n and last < n - 1 and state in (_START, _QUOTE_SEEN):
            if state == _QUOTE_SEEN and self.quote_error is None:
                self.quote_error = self.base + last + 1
            state = _UNQUOTED
        self.state = state
        if n:
            self.prev = b[-1]
        return np.asarray(ends, dtype=np.int64), np.asarray(tlen, dtype=np.int64)


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file in chunks that never end with a CR (a CR is carried into the next chunk), so a
    CRLF is never split; the last chunk may end with one."""
    carry = b""
    with path.open("rb") as f:
        while True:
            data = f.read(size)
            if not data:
                if carry:
                    yield carry
                return
            data = carry + data
            carry = b""
            if data.endswith(b"\r"):
                data, carry = data[:-1], b"\r"
            if data:
                yield data


def scan_file(path: Path, fmt: str, csv_delimiter: str = ",", chunk_size: int = CHUNK) -> FileScan:
    """Checksum, size, encoding problems and the records of a landed file, in one pass.

    ``fmt`` is ``csv`` or ``jsonl``; any other format is only checksummed.
    """
    h = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    out = FileScan(sha256="", size=0, head=b"")
    records = fmt in ("csv", "jsonl")
    splitter = _Splitter(ord(csv_delimiter) if fmt == "csv" else None)
    jsonl = fmt == "jsonl"
    base = 0  # offset of the current chunk
    lines_before = 0  # physical line ends before the current chunk
    rec_start = 0  # offset where the current (unfinished) record starts
    rec_line = 1  # its first physical line
    rec_content = False  # JSON Lines: the unfinished record has a byte other than space/tab
    seq_lines: list[np.ndarray] = []
    seq_blank: list[np.ndarray] = []
    last_byte = b""
    for b in _chunks(path, chunk_size):
        h.update(b)
        if base == 0:
            out.head = b[:16]
            if b.startswith(BOM):
                out.bom = True
                rec_start = len(BOM)
        for c in _CONTROLS:
            if c not in out.controls and c.encode() in b:
                out.controls.add(c)
        if out.nul_offset is None:
            k = b.find(b"\x00")
            if k >= 0:
                out.nul_offset = base + k
        if out.invalid_utf8 is None and not (b.isascii() and not decoder.getstate()[0]):
            try:
                decoder.decode(b)
            except UnicodeDecodeError as exc:
                where = base + exc.start
                before = np.frombuffer(b[: exc.start], dtype=np.uint8)
                out.invalid_utf8 = (where, lines_before + int(_line_ends(before)[0].size) + 1)
        last_byte = b[-1:]
        if not records:
            base += len(b)
            continue
        a = np.frombuffer(b, dtype=np.uint8)
        phys, plen = _line_ends(a)
        splitter.base = base
        ends, tlen = splitter.split(a, b, phys, plen)
        if splitter.quote_error is not None and out.quote_error is None:
            k = splitter.quote_error - base
            out.quote_error = (splitter.quote_error, lines_before + int(np.searchsorted(phys, k)) + 1)
        if ends.size:
            ends_abs = base + ends
            nexts = ends_abs + tlen
            starts = np.concatenate(([rec_start], nexts[:-1]))
            lengths = ends_abs - starts
            if jsonl:
                blank = _blank_lines(a, b, np.maximum(starts - base, 0), ends)
                blank[0] = blank[0] and not rec_content
            else:
                blank = lengths == 0
            # the physical line where each record starts
            start_lines = np.empty(ends.size, dtype=np.int64)
            start_lines[0] = rec_line
            if ends.size > 1:
                start_lines[1:] = lines_before + np.searchsorted(phys, nexts[:-1] - base) + 1
            if not jsonl and not out.multiline:
                end_lines = lines_before + np.searchsorted(phys, ends) + 1
                out.multiline = bool((end_lines != start_lines).any())
            nb = int(blank.sum())
            out.blank += nb
            out.records += int(ends.size) - nb
            k = int(np.argmax(lengths))
            if lengths[k] > out.longest:
                out.longest, out.longest_line = int(lengths[k]), int(start_lines[k])
            seq_lines.append(start_lines)
            seq_blank.append(blank)
            is_cr = a[ends] == CR
            two = tlen == 2
            out.crlf += int(two.sum())
            out.cr += int((is_cr & ~two).sum())
            out.lf += int((~is_cr).sum())
            rec_start = int(nexts[-1])
            rec_line = lines_before + int(np.searchsorted(phys, nexts[-1] - base)) + 1
            rec_content = False
        if jsonl and not rec_content:
            tail = a[max(rec_start - base, 0) :]
            rec_content = bool(((tail != SPACE) & (tail != TAB)).any())
        lines_before += int(phys.size)
        base += len(b)
    out.size = base
    out.sha256 = h.hexdigest()
    if not records:
        return out
    if base:
        out.lines = lines_before + (0 if last_byte in (b"\n", b"\r") else 1)
    rest = base - rec_start
    if rest > 0:  # a last record without a line end
        blank = jsonl and not rec_content
        out.blank += blank
        out.records += not blank
        seq_lines.append(np.array([rec_line], dtype=np.int64))
        seq_blank.append(np.array([blank]))
        if not blank and rest > out.longest:
            out.longest, out.longest_line = rest, rec_line
        if not jsonl and out.lines > rec_line:
            out.multiline = True
    if not out.regular and seq_lines:
        lines_all = np.concatenate(seq_lines)
        blank_all = np.concatenate(seq_blank)
        skip = 1 if fmt == "csv" else 0  # the header is not a data record
        out.seq_lines, out.seq_blank = lines_all[skip:], blank_all[skip:]
    return out


def _line_ends(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every physical line end of a chunk, quotes ignored: positions (LF, lone CR, the CR of a
    CRLF) and lengths (2 for CRLF)."""
    is_cr = a == CR
    ends = np.flatnonzero((a == LF) | is_cr)
    if not ends.size or not is_cr.any():
        return ends, np.ones(ends.size, dtype=np.int64)
    n = a.size
    # an LF right after a CR is the second byte of a CRLF
    ends = ends[~((ends > 0) & (a[ends] == LF) & (a[np.maximum(ends - 1, 0)] == CR))]
    nxt = np.minimum(ends + 1, n - 1)
    tlen = np.where((a[ends] == CR) & (ends + 1 < n) & (a[nxt] == LF), 2, 1)
    return ends, tlen


def _blank_lines(a: np.ndarray, b: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which of the lines [starts, ends) of a chunk hold nothing but spaces and tabs. A line that
    starts with another byte is not blank (almost every line: decided without looking further)."""
    empty = ends <= starts
    first = a[np.minimum(starts, max(a.size - 1, 0))] if a.size else np.zeros(starts.size, dtype=np.uint8)
    blank = empty | (first == SPACE) | (first == TAB)
    for i in np.flatnonzero(blank & ~empty):  # lines starting with a space or tab: look at them
        blank[i] = not b[starts[i] : ends[i]].strip(b" \t")
    return blank


def normalize_line_ends(path: Path, out: Path, fmt: str, csv_delimiter: str = ",", chunk_size: int = CHUNK) -> None:
    """Write ``path`` to ``out`` with every record end (CSV: outside quoted fields) as LF.

    Line ends inside quoted CSV fields are kept as they are: they are part of the value.
    """
    splitter = _Splitter(ord(csv_delimiter) if fmt == "csv" else None)
    with out.open("wb") as w:
        for b in _chunks(path, chunk_size):
            a = np.frombuffer(b, dtype=np.uint8)
            phys, plen = _line_ends(a)
            ends, tlen = splitter.split(a, b, phys, plen)
            if not ends.size:
                w.write(b)
                continue
            fixed = a.copy()
            lone = ends[(tlen == 1) & (a[ends] == CR)]
            fixed[lone] = LF
            keep = np.ones(a.size, dtype=bool)
            keep[ends[tlen == 2]] = False  # the CR of a CRLF
            w.write(fixed[keep].tobytes())
