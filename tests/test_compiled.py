"""The numba kernels import and run where numba has nowhere to write its cache.

A container with a read-only root filesystem leaves numba no cache locator: with a bare
``numba.njit(cache=True)`` the import itself failed ("cannot cache function ...: no
locator available"), and the node did not start. Here numba is told to try only the
locator for ``NUMBA_CACHE_DIR``, which is unset: the same "no locator" as on such a
filesystem, without needing one.
"""

from __future__ import annotations

import os
import subprocess
import sys

KERNELS_RUN = """
import numpy as np
from tierstore.policy.kernels import decayed_frequency
from tierstore.server.requestchecks import count_fields

print(count_fields(np.frombuffer(bytes([8, 1, 16, 2]), dtype=np.uint8), 0, 4, 10))
print(decayed_frequency(np.array([4.0]), np.array([0.0]), np.array([0]), 2.0, 1.0)[0])
"""


def test_the_kernels_run_without_a_place_for_numbas_cache() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env["NUMBA_CACHE_LOCATOR_CLASSES"] = "UserProvidedCacheLocator"
    done = subprocess.run(
        [sys.executable, "-c", KERNELS_RUN], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "1.0"]
