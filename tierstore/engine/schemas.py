"""A dataset's Arrow schema: every shard put into a dataset that has one must have it.

A dataset may be made with an Arrow schema (:attr:`tierstore.types.DatasetSettings.arrow_schema`,
fixed at creation, like its encryption): then every shard put into it is an Arrow
table whose schema equals it, field names, types and nullability, schema and field
metadata aside. A schema of a tensor (tierstore's tensor metadata) makes a tensor
dataset: it takes tensors of that dtype and of that shape past the first axis, as the
metadata records them (the Arrow type's row layout depends on the frame size a tensor
was cut with). Raw bytes are refused there. The check reads a put's first
frame, its schema message, and is made when the put starts and again in its commit's
transaction, against the settings it reads there (a dataset deleted and made again
with another schema meanwhile refuses it). The service makes it at a streamed put's
first frame too, so a shard of another schema is refused before its sender sends the
rest of it.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from tierstore import arrowio
from tierstore.errors import SchemaMismatch
from tierstore.tensors import tensor_kind
from tierstore.types import DatasetSettings, ShardKind

__all__ = ["schema_check"]


def schema_check(
    dataset: str, shard: str, kind: ShardKind, schema_frame: Callable[[], bytes | memoryview]
) -> Callable[[DatasetSettings], None]:
    """A check of a put of ``dataset/shard``, a shard of ``kind`` whose first frame
    ``schema_frame()`` gives, against the dataset's settings: raises SchemaMismatch when
    the settings name an Arrow schema the shard does not have (MalformedArrow for a first
    frame that is no schema message). Reads the schema frame once, at its first use."""
    found: list[pa.Schema] = []

    def check(settings: DatasetSettings) -> None:
        if not settings.arrow_schema:
            return
        expected = arrowio.schema_of_message(settings.arrow_schema)
        if kind is ShardKind.RAW:
            raise SchemaMismatch(
                f"dataset {dataset!r} takes Arrow shards of its schema only, and "
                f"{shard!r} is raw bytes"
            )
        if not found:
            found.append(arrowio.schema_of_message(schema_frame()))
        wanted = tensor_kind(expected)
        if wanted is not None:  # a tensor dataset: dtype and shape past the first axis
            got = tensor_kind(found[0])
            if got != wanted:
                what = f"a {got} tensor" if got is not None else "no tensor"
                raise SchemaMismatch(
                    f"{dataset}/{shard} is {what}; dataset {dataset!r} takes {wanted} tensors only"
                )
            return
        difference = arrowio.schema_difference(found[0], expected)
        if difference:
            raise SchemaMismatch(
                f"{dataset}/{shard} does not have dataset {dataset!r}'s Arrow schema: {difference}"
            )

    return check
