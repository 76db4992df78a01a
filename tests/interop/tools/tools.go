//go:build tools

// Package tools pins the protoc plugins build.sh compiles, so their versions
// come from this module's go.sum like every other dependency.
package tools

import (
	_ "github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
