"""tierstore: tiered storage for machine-learning shards.

An LMDB hot tier on local NVMe and an S3-compatible archive tier, moved between
by access-frequency policies, with encrypted, zero-copy Arrow reads.

Importing this package is cheap: heavy dependencies (boto3, torch, numba) are
imported by the modules that need them, when they are first used.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
