"""Rotating a master key file (``LocalKeyring.rotated_file``): never a repeated key id,
never a dropped key, never a torn file, whoever rotates the file at the same time, and
never an id a key retired from the file had."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tierstore.crypto import LocalKeyring, retired_keys_path
from tierstore.errors import KeyRotationRefused

# A child process: load the key file, say "ready", wait for a line, rotate ROUNDS times,
# print the key ids it made.
_ROTATOR = """
import sys
from pathlib import Path
from tierstore.crypto import LocalKeyring, retired_keys_path

path, rounds = Path(sys.argv[1]), int(sys.argv[2])
ring = LocalKeyring.from_file(path)
print("ready", flush=True)
sys.stdin.readline()
made = []
for _ in range(rounds):
    ring = ring.rotated_file(path)
    made.append(ring.current)
print(" ".join(made), flush=True)
"""


def files_beside(path: Path) -> set[str]:
    return {entry.name for entry in path.parent.iterdir()}


def test_concurrent_rotations_of_one_file_make_distinct_ids_and_keep_both_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "master.keys"
    start = LocalKeyring.generate_file(path)
    barrier = threading.Barrier(2)

    def rotate() -> LocalKeyring:
        barrier.wait(timeout=10)
        return start.rotated_file(path)  # both from the same, now stale, keyring

    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(rotate), pool.submit(rotate)]
        first, second = [call.result(timeout=30) for call in calls]
    assert first.current != second.current
    on_file = LocalKeyring.from_file(path)
    assert set(on_file.keys) == {"k1", first.current, second.current}
    for ring in (first, second):
        assert on_file.keys[ring.current] == ring.keys[ring.current]
    # The later rotation found the earlier one's key in the file and kept it.
    later = first if on_file.current == first.current else second
    assert dict(later.keys) == dict(on_file.keys)
    assert files_beside(path) == {"master.keys", "master.keys.lock"}  # no temporary left


@pytest.mark.timeout(120)
def test_rotations_from_two_processes_keep_every_key(tmp_path: Path) -> None:
    path = tmp_path / "master.keys"
    LocalKeyring.generate_file(path)
    rounds = 25
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _ROTATOR, str(path), str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:  # each has loaded the file and waits
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            child.kill()
    for child, (_, errors) in zip(children, outputs, strict=True):
        assert child.returncode == 0, errors
    made = [key_id for out, _ in outputs for key_id in out.split()]
    assert len(made) == len(set(made)) == 2 * rounds
    on_file = LocalKeyring.from_file(path)
    assert set(on_file.keys) == {"k1", *made}
    assert len(set(on_file.keys.values())) == len(on_file.keys)


def test_a_rotation_that_would_drop_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.keys"
    start = LocalKeyring.generate_file(path)
    before = path.read_bytes()
    rotated = start.rotated_file(path)
    after = path.read_bytes()
    # Someone puts the old file back: k2, which records may be wrapped with, is gone.
    path.write_bytes(before)
    with pytest.raises(KeyRotationRefused, match=r"\['k2'\]"):
        rotated.rotated_file(path)
    assert path.read_bytes() == before
    # The same id under other bytes is refused too.
    other = LocalKeyring(keys={**rotated.keys, "k2": os.urandom(32)}, current="k2")
    path.write_bytes(after)
    with pytest.raises(KeyRotationRefused, match=r"\['k2'\]"):
        other.rotated_file(path)
    assert path.read_bytes() == after
    path.unlink()
    with pytest.raises(KeyRotationRefused, match="cannot load key file"):
        rotated.rotated_file(path)
    assert not path.exists()


def test_a_failed_write_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "master.keys"
    start = LocalKeyring.generate_file(path)
    before = path.read_bytes()

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(KeyRotationRefused, match="No space left"):
        start.rotated_file(path)
    assert path.read_bytes() == before
    assert files_beside(path) == {"master.keys", "master.keys.lock"}
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def retire_all_but_current(path: Path) -> LocalKeyring:
    """What the docs allow once a rotation has finished: drop every key but the current."""
    document = json.loads(path.read_text())
    current = document["current"]
    path.write_text(json.dumps({"current": current, "keys": {current: document["keys"][current]}}))
    return LocalKeyring.from_file(path)


def test_an_id_a_retired_key_had_is_never_given_to_another_key(tmp_path: Path) -> None:
    path = tmp_path / "master.keys"
    ring = LocalKeyring.generate_file(path).rotated_file(path)  # k1, k2
    given: dict[str, bytes] = dict(ring.keys)
    for _ in range(3):
        ring = retire_all_but_current(path).rotated_file(path)
        assert ring.current not in given, (ring.current, sorted(given))
        given[ring.current] = ring.keys[ring.current]
    assert ring.current == "k5"
    # Ids that are not k<n> (a key from elsewhere) do not count; the highest k<n> does.
    path.write_text(
        json.dumps({"current": "k9", "keys": {"ext": "A" * 43 + "=", "k9": "B" * 43 + "="}})
    )
    assert LocalKeyring.from_file(path).rotated_file(path).current == "k10"


def test_a_rotation_through_a_symbolic_link_rewrites_the_file_it_names(tmp_path: Path) -> None:
    # The node's key file may be a link to a copy kept elsewhere: that copy must get the
    # new key, and the link stay a link.
    kept = tmp_path / "vault" / "master.keys"
    kept.parent.mkdir()
    start = LocalKeyring.generate_file(kept)
    link = tmp_path / "master.keys"
    link.symlink_to(kept)
    rotated = start.rotated_file(link)
    assert link.is_symlink() and link.resolve() == kept
    assert LocalKeyring.from_file(kept).keys == rotated.keys
    assert set(rotated.keys) == {start.current, rotated.current}


def test_rewrites_keep_the_key_file_group_and_its_read_bit(tmp_path: Path) -> None:
    # Nodes sharing a key file may read it through a group of their own (mode 640, which
    # the node accepts): a rotation or a retirement must leave it so, and the retired
    # keys beside it too, or the other nodes could not load the keys at their next start.
    path = tmp_path / "master.keys"
    ring = LocalKeyring.generate_file(path)
    group = 4321 if os.geteuid() == 0 else os.getegid()  # another group, where allowed
    os.chown(path, -1, group)
    path.chmod(0o640)
    ring = ring.rotated_file(path)
    ring.retired_file(path, "k1")
    for written in (path, retired_keys_path(path)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o640, written
        assert written.stat().st_gid == group, written
    path.chmod(0o600)  # an owner-only file stays owner-only
    LocalKeyring.from_file(path).rotated_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
