"""Generates the Echo stubs from echo.proto into a temporary directory and imports them.

Generated code is not committed: grpcio-tools writes it at run time.
"""
import importlib
import os
import sys
import tempfile

from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    out = tempfile.mkdtemp(prefix="knit-grpc-")
    rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}", os.path.join(HERE, "echo.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")
