"""The node keeps its last live admin token: revoked only with force, whoever asks.

The guard once stood in the CLI alone: a client library's ``revoke_token`` of the last
admin token locked every admin out until the node restarted, with no word of warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.server.conftest import ServerProcess
from tests.server.test_e2e_cli import one_line_error, run
from tierstore.errors import FailedPrecondition, Unauthenticated


def test_the_last_admin_token_is_kept_unless_forced_from_the_library_and_the_cli(
    spawn_server: Callable[..., ServerProcess],
) -> None:
    node = spawn_server()
    env = node.cli_env()
    with node.connect() as admin:
        token_id = admin.token_id
        assert token_id is not None
        with pytest.raises(FailedPrecondition, match=f"{token_id} is the last live admin token"):
            admin.revoke_token(token_id)
        refused = run(env, "token", "revoke", token_id)
        assert refused.returncode == 1, refused.stderr
        line = one_line_error(refused)
        assert "FailedPrecondition" in line and "--force" in line
        # Refused both times: the token still works.
        assert [t["revoked"] for t in admin.list_tokens() if t["token_id"] == token_id] == [False]

        forced = run(env, "token", "revoke", token_id, "--force")
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout)["last_admin"] is True
        assert "last live admin token" in forced.stderr.decode()
        with pytest.raises(Unauthenticated):
            admin.list_tokens()
