// Command ttrpc-bench-server is the Go baseline for the ttrpc benchmark: a
// containerd/ttrpc v1.2.7 server answering hypervisor.Hypervisor/Version with
// "0.0.0" (as cloud-api-adaptor does) on a unix socket.
//
//	ttrpc-bench-server -socket PATH
//
// It prints "READY PATH" on stdout once listening, serves until SIGTERM or
// SIGINT, then shuts down and removes the socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/ttrpc"

	hv "caa-interop/bin/gen/hypervisor"
)

type hypervisor struct{}

func (hypervisor) CreateVM(context.Context, *hv.CreateVMRequest) (*hv.CreateVMResponse, error) {
	return nil, errors.New("not implemented by the benchmark server")
}

func (hypervisor) StartVM(context.Context, *hv.StartVMRequest) (*hv.StartVMResponse, error) {
	return nil, errors.New("not implemented by the benchmark server")
}

func (hypervisor) StopVM(context.Context, *hv.StopVMRequest) (*hv.StopVMResponse, error) {
	return nil, errors.New("not implemented by the benchmark server")
}

func (hypervisor) Version(context.Context, *hv.VersionRequest) (*hv.VersionResponse, error) {
	return &hv.VersionResponse{Version: "0.0.0"}, nil
}

func main() {
	socket := flag.String("socket", "", "unix socket to listen on")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "ttrpc-bench-server: -socket is required")
		os.Exit(2)
	}
	_ = os.Remove(*socket)
	l, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ttrpc-bench-server:", err)
		os.Exit(1)
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ttrpc-bench-server:", err)
		os.Exit(1)
	}
	hv.RegisterHypervisorService(server, hypervisor{})

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- server.Serve(context.Background(), l) }()
	fmt.Println("READY", *socket)

	select {
	case <-sig:
	case err := <-done:
		if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "ttrpc-bench-server:", err)
			os.Exit(1)
		}
	}
	_ = server.Shutdown(context.Background())
	_ = os.Remove(*socket)
}
