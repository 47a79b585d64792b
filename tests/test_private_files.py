"""Owner-only files (tierstore/private_files.py): restricting the mode of what is there."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tierstore.private_files import hold_lock_or_name_holder, lock_holder, restrict_mode


def test_a_regular_file_loses_group_and_other_bits(tmp_path: Path) -> None:
    secret = tmp_path / "admin.token"
    secret.write_text("t")
    secret.chmod(0o644)
    restrict_mode(secret)
    assert secret.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("target_mode", "warned"), [(0o644, True), (0o660, True), (0o640, False)])
def test_a_link_is_left_alone_and_an_open_target_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, target_mode: int, warned: bool
) -> None:
    # The link's target lives elsewhere (a secret mount): its mode is its keeper's. It
    # was changed through the link; then, left alone, a world-readable TLS key was
    # left without a word.
    target = tmp_path / "mount" / "server.key"
    target.parent.mkdir()
    target.write_text("k")
    target.chmod(target_mode)
    link = tmp_path / "server.key"
    link.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="tierstore.private_files"):
        restrict_mode(link)
    assert target.stat().st_mode & 0o777 == target_mode
    assert (str(link) in caplog.text and f"mode {target_mode:o}" in caplog.text) is warned


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        restrict_mode(tmp_path / "nothing")


def test_a_linked_certificate_is_public_and_draws_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "mount" / "ca.pem"
    target.parent.mkdir()
    target.write_text("c")
    target.chmod(0o644)
    link = tmp_path / "ca.pem"
    link.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="tierstore.private_files"):
        restrict_mode(link, secret=False)
    assert not caplog.records and target.stat().st_mode & 0o777 == 0o644


def test_lock_holder_names_the_process_holding_the_lock_and_takes_nothing(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "serve.lock"
    assert lock_holder(lock) is None  # no file: nobody holds it, and none is made
    assert not lock.exists()
    fd, _ = hold_lock_or_name_holder(lock)
    assert fd is not None
    try:
        assert lock_holder(lock) == str(os.getpid())
        assert lock_holder(lock) == str(os.getpid())  # asking twice changes nothing
    finally:
        os.close(fd)
    assert lock_holder(lock) is None  # let go
    fd, holder = hold_lock_or_name_holder(lock)  # the probe left it free to take
    assert fd is not None and holder == ""
    os.close(fd)


def test_a_lock_is_taken_where_its_holders_id_cannot_be_written(tmp_path: Path) -> None:
    # A full disk: a review's node could not start for want of the block its process
    # id takes. A file size limit of 0 stands in for it (EFBIG; its signal ignored).
    lock = tmp_path / "store.lock"
    taken = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, signal, sys\n"
            "from pathlib import Path\n"
            "from tierstore.private_files import hold_lock_or_name_holder, lock_holder\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
            "lock = Path(sys.argv[1])\n"
            "fd, holder = hold_lock_or_name_holder(lock)\n"
            "print(fd is not None, repr(holder), lock_holder(lock))\n",
            str(lock),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.split() == ["True", "''", "?"]
    assert lock.read_bytes() == b""
