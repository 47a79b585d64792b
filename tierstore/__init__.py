"""tierstore: tiered storage for machine-learning shards.

An LMDB hot tier on local NVMe and an S3-compatible archive tier, moved between
by access-frequency policies, with encrypted, zero-copy Arrow reads.

Importing this package is cheap: heavy dependencies (boto3, torch, numba) are
imported by the modules that need them, when they are first used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# DataLoader workers fork. gRPC channels opened in a forked child fail now and then
# unless fork support is on before grpc is first imported (DESIGN.md, section 5);
# every tierstore module is imported after this package, so set it here.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "1")

if TYPE_CHECKING:
    from tierstore.client.client import Client
    from tierstore.client.connect import connect

__all__ = ["Client", "__version__", "connect"]


def __getattr__(name: str) -> Any:
    # Lazy: `import tierstore` stays light; grpc loads on first use of the client.
    if name == "Client":
        from tierstore.client.client import Client

        return Client
    if name == "connect":
        from tierstore.client.connect import connect

        return connect
    raise AttributeError(f"module 'tierstore' has no attribute {name!r}")


__version__ = "0.1.0"
