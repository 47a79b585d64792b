"""No dataclass of tierstore prints key material in its ``repr``: a traceback tool that
shows local variables (rich's ``show_locals``, an error tracker) prints the ``repr`` of
every object in reach. Two engine records carrying a shard's data key printed it. (The
generated protobuf messages that carry a data key, ``Seal`` and ``DataKeyGrant``,
print theirs; they are not held here.)"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import tierstore

SECRET = b"\x5a" * 32
#: classes whose own ``__repr__`` leaves their keys out (read by a test below)
WRITE_THEIR_OWN_REPR = {"LocalKeyring"}


def dataclasses_holding_key_bytes() -> list[tuple[type, str]]:
    """Every dataclass of the package and each field of it whose name says key and whose
    type holds bytes (a key id is a str)."""
    found = []
    for module_info in pkgutil.walk_packages(tierstore.__path__, "tierstore."):
        if module_info.name.startswith(("tierstore.v1", "tierstore.torch")):
            continue  # generated; the plugin needs torch
        module = importlib.import_module(module_info.name)
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and dataclasses.is_dataclass(cls)):
                continue
            if cls.__module__ != module.__name__:
                continue
            for field in dataclasses.fields(cls):
                if "key" in field.name and "bytes" in str(field.type):
                    found.append((cls, field.name))
    return found


def test_no_dataclass_shows_key_bytes_in_its_repr() -> None:
    found = dataclasses_holding_key_bytes()
    names = {f"{cls.__name__}.{name}" for cls, name in found}
    # The guard sees the records it is for: a data key read or staged, a local read's.
    assert {"SealedRead.data_key", "_StagedPut.data_key", "DataKey.key"} <= names
    for cls, name in found:
        if cls.__name__ in WRITE_THEIR_OWN_REPR:
            continue
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        assert not field.repr, f"{cls.__qualname__}.{name} is in its repr"


def test_a_keyring_repr_names_key_ids_only() -> None:
    from tierstore.crypto import LocalKeyring

    shown = repr(LocalKeyring(keys={"k1": SECRET}, current="k1"))
    assert "k1" in shown and SECRET.hex() not in shown and "ZZZZ" not in shown
