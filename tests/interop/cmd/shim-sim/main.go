// Command shim-sim plays the Kata shim's agent connection for the life of a
// pod, with containerd/ttrpc v1.2.7 (the version Kata pins), so tests can show
// that running pods survive what happens to the daemon and the node<->VM link.
//
// # Interface
//
//	shim-sim -socket HYPERVISOR_SOCKET [-id ID] [-count N] [-keepalive 5s] [flags]
//
// For each of -count pods (ids "-id-<n>"), concurrently, it runs what the real
// shim does (containerd-shim-kata-v2 with the remote hypervisor):
//
//  1. CreateVM and StartVM, each on a NEW hypervisor connection, as kata-sim.
//  2. ONE agent connection for the pod's whole life (dialled as remote://PATH):
//     grpc.Health/Check (30 s deadline), CreateSandbox (300 s), GetGuestDetails
//     (60 s), CopyFile (60 s, two chunks), CreateContainer, StartContainer.
//  3. Two long-polls with no deadline, GetOOMEvent and WaitProcess, open for the
//     pod's life, and a keep-alive Health/Check every -keepalive (no deadline:
//     late is fine, but every one must be answered).
//
// Any EOF on the agent connection (the ttrpc client's on-close callback firing
// before the pod is stopped) or any error of a call is counted: for the real
// shim it is pod death.  Every agent request carries the ttrpc metadata
// "devagent-seq: <pod id>/<n>", numbered 1, 2, 3, ... so the development agent
// can detect a request lost or duplicated on the way (see
// cloud_api_adaptor/vm/devagent_pod.py).
//
// Commands, one per line on stdin:
//
//	report   print a {"step":"report","final":false,...} line per pod
//	stop     stop every pod, print the final reports and the summary, exit
//
// EOF on stdin is "stop".  Stopping a pod: stop the keep-alives, SignalProcess
// (SIGKILL, as containerd after its stop timeout), wait for WaitProcess to
// return, RemoveContainer, RemoveStaleVirtiofsShareMounts, DestroySandbox,
// wait for GetOOMEvent to end, close the agent connection, then StopVM on a
// new hypervisor connection.
//
// Output is one JSON object per line on stdout: {"step":"running","id":...}
// when a pod's long-polls are in flight, {"step":"ready","pods":N} once every
// pod is, failed setup steps as {"step":NAME,"id":...,"ok":false,"message":...},
// the reports, then {"step":"summary","ok":...}.  Exit status 0 when every pod
// ran and stopped with no EOF and no error.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/status"

	agent "caa-interop/bin/gen/agent"
	health "caa-interop/bin/gen/health"
	hv "caa-interop/bin/gen/hypervisor"
)

type options struct {
	socket       string
	id           string
	count        int
	netns        string
	keepalive    time.Duration
	checkTimeout time.Duration
	startTimeout time.Duration
	dialTimeout  time.Duration
	stopTimeout  time.Duration
}

var outMu sync.Mutex

func emit(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Println(string(line))
}

type stepResult struct {
	Step    string `json:"step"`
	ID      string `json:"id,omitempty"`
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

func failure(stepName, id string, err error) stepResult {
	r := stepResult{Step: stepName, ID: id, OK: false, Message: err.Error()}
	if st, ok := status.FromError(err); ok {
		r.Code, r.Message = st.Code().String(), st.Message()
	}
	return r
}

// report is what one pod saw; printed on "report" and at the end.
type report struct {
	Step               string   `json:"step"`
	ID                 string   `json:"id"`
	Final              bool     `json:"final"`
	Running            bool     `json:"running"`
	EOFs               int64    `json:"eofs"`
	Errors             []string `json:"errors"`
	KeepalivesSent     int64    `json:"keepalives_sent"`
	KeepalivesAnswered int64    `json:"keepalives_answered"`
	RequestsSent       int64    `json:"requests_sent"`
	WaitDone           bool     `json:"wait_done"`
	WaitStatus         *int32   `json:"wait_status"`
	WaitError          string   `json:"wait_error,omitempty"`
	OOMDone            bool     `json:"oom_done"`
	OOMCode            string   `json:"oom_code,omitempty"`
	OOMContainer       string   `json:"oom_container,omitempty"`
	Stopped            bool     `json:"stopped"`
	StopVM             bool     `json:"stop_vm"`
}

type pod struct {
	o         *options
	id        string
	index     int
	agentPath string
	client    *ttrpc.Client
	agent     agent.AgentServiceService
	health    health.HealthService

	seq          atomic.Int64
	eofs         atomic.Int64
	closing      atomic.Bool
	kaSent       atomic.Int64
	kaAnswered   atomic.Int64
	running      atomic.Bool
	stopped      atomic.Bool
	stopVMOK     atomic.Bool
	mu           sync.Mutex
	errs         []string
	waitDone     chan struct{}
	waitStatus   *int32
	waitErr      string
	oomDone      chan struct{}
	oomCode      string
	oomContainer string
	kaStop       chan struct{}
	kaDone       chan struct{}
}

func (p *pod) fail(what string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, fmt.Sprintf("%s: %v", what, err))
}

// ctx numbers the request (devagent-seq) and applies a deadline when d > 0.
func (p *pod) ctx(d time.Duration) (context.Context, context.CancelFunc) {
	n := p.seq.Add(1)
	ctx := ttrpc.WithMetadata(context.Background(), ttrpc.MD{"devagent-seq": {p.id + "/" + strconv.FormatInt(n, 10)}})
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

func hvCall(socket string, fn func(hv.HypervisorService) error) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	return fn(hv.NewHypervisorClient(client))
}

func dialAgent(path string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("unix", path, time.Until(deadline))
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial remote://%s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setup runs steps 1-3; on failure the pod is left for stop() to clean up.
func (p *pod) setup() error {
	o := p.o
	err := hvCall(o.socket, func(c hv.HypervisorService) error {
		resp, err := c.CreateVM(context.Background(), &hv.CreateVMRequest{
			Id: p.id,
			Annotations: map[string]string{
				"io.kubernetes.cri.sandbox-name":      "shim-sim-" + strconv.Itoa(p.index),
				"io.kubernetes.cri.sandbox-namespace": "default",
			},
			NetworkNamespacePath: o.netns,
		})
		if err == nil && resp.AgentSocketPath == "" {
			return errors.New("remote hypervisor does not return tunnel socket path")
		}
		if err == nil {
			p.agentPath = resp.AgentSocketPath
		}
		return err
	})
	if err != nil {
		emit(failure("CreateVM", p.id, err))
		return err
	}
	err = hvCall(o.socket, func(c hv.HypervisorService) error {
		ctx, cancel := context.WithTimeout(context.Background(), o.startTimeout)
		defer cancel()
		_, err := c.StartVM(ctx, &hv.StartVMRequest{Id: p.id})
		return err
	})
	if err != nil {
		emit(failure("StartVM", p.id, err))
		return err
	}
	conn, err := dialAgent(p.agentPath, o.dialTimeout)
	if err != nil {
		emit(failure("dial", p.id, err))
		return err
	}
	p.client = ttrpc.NewClient(conn, ttrpc.WithOnClose(func() {
		if !p.closing.Load() {
			p.eofs.Add(1)
		}
	}))
	p.agent = agent.NewAgentServiceClient(p.client)
	p.health = health.NewHealthClient(p.client)

	steps := []struct {
		name string
		d    time.Duration
		call func(ctx context.Context) error
	}{
		{"Check", o.checkTimeout, func(ctx context.Context) error {
			resp, err := p.health.Check(ctx, &health.CheckRequest{})
			if err == nil && resp.Status != health.HealthCheckResponse_SERVING {
				err = fmt.Errorf("agent not serving: %s", resp.Status)
			}
			return err
		}},
		{"CreateSandbox", 300 * time.Second, func(ctx context.Context) error {
			_, err := p.agent.CreateSandbox(ctx, &agent.CreateSandboxRequest{Hostname: "shim-sim", SandboxId: p.id, SandboxPidns: false})
			return err
		}},
		{"GetGuestDetails", 60 * time.Second, func(ctx context.Context) error {
			_, err := p.agent.GetGuestDetails(ctx, &agent.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
			return err
		}},
		{"CopyFile", 60 * time.Second, func(ctx context.Context) error { return p.copyFile(ctx, 0) }},
		{"CopyFile", 60 * time.Second, func(ctx context.Context) error { return p.copyFile(ctx, 1) }},
		{"CreateContainer", 0, func(ctx context.Context) error {
			_, err := p.agent.CreateContainer(ctx, &agent.CreateContainerRequest{ContainerId: p.id, ExecId: p.id})
			return err
		}},
		{"StartContainer", 0, func(ctx context.Context) error {
			_, err := p.agent.StartContainer(ctx, &agent.StartContainerRequest{ContainerId: p.id})
			return err
		}},
	}
	for _, s := range steps {
		ctx, cancel := p.ctx(s.d)
		err := s.call(ctx)
		cancel()
		if err != nil {
			p.fail(s.name, err)
			emit(failure(s.name, p.id, err))
			return err
		}
	}
	go p.longPolls()
	go p.keepAlive()
	p.running.Store(true)
	emit(stepResult{Step: "running", ID: p.id, OK: true})
	return nil
}

var hostsFile = []byte("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")

func (p *pod) copyFile(ctx context.Context, chunk int) error {
	half := len(hostsFile) / 2
	data, offset := hostsFile[:half], int64(0)
	if chunk == 1 {
		data, offset = hostsFile[half:], int64(half)
	}
	_, err := p.agent.CopyFile(ctx, &agent.CopyFileRequest{
		Path:     "/run/kata-containers/shared/containers/" + p.id + "-hosts",
		FileSize: int64(len(hostsFile)),
		FileMode: 0o100644,
		DirMode:  0o750,
		Offset:   offset,
		Data:     data,
	})
	return err
}

func (p *pod) longPolls() {
	go func() {
		defer close(p.oomDone)
		ctx, cancel := p.ctx(0)
		defer cancel()
		ev, err := p.agent.GetOOMEvent(ctx, &agent.GetOOMEventRequest{})
		p.mu.Lock()
		defer p.mu.Unlock()
		if err != nil {
			p.oomCode = status.Code(err).String()
			if errors.Is(err, ttrpc.ErrClosed) {
				p.oomCode = "closed"
			}
		} else {
			p.oomCode, p.oomContainer = "OK", ev.ContainerId
		}
	}()
	defer close(p.waitDone)
	ctx, cancel := p.ctx(0)
	defer cancel()
	resp, err := p.agent.WaitProcess(ctx, &agent.WaitProcessRequest{ContainerId: p.id, ExecId: p.id})
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.waitErr = err.Error()
		p.errs = append(p.errs, "WaitProcess: "+err.Error())
		return
	}
	st := resp.Status
	p.waitStatus = &st
}

func (p *pod) keepAlive() {
	defer close(p.kaDone)
	ticker := time.NewTicker(p.o.keepalive)
	defer ticker.Stop()
	for {
		select {
		case <-p.kaStop:
			return
		case <-ticker.C:
		}
		p.kaSent.Add(1)
		ctx, cancel := p.ctx(0)
		resp, err := p.health.Check(ctx, &health.CheckRequest{})
		cancel()
		if err != nil {
			p.fail("keep-alive Check", err)
			continue
		}
		if resp.Status == health.HealthCheckResponse_SERVING {
			p.kaAnswered.Add(1)
		}
	}
}

func (p *pod) stop() {
	o := p.o
	if p.running.Load() {
		close(p.kaStop)
		<-p.kaDone
		calls := []struct {
			name string
			call func(ctx context.Context) error
		}{
			{"SignalProcess", func(ctx context.Context) error {
				_, err := p.agent.SignalProcess(ctx, &agent.SignalProcessRequest{ContainerId: p.id, ExecId: p.id, Signal: uint32(syscall.SIGKILL)})
				return err
			}},
			{"WaitProcess returns", func(ctx context.Context) error {
				select {
				case <-p.waitDone:
					return nil
				case <-time.After(o.stopTimeout):
					return errors.New("WaitProcess did not return after SignalProcess")
				}
			}},
			{"RemoveContainer", func(ctx context.Context) error {
				_, err := p.agent.RemoveContainer(ctx, &agent.RemoveContainerRequest{ContainerId: p.id})
				return err
			}},
			{"RemoveStaleVirtiofsShareMounts", func(ctx context.Context) error {
				_, err := p.agent.RemoveStaleVirtiofsShareMounts(ctx, &agent.RemoveStaleVirtiofsShareMountsRequest{})
				return err
			}},
			{"DestroySandbox", func(ctx context.Context) error {
				_, err := p.agent.DestroySandbox(ctx, &agent.DestroySandboxRequest{})
				return err
			}},
			{"GetOOMEvent returns", func(ctx context.Context) error {
				select {
				case <-p.oomDone:
					return nil
				case <-time.After(o.stopTimeout):
					return errors.New("GetOOMEvent did not return after DestroySandbox")
				}
			}},
		}
		for _, c := range calls {
			var err error
			if c.name == "WaitProcess returns" || c.name == "GetOOMEvent returns" {
				err = c.call(context.Background())
			} else {
				ctx, cancel := p.ctx(o.stopTimeout)
				err = c.call(ctx)
				cancel()
			}
			if err != nil {
				p.fail(c.name, err)
			}
		}
	}
	if p.client != nil {
		p.closing.Store(true)
		p.client.Close()
	}
	p.stopped.Store(true)
	err := hvCall(o.socket, func(c hv.HypervisorService) error {
		_, err := c.StopVM(context.Background(), &hv.StopVMRequest{Id: p.id})
		return err
	})
	if err != nil {
		p.fail("StopVM", err)
	} else {
		p.stopVMOK.Store(true)
	}
}

func (p *pod) report(final bool) report {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := report{
		Step:               "report",
		ID:                 p.id,
		Final:              final,
		Running:            p.running.Load(),
		EOFs:               p.eofs.Load(),
		Errors:             append([]string{}, p.errs...),
		KeepalivesSent:     p.kaSent.Load(),
		KeepalivesAnswered: p.kaAnswered.Load(),
		RequestsSent:       p.seq.Load(),
		WaitStatus:         p.waitStatus,
		WaitError:          p.waitErr,
		OOMCode:            p.oomCode,
		OOMContainer:       p.oomContainer,
		Stopped:            p.stopped.Load(),
		StopVM:             p.stopVMOK.Load(),
	}
	select {
	case <-p.waitDone:
		r.WaitDone = true
	default:
	}
	select {
	case <-p.oomDone:
		r.OOMDone = true
	default:
	}
	return r
}

func main() {
	o := &options{}
	flag.StringVar(&o.socket, "socket", "/run/peerpod/hypervisor.sock", "remote hypervisor socket")
	flag.StringVar(&o.id, "id", "shim-sim", "sandbox id prefix (suffixed -<n>)")
	flag.IntVar(&o.count, "count", 1, "number of pods")
	flag.StringVar(&o.netns, "netns", "", "networkNamespacePath sent in CreateVM")
	flag.DurationVar(&o.keepalive, "keepalive", 5*time.Second, "keep-alive Health/Check interval")
	flag.DurationVar(&o.checkTimeout, "check-timeout", 30*time.Second, "first Health/Check deadline")
	flag.DurationVar(&o.startTimeout, "start-timeout", 600*time.Second, "StartVM deadline")
	flag.DurationVar(&o.dialTimeout, "dial-timeout", 30*time.Second, "agent dial timeout")
	flag.DurationVar(&o.stopTimeout, "stop-timeout", 60*time.Second, "bound on each stop step")
	flag.Parse()
	if o.count < 1 || o.keepalive <= 0 {
		fmt.Fprintln(os.Stderr, "shim-sim: -count must be at least 1 and -keepalive positive")
		os.Exit(2)
	}
	pods := make([]*pod, o.count)
	var wg sync.WaitGroup
	var setupFailed atomic.Int64
	for i := range pods {
		p := &pod{
			o: o, id: o.id + "-" + strconv.Itoa(i), index: i,
			waitDone: make(chan struct{}), oomDone: make(chan struct{}),
			kaStop: make(chan struct{}), kaDone: make(chan struct{}),
		}
		pods[i] = p
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.setup() != nil {
				setupFailed.Add(1)
			}
		}()
	}
	wg.Wait()
	emit(map[string]any{"step": "ready", "pods": o.count, "ok": setupFailed.Load() == 0})

	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		switch lines.Text() {
		case "report":
			for _, p := range pods {
				emit(p.report(false))
			}
		case "stop":
			goto stop
		case "":
		default:
			fmt.Fprintf(os.Stderr, "shim-sim: unknown command %q\n", lines.Text())
		}
	}
stop:
	for _, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
	failed := 0
	for _, p := range pods {
		r := p.report(true)
		emit(r)
		if !r.Running || r.EOFs > 0 || len(r.Errors) > 0 || !r.StopVM {
			failed++
		}
	}
	emit(map[string]any{"step": "summary", "ok": failed == 0, "pods": o.count, "failed": failed})
	if failed > 0 {
		os.Exit(1)
	}
}
