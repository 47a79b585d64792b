"""The client's channel: TLS files are checked when it opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierstore.client.channel import ChannelSettings, ProcessChannel
from tierstore.errors import InvalidArgument


def test_a_ca_file_without_a_certificate_is_refused_by_name(tmp_path: Path) -> None:
    # grpc itself took it, and failed every call with "Failed to create security handshaker".
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", ca=ca))
    with pytest.raises(InvalidArgument, match=f"TLS file {ca} holds no PEM certificate"):
        channel.get()


def test_an_unreadable_ca_file_is_refused(tmp_path: Path) -> None:
    channel = ProcessChannel(ChannelSettings("127.0.0.1:1", ca=tmp_path))  # a directory
    with pytest.raises(InvalidArgument, match="cannot read TLS file"):
        channel.get()
