"""Build hook: generates the protobuf messages (and their type stubs) from ../proto.

Runs for every build target, the editable install included, so the generated code is
never committed (src/writ/_proto/ is gitignored) and always matches the proto of this
checkout. Only messages are generated: the client calls methods by name on a
grpc.aio channel, so no service stubs (and no untyped *_pb2_grpc module) are needed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PROTO = "writ/v1/writ.proto"


class ProtoBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "writ-proto"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        proto_root = Path(os.environ.get("WRIT_PROTO_DIR", root.parent / "proto")).resolve()
        source = proto_root / PROTO
        if not source.is_file():
            raise RuntimeError(f"writ: {source} not found (set WRIT_PROTO_DIR to the proto/ folder)")
        from grpc_tools import protoc  # a build requirement

        out = root / "src" / "writ" / "_proto"
        with tempfile.TemporaryDirectory() as tmp:
            args = [
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                str(source),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"writ: protoc failed on {source}")
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            # Flat: writ._proto.writ_pb2 (the descriptor keeps its name writ/v1/writ.proto).
            for name in ("writ_pb2.py", "writ_pb2.pyi"):
                shutil.copyfile(Path(tmp) / "writ" / "v1" / name, out / name)
        (out / "__init__.py").write_text('"""Generated from proto/writ/v1/writ.proto at build time."""\n')
        build_data.setdefault("artifacts", []).append("src/writ/_proto/*")
