#!/usr/bin/env bash
# Builds the Go interop peers into tests/interop/bin/ (gitignored):
#   bin/kata-sim            Kata runtime's side of the remote hypervisor protocol
#   bin/ttrpc-bench-server  containerd/ttrpc v1.2.7 baseline server for benchmarks
#   bin/shim-sim            the Kata shim's one agent connection for a pod's whole life
# Needs only `go` and the Go module proxy: the protoc plugins are compiled from
# the versions pinned in go.sum (tools/tools.go) into .cache/go-bin, and the Go
# code for protos/hypervisor.proto, health.proto and agent.proto is generated into
# bin/gen/ with the venv's grpc_tools.protoc.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
PY=${PYTHON:-$root/.venv/bin/python}
plugins=${GO_PLUGIN_DIR:-$root/.cache/go-bin}
bin=$here/bin
gen=$bin/gen
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

cd "$here"
mkdir -p "$plugins" "$bin"
go build -buildvcs=false -o "$plugins/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -buildvcs=false -o "$plugins/protoc-gen-go-ttrpc" github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc

rm -rf "$gen"
mkdir -p "$gen"
maps=(Mhypervisor.proto=caa-interop/bin/gen/hypervisor Mhealth.proto=caa-interop/bin/gen/health
  Magent.proto=caa-interop/bin/gen/agent)
go_opts=(--go_opt=module=caa-interop/bin/gen)
ttrpc_opts=(--go-ttrpc_opt=module=caa-interop/bin/gen)
for m in "${maps[@]}"; do
  go_opts+=("--go_opt=$m")
  ttrpc_opts+=("--go-ttrpc_opt=$m")
done
"$PY" -m grpc_tools.protoc \
  --proto_path="$root/protos" \
  --plugin=protoc-gen-go="$plugins/protoc-gen-go" \
  --plugin=protoc-gen-go-ttrpc="$plugins/protoc-gen-go-ttrpc" \
  --go_out="$gen" "${go_opts[@]}" \
  --go-ttrpc_out="$gen" "${ttrpc_opts[@]}" \
  hypervisor.proto health.proto agent.proto

go build -buildvcs=false -trimpath -o "$bin/kata-sim" ./cmd/kata-sim
go build -buildvcs=false -trimpath -o "$bin/ttrpc-bench-server" ./cmd/ttrpc-bench-server
go build -buildvcs=false -trimpath -o "$bin/shim-sim" ./cmd/shim-sim
echo "built $bin/kata-sim $bin/ttrpc-bench-server $bin/shim-sim"
