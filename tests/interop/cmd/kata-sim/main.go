// Command kata-sim plays the Kata Go runtime's side of the remote hypervisor
// protocol, with containerd/ttrpc v1.2.7 (the version Kata pins), so tests can
// check that a Python server is a drop-in replacement for cloud-api-adaptor.
//
// # Interface
//
//	kata-sim -socket PATH [-mode sandbox|version|errors|bench] [flags]
//
// Every result is one JSON object per line on stdout (logs go to stderr):
//
//	{"step":"CreateVM","id":"sb-0","ok":true,"ms":1.2,"agent_socket_path":"/run/peerpod/pods/sb-0/agent.ttrpc"}
//	{"step":"StartVM","id":"sb-0","ok":false,"ms":3.4,"code":"Unknown","code_num":2,"message":"..."}
//	{"step":"summary","ok":true,"sandboxes":1,"failed":0}
//
// Failed steps carry the ttrpc status as "code" (gRPC code name, e.g.
// "Unimplemented"), "code_num" and "message".  Exit status: 0 when every step
// of the mode succeeded, 1 when one failed, 2 for bad flags.
//
// # Modes
//
// sandbox (default): for each of -count sandboxes (ids "-id" or "-id-<n>" when
// -count > 1; concurrently with -parallel) run Kata's sequence (remote.go,
// sandbox.go), each hypervisor RPC on a NEW connection closed right after it:
//
//  1. CreateVM{id, networkNamespacePath: -netns, annotations}: exactly the nine
//     annotations Kata always sends (values from -pod-name, -pod-namespace,
//     -machine-type, -image, -vcpus, -memory, -initdata, -gpus, -gpu-model),
//     no deadline.  An empty agentSocketPath fails the step, as in Kata.
//  2. StartVM{id} with a -start-timeout deadline (default 600s).
//  3. Dial agentSocketPath the way Kata's agent client dials remote://PATH
//     (paths with ':' are refused; unix dial retried until -dial-timeout, 30s),
//     then grpc.Health/Check{} with a -check-timeout deadline (30s) on that
//     connection; the step records the serving status.  Skipped with -skip-agent.
//  4. Optionally wait -hold, then StopVM{id}, no deadline.  If StartVM or the
//     agent check fails, StopVM still runs (Kata's deferred StopVM).  -skip-stop
//     leaves the sandbox running.
//
// version: -count Version calls, each on a new connection; prints the version.
//
// errors: on ONE connection, calls an unknown service ("hypervisor.NoSuchService"),
// an unknown method ("hypervisor.Hypervisor/NoSuchMethod"), then Version, and
// prints each outcome (steps "unknown-service", "unknown-method", "Version").
// The two error steps are expected to fail; the exit status reflects only the
// final Version call (the connection must survive the errors).
//
// bench: -count Version calls (new connection per call unless -reuse), prints
// {"step":"bench","calls":N,"p50_us":..,"p99_us":..,"calls_per_sec":..}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/status"

	health "caa-interop/bin/gen/health"
	hv "caa-interop/bin/gen/hypervisor"
)

type options struct {
	socket       string
	mode         string
	id           string
	count        int
	parallel     bool
	netns        string
	podName      string
	podNamespace string
	machineType  string
	image        string
	vcpus        string
	memory       string
	initdata     string
	gpus         string
	gpuModel     string
	startTimeout time.Duration
	checkTimeout time.Duration
	dialTimeout  time.Duration
	hold         time.Duration
	skipAgent    bool
	skipStop     bool
	reuse        bool
}

// result is one output line.
type result struct {
	Step            string   `json:"step"`
	ID              string   `json:"id,omitempty"`
	OK              bool     `json:"ok"`
	Ms              *float64 `json:"ms,omitempty"`
	Code            string   `json:"code,omitempty"`
	CodeNum         *int     `json:"code_num,omitempty"`
	Message         string   `json:"message,omitempty"`
	AgentSocketPath string   `json:"agent_socket_path,omitempty"`
	Version         string   `json:"version,omitempty"`
	HealthStatus    string   `json:"health_status,omitempty"`
	Sandboxes       *int     `json:"sandboxes,omitempty"`
	Failed          *int     `json:"failed,omitempty"`
	Calls           *int     `json:"calls,omitempty"`
	P50us           *float64 `json:"p50_us,omitempty"`
	P99us           *float64 `json:"p99_us,omitempty"`
	CallsPerSec     *float64 `json:"calls_per_sec,omitempty"`
}

var outMu sync.Mutex

func emit(r result) {
	line, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Println(string(line))
}

func step(name, id string, started time.Time, err error) result {
	ms := float64(time.Since(started).Microseconds()) / 1000
	r := result{Step: name, ID: id, OK: err == nil, Ms: &ms}
	if err != nil {
		st, ok := status.FromError(err)
		if ok {
			n := int(st.Code())
			r.Code, r.CodeNum, r.Message = st.Code().String(), &n, st.Message()
		} else {
			r.Message = err.Error()
		}
	}
	return r
}

// call opens a new connection for one hypervisor RPC and closes it, as remote.go does.
func call(socket string, fn func(hv.HypervisorService) error) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	return fn(hv.NewHypervisorClient(client))
}

func annotations(o *options) map[string]string {
	return map[string]string{
		"io.kubernetes.cri.sandbox-name":                        o.podName,
		"io.kubernetes.cri.sandbox-namespace":                   o.podNamespace,
		"io.katacontainers.config.hypervisor.machine_type":      o.machineType,
		"io.katacontainers.config.hypervisor.image":             o.image,
		"io.katacontainers.config.hypervisor.default_vcpus":     o.vcpus,
		"io.katacontainers.config.hypervisor.default_memory":    o.memory,
		"io.katacontainers.config.hypervisor.cc_init_data":      o.initdata,
		"io.katacontainers.config.hypervisor.default_gpus":      o.gpus,
		"io.katacontainers.config.hypervisor.default_gpu_model": o.gpuModel,
	}
}

// dialAgent mimics the agent client's remote:// dialer: parse the URL, refuse
// ':' in the path, retry the unix dial until the timeout.
func dialAgent(path string, timeout time.Duration) (net.Conn, error) {
	url := "remote://" + path
	rest := strings.TrimPrefix(url, "remote://")
	if strings.Contains(rest, ":") {
		return nil, fmt.Errorf("invalid remote sock address %q", url)
	}
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("unix", rest, time.Until(deadline))
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial %s: timed out after %s: %w", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkAgent(o *options, id, path string) error {
	started := time.Now()
	conn, err := dialAgent(path, o.dialTimeout)
	if err != nil {
		emit(step("AgentCheck", id, started, err))
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.checkTimeout)
	defer cancel()
	resp, err := health.NewHealthClient(client).Check(ctx, &health.CheckRequest{})
	r := step("AgentCheck", id, started, err)
	if err == nil {
		r.HealthStatus = resp.Status.String()
		if resp.Status != health.HealthCheckResponse_SERVING {
			r.OK = false
			err = fmt.Errorf("agent not serving: %s", resp.Status)
		}
	}
	emit(r)
	return err
}

func runSandbox(o *options, id string) (failed bool) {
	var agentPath string
	started := time.Now()
	err := call(o.socket, func(c hv.HypervisorService) error {
		resp, err := c.CreateVM(context.Background(), &hv.CreateVMRequest{
			Id:                   id,
			Annotations:          annotations(o),
			NetworkNamespacePath: o.netns,
		})
		if err == nil && resp.AgentSocketPath == "" {
			return errors.New("remote hypervisor does not return tunnel socket path")
		}
		if err == nil {
			agentPath = resp.AgentSocketPath
		}
		return err
	})
	r := step("CreateVM", id, started, err)
	r.AgentSocketPath = agentPath
	emit(r)
	if err != nil {
		return true
	}

	stop := func() bool {
		if o.skipStop {
			return false
		}
		started := time.Now()
		err := call(o.socket, func(c hv.HypervisorService) error {
			_, err := c.StopVM(context.Background(), &hv.StopVMRequest{Id: id})
			return err
		})
		emit(step("StopVM", id, started, err))
		return err != nil
	}

	started = time.Now()
	err = call(o.socket, func(c hv.HypervisorService) error {
		ctx, cancel := context.WithTimeout(context.Background(), o.startTimeout)
		defer cancel()
		_, err := c.StartVM(ctx, &hv.StartVMRequest{Id: id})
		return err
	})
	emit(step("StartVM", id, started, err))
	if err != nil {
		stop()
		return true
	}
	if !o.skipAgent {
		if err := checkAgent(o, id, agentPath); err != nil {
			stop()
			return true
		}
	}
	if o.hold > 0 {
		time.Sleep(o.hold)
	}
	return stop()
}

func modeSandbox(o *options) int {
	ids := []string{o.id}
	if o.count > 1 {
		ids = ids[:0]
		for i := 0; i < o.count; i++ {
			ids = append(ids, o.id+"-"+strconv.Itoa(i))
		}
	}
	var (
		mu     sync.Mutex
		failed int
		wg     sync.WaitGroup
	)
	for _, id := range ids {
		run := func(id string) {
			if runSandbox(o, id) {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}
		if o.parallel {
			wg.Add(1)
			go func(id string) { defer wg.Done(); run(id) }(id)
		} else {
			run(id)
		}
	}
	wg.Wait()
	n := len(ids)
	emit(result{Step: "summary", OK: failed == 0, Sandboxes: &n, Failed: &failed})
	if failed > 0 {
		return 1
	}
	return 0
}

func modeVersion(o *options) int {
	rc := 0
	for i := 0; i < o.count; i++ {
		started := time.Now()
		var version string
		err := call(o.socket, func(c hv.HypervisorService) error {
			resp, err := c.Version(context.Background(), &hv.VersionRequest{Version: "kata-sim"})
			if err == nil {
				version = resp.Version
			}
			return err
		})
		r := step("Version", "", started, err)
		r.Version = version
		emit(r)
		if err != nil {
			rc = 1
		}
	}
	return rc
}

func modeErrors(o *options) int {
	conn, err := net.Dial("unix", o.socket)
	if err != nil {
		emit(step("dial", "", time.Now(), err))
		return 1
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx := context.Background()
	probe := func(name, service, method string) error {
		started := time.Now()
		var resp hv.VersionResponse
		err := client.Call(ctx, service, method, &hv.VersionRequest{Version: "kata-sim"}, &resp)
		r := step(name, "", started, err)
		r.Version = resp.Version
		emit(r)
		return err
	}
	probe("unknown-service", "hypervisor.NoSuchService", "Version")
	probe("unknown-method", "hypervisor.Hypervisor", "NoSuchMethod")
	if err := probe("Version", "hypervisor.Hypervisor", "Version"); err != nil {
		return 1
	}
	return 0
}

func modeBench(o *options) int {
	var (
		client *ttrpc.Client
		hc     hv.HypervisorService
	)
	if o.reuse {
		conn, err := net.Dial("unix", o.socket)
		if err != nil {
			emit(step("bench", "", time.Now(), err))
			return 1
		}
		client = ttrpc.NewClient(conn)
		defer client.Close()
		hc = hv.NewHypervisorClient(client)
	}
	lat := make([]float64, 0, o.count)
	started := time.Now()
	for i := 0; i < o.count; i++ {
		t := time.Now()
		var err error
		if o.reuse {
			_, err = hc.Version(context.Background(), &hv.VersionRequest{})
		} else {
			err = call(o.socket, func(c hv.HypervisorService) error {
				_, err := c.Version(context.Background(), &hv.VersionRequest{})
				return err
			})
		}
		if err != nil {
			emit(step("bench", "", t, err))
			return 1
		}
		lat = append(lat, float64(time.Since(t).Nanoseconds())/1000)
	}
	total := time.Since(started).Seconds()
	sort.Float64s(lat)
	p50, p99 := lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	rate := float64(o.count) / total
	n := o.count
	emit(result{Step: "bench", OK: true, Calls: &n, P50us: &p50, P99us: &p99, CallsPerSec: &rate})
	return 0
}

func main() {
	o := &options{}
	flag.StringVar(&o.socket, "socket", "/run/peerpod/hypervisor.sock", "remote hypervisor socket (remote_hypervisor_socket)")
	flag.StringVar(&o.mode, "mode", "sandbox", "sandbox | version | errors | bench")
	flag.StringVar(&o.id, "id", "kata-sim", "sandbox id (suffixed -<n> when -count > 1)")
	flag.IntVar(&o.count, "count", 1, "number of sandboxes (sandbox mode) or calls (version, bench)")
	flag.BoolVar(&o.parallel, "parallel", false, "run the sandboxes concurrently")
	flag.StringVar(&o.netns, "netns", "", "networkNamespacePath sent in CreateVM")
	flag.StringVar(&o.podName, "pod-name", "kata-sim-pod", "io.kubernetes.cri.sandbox-name")
	flag.StringVar(&o.podNamespace, "pod-namespace", "default", "io.kubernetes.cri.sandbox-namespace")
	flag.StringVar(&o.machineType, "machine-type", "", "hypervisor machine_type annotation")
	flag.StringVar(&o.image, "image", "", "hypervisor image annotation")
	flag.StringVar(&o.vcpus, "vcpus", "1", "default_vcpus annotation")
	flag.StringVar(&o.memory, "memory", "2048", "default_memory annotation (MiB)")
	flag.StringVar(&o.initdata, "initdata", "", "cc_init_data annotation")
	flag.StringVar(&o.gpus, "gpus", "0", "default_gpus annotation")
	flag.StringVar(&o.gpuModel, "gpu-model", "", "default_gpu_model annotation")
	flag.DurationVar(&o.startTimeout, "start-timeout", 600*time.Second, "StartVM deadline (remote_hypervisor_timeout)")
	flag.DurationVar(&o.checkTimeout, "check-timeout", 30*time.Second, "agent Health/Check deadline")
	flag.DurationVar(&o.dialTimeout, "dial-timeout", 30*time.Second, "agent dial timeout")
	flag.DurationVar(&o.hold, "hold", 0, "keep each sandbox running this long before StopVM")
	flag.BoolVar(&o.skipAgent, "skip-agent", false, "do not dial the agent socket after StartVM")
	flag.BoolVar(&o.skipStop, "skip-stop", false, "do not call StopVM")
	flag.BoolVar(&o.reuse, "reuse", false, "bench: reuse one connection instead of one per call")
	flag.Parse()
	if o.count < 1 {
		fmt.Fprintln(os.Stderr, "kata-sim: -count must be at least 1")
		os.Exit(2)
	}
	var rc int
	switch o.mode {
	case "sandbox":
		rc = modeSandbox(o)
	case "version":
		rc = modeVersion(o)
	case "errors":
		rc = modeErrors(o)
	case "bench":
		rc = modeBench(o)
	default:
		fmt.Fprintf(os.Stderr, "kata-sim: unknown -mode %q\n", o.mode)
		rc = 2
	}
	os.Exit(rc)
}
