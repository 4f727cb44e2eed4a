"""Generated landing files for the ingest tests: good records mixed with every record-level defect,
in CSV and JSON Lines, with the outcome each physical record must have.

A file is built record by record; for each record the generator knows the physical line it starts
on and where it must end up: Silver (``"silver"``), a duplicate of an earlier record (``"dup"``),
or quarantine with a reason code. Blank lines are not records.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

COLUMNS = [
    "transaction_id",
    "event_time",
    "card_id",
    "customer_id",
    "merchant_id",
    "amount",
    "currency",
    "channel",
    "merchant_category",
    "country",
    "is_fraud",
]
HEADER = ",".join(COLUMNS)

# record-level defects and the outcome of a record carrying one
CSV_DEFECTS = {
    "short_row": "malformed_record",
    "long_row": "malformed_record",
    "quote_closed_mid_field": "malformed_record",
    "whitespace_line": "malformed_record",
    "invalid_amount_scale": "invalid_type",
    "fractional_label": "invalid_type",
    "hex_label": "invalid_type",
    "integral_label_with_point": "silver",
    "missing_card": "missing_required",
    "future_event": "implausible_event_time",
    "ancient_event": "implausible_event_time",
    "negative_amount": "out_of_range",
    "unknown_currency": "unknown_category",
    "exact_duplicate": "dup",
    "key_duplicate": "dup",
    "multiline_value": "silver",
    "quoted_comma": "silver",
}
JSONL_DEFECTS = {
    "truncated_json": "malformed_record",
    "not_an_object": "malformed_record",
    "duplicate_key": "malformed_record",
    "object_value": "malformed_record",
    "control_character": "malformed_record",
    "invalid_amount_scale": "invalid_type",
    "label_as_float": "invalid_type",
    "integral_label_as_float": "silver",
    "missing_card": "missing_required",
    "future_event": "implausible_event_time",
    "negative_amount": "out_of_range",
    "unknown_currency": "unknown_category",
    "exact_duplicate": "dup",
    "key_duplicate": "dup",
    "amount_as_number": "silver",
}


@dataclass
class Expected:
    """What a generated file must become: per record's first physical line, its outcome."""

    # "silver" and "dup" records are *kept*: the latest version of a key is in Silver, the others in
    # the duplicates table (which one wins is checked from the tables)
    outcomes: dict[int, str] = field(default_factory=dict)
    blank_lines: int = 0

    @property
    def records(self) -> int:
        return len(self.outcomes)


def _good(rng: random.Random, n: int, prefix: str) -> dict[str, str]:
    return {
        "transaction_id": f"{prefix}_{n:07d}",
        "event_time": f"2024-03-01T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
        "card_id": f"card_{rng.randrange(50)}",
        "customer_id": f"c{rng.randrange(50)}",
        "merchant_id": f"m{rng.randrange(20)}",
        "amount": f"{rng.randrange(1, 100000) / 100:.2f}",
        "currency": rng.choice(["USD", "EUR", "GBP"]),
        "channel": rng.choice(["pos", "online", "atm", "contactless"]),
        "merchant_category": rng.choice(["grocery", "fuel", "travel"]),
        "country": "US",
        "is_fraud": rng.choice(["0", "0", "1"]),
    }


def _csv_line(values: list[str], terminator: str) -> str:
    """RFC 4180: a field with a delimiter, quote or any line end is quoted, quotes doubled."""
    out = []
    for v in values:
        if any(c in v for c in ',"\r\n'):
            v = '"' + v.replace('"', '""') + '"'
        out.append(v)
    return ",".join(out) + terminator


def csv_file(
    rng: random.Random, n: int, defect_rate: float, terminator: str = "\n", blank_rate: float = 0.0, prefix: str = "t"
) -> tuple[bytes, Expected]:
    """A CSV file of ``n`` records (before blank lines), each defective with ``defect_rate``."""
    exp = Expected()
    out = [HEADER + terminator]
    line = 2
    sent: list[dict[str, str]] = []
    for i in range(n):
        if rng.random() < blank_rate:
            out.append(terminator)
            exp.blank_lines += 1
            line += 1
        rec = _good(rng, i, prefix)
        kind = rng.choice(list(CSV_DEFECTS)) if rng.random() < defect_rate else "good"
        if kind in ("exact_duplicate", "key_duplicate") and not sent:
            kind = "good"
        outcome = "silver" if kind == "good" else CSV_DEFECTS[kind]
        text = None
        if kind == "short_row":
            values = [rec[c] for c in COLUMNS]
            del values[rng.randrange(1, len(values)) :]
            text = ",".join(values) + terminator
        elif kind == "long_row":
            text = ",".join([rec[c] for c in COLUMNS] + ["x"] * rng.randrange(1, 4)) + terminator
        elif kind == "quote_closed_mid_field":
            rec["merchant_id"] = '"m1"x'
            text = ",".join(rec[c] for c in COLUMNS) + terminator
        elif kind == "whitespace_line":
            text = " " * rng.randrange(1, 4) + terminator
        elif kind == "invalid_amount_scale":
            rec["amount"] = rng.choice(["12.505", "0.005", "1e1"])
        elif kind == "fractional_label":
            rec["is_fraud"] = rng.choice(["0.6", "1.4", "1.01", "1e0"])
        elif kind == "integral_label_with_point":  # how pandas writes an int column with gaps
            rec["is_fraud"] = rng.choice(["1.0", "0.00", "1."])
        elif kind == "hex_label":
            rec["is_fraud"] = "0x1"
        elif kind == "missing_card":
            rec["card_id"] = ""
        elif kind == "future_event":
            rec["event_time"] = rng.choice(["2030-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
        elif kind == "ancient_event":
            rec["event_time"] = "1900-01-01T00:00:00Z"
        elif kind == "negative_amount":
            rec["amount"] = "-" + rec["amount"]
        elif kind == "unknown_currency":
            rec["currency"] = "XYZ"
        elif kind == "exact_duplicate":
            rec = dict(rng.choice(sent))
        elif kind == "key_duplicate":
            rec = {**rng.choice(sent), "amount": f"{rng.randrange(1, 100000) / 100:.2f}"}
        elif kind == "multiline_value":
            rec["merchant_id"] = "m\n" + str(rng.randrange(9))
        elif kind == "quoted_comma":
            rec["merchant_id"] = 'Shop, "the best"'
        if text is None:
            text = _csv_line([rec[c] for c in COLUMNS], terminator)
        if outcome in ("silver", "dup"):
            sent.append(rec)
        out.append(text)
        exp.outcomes[line] = outcome
        line += line_ends(text)
    return "".join(out).encode("utf-8"), exp


def jsonl_file(
    rng: random.Random, n: int, defect_rate: float, terminator: str = "\n", blank_rate: float = 0.0, prefix: str = "j"
) -> tuple[bytes, Expected]:
    """A JSON Lines file of ``n`` records (before blank lines), each defective with ``defect_rate``."""
    exp = Expected()
    out = []
    line = 1
    sent: list[dict[str, object]] = []
    for i in range(n):
        if rng.random() < blank_rate:
            out.append(rng.choice(["", "  ", "\t"]) + terminator)
            exp.blank_lines += 1
            line += 1
        rec: dict[str, object] = dict(_good(rng, i, prefix))
        kind = rng.choice(list(JSONL_DEFECTS)) if rng.random() < defect_rate else "good"
        if kind in ("exact_duplicate", "key_duplicate") and not sent:
            kind = "good"
        outcome = "silver" if kind == "good" else JSONL_DEFECTS[kind]
        text = None
        if kind == "truncated_json":
            full = json.dumps(rec)
            text = full[: rng.randrange(1, len(full) - 1)]
        elif kind == "not_an_object":
            text = rng.choice(["[1, 2]", "42", '"text"', "null"])
        elif kind == "duplicate_key":
            body = json.dumps(rec)
            text = body[:-1] + ', "amount": "1.00"}'
        elif kind == "object_value":
            rec[rng.choice(["transaction_id", "card_id", "amount"])] = rng.choice([{"a": 1}, [1, 2]])
        elif kind == "control_character":
            text = json.dumps(rec)[:-1] + ', "x": 1}\x1f'
        elif kind == "invalid_amount_scale":
            rec["amount"] = "12.505"
        elif kind == "label_as_float":
            rec["is_fraud"] = 1.5
        elif kind == "integral_label_as_float":
            rec["is_fraud"] = 1.0
        elif kind == "missing_card":
            del rec["card_id"]
        elif kind == "future_event":
            rec["event_time"] = "2030-06-01T00:00:00Z"
        elif kind == "negative_amount":
            rec["amount"] = "-1.00"
        elif kind == "unknown_currency":
            rec["currency"] = "XYZ"
        elif kind == "exact_duplicate":
            rec = dict(rng.choice(sent))
        elif kind == "key_duplicate":
            rec = {**rng.choice(sent), "amount": f"{rng.randrange(1, 100000) / 100:.2f}"}
        elif kind == "amount_as_number":
            rec["amount"] = rng.randrange(1, 100000) / 100
        if text is None:
            text = json.dumps(rec)
        if outcome in ("silver", "dup"):
            sent.append(rec)
        out.append(text + terminator)
        exp.outcomes[line] = outcome
        line += 1
    return "".join(out).encode("utf-8"), exp


def line_ends(text: str) -> int:
    """Line ends in ``text`` with universal newlines (LF, CRLF, lone CR)."""
    return text.count("\r\n") + text.replace("\r\n", "").count("\r") + text.replace("\r\n", "").count("\n")
