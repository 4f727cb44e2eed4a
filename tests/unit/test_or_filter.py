"""The file manifest's replace filter over thousands of files in one landing date."""

from __future__ import annotations

from pyiceberg.expressions import And, EqualTo
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyiceberg.types import NestedField, StringType

from mlblueprints.lakehouse.local import _or_all


def test_thousands_of_clauses_bind_without_recursion():
    schema = Schema(
        NestedField(1, "source_file", StringType(), required=False),
        NestedField(2, "file_checksum", StringType(), required=False),
    )
    n = 10_000
    expr = _or_all(And(EqualTo("source_file", f"f{i}.csv"), EqualTo("file_checksum", f"c{i}")) for i in range(n))
    bound = bind(schema, expr, case_sensitive=True)  # a left-deep chain of 3,000 hit the recursion limit

    def leaves(e) -> list:
        return [e] if not hasattr(e, "left") or isinstance(e, And) else leaves(e.left) + leaves(e.right)

    assert len(leaves(bound)) == n  # every file's clause is kept, none twice
