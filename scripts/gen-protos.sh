#!/usr/bin/env bash
# Regenerates cloud_api_adaptor/_pb from protos/ with the pinned grpcio-tools.
# The virtual include path makes generated modules import each other as
# cloud_api_adaptor._pb.X, and google.rpc.Status comes from googleapis-common-protos.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=cloud_api_adaptor/_pb
find "$out" -name '*_pb2*' -delete
protos=(hypervisor.proto podvminfo.proto ttrpc.proto health.proto agent.proto)
args=()
for p in "${protos[@]}"; do [ -f "protos/$p" ] && args+=("$out/$p"); done
"$PY" -m grpc_tools.protoc \
  --proto_path="$out=protos" --proto_path=protos/include \
  --python_out=. --pyi_out=. "${args[@]}"
"$PY" -m grpc_tools.protoc \
  --proto_path="$out=protos" --proto_path=protos/include \
  --grpc_python_out=. "$out/hypervisor.proto" "$out/podvminfo.proto"
touch "$out/__init__.py"
