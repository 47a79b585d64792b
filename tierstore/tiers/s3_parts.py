"""Multipart uploads: a stream of buffers re-cut into fixed-size parts and sent as one upload.

Every part but the last is exactly ``multipart_part_size`` bytes (S3 wants at
least 5 MiB; an upload has at most 10,000 parts). The stream is never joined in
memory: at most one part and the chunks it is cut from are held, and each part's
bytes are copied once. An upload that
fails at any point is aborted, so no orphaned parts are left to cost storage; one
whose process was killed (or whose archive died before the abort) is aborted when a
store next opens on the prefix (``S3Tier.abort_incomplete_uploads``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Final

from tierstore.errors import ArchiveUnavailable, InvalidArgument
from tierstore.tiers.s3_connection import S3Settings
from tierstore.tiers.s3_retry import call_with_retries

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["fixed_parts", "put_multipart"]

_MAX_PARTS: Final = 10_000


def fixed_parts(chunks: Iterable[memoryview], size: int) -> Iterator[bytes]:
    """Re-cut a stream of chunks into parts of exactly ``size`` bytes (the last may be shorter).

    Each part is built with one copy of its bytes (a join of views into the chunks,
    which also skips the zero-fill a preallocated buffer would need). Holds the
    chunks that make up the part being built: at most one part plus two chunks of
    the stream. Never yields an empty part.
    """
    pieces: list[memoryview] = []
    filled = 0
    for chunk in chunks:
        position = 0
        while len(chunk) - position >= size - filled:
            end = position + size - filled
            pieces.append(chunk[position:end])
            position = end
            yield b"".join(pieces)
            pieces.clear()
            filled = 0
        if position < len(chunk):
            pieces.append(chunk[position:])
            filled += len(chunk) - position
    if filled:
        yield b"".join(pieces)


def put_multipart(
    client: S3Client, settings: S3Settings, full_key: str, parts: Iterable[bytes]
) -> None:
    """Upload ``parts``, in order, as one multipart upload of ``full_key``.

    Aborts the upload on any failure, then re-raises it. Raises ArchiveUnavailable,
    and InvalidArgument past 10,000 parts. Thread-safe.
    """
    bucket = settings.bucket
    what = f"multipart PUT {bucket}/{full_key}"
    create = partial(client.create_multipart_upload, Bucket=bucket, Key=full_key)
    created = call_with_retries(settings, what, create)
    upload_id = created["UploadId"]
    try:
        done: list[CompletedPartTypeDef] = []
        for number, part in enumerate(parts, start=1):
            if number > _MAX_PARTS:
                raise InvalidArgument(f"{what}: over {_MAX_PARTS} parts; raise the part size")
            answer = call_with_retries(
                settings,
                f"{what} part {number}",
                partial(
                    client.upload_part,
                    Bucket=bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                ),
            )
            done.append({"ETag": answer["ETag"], "PartNumber": number})
        call_with_retries(
            settings,
            f"{what} complete",
            partial(
                client.complete_multipart_upload,
                Bucket=bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            ),
        )
    except BaseException as exc:
        try:
            call_with_retries(
                settings,
                f"{what} abort",
                partial(
                    client.abort_multipart_upload,
                    Bucket=bucket,
                    Key=full_key,
                    UploadId=upload_id,
                ),
            )
        except ArchiveUnavailable as abort_exc:
            exc.add_note(f"aborting multipart upload {upload_id} also failed: {abort_exc}")
        raise
