"""The committed gRPC modules are exactly what proto/generate.py makes from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    generator = _load_generator()
    fresh = {path.name: path.read_bytes() for path in generator.generate(tmp_path)}  # type: ignore[attr-defined]
    committed_dir = REPO / "tierstore" / "v1"
    committed = {path.name: path.read_bytes() for path in committed_dir.iterdir() if path.is_file()}
    assert sorted(fresh) == sorted(committed), "run: python proto/generate.py"
    stale = [name for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale generated modules {stale}; run: python proto/generate.py"


def test_every_service_is_generated() -> None:
    from tierstore.v1 import admin_pb2, datasets_pb2, placement_pb2, shards_pb2

    services = {
        name
        for module in (admin_pb2, datasets_pb2, placement_pb2, shards_pb2)
        for name in module.DESCRIPTOR.services_by_name
    }
    assert services == {"AdminService", "DatasetService", "PlacementService", "ShardService"}
