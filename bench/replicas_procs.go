package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// The replicas case runs what an operator runs: the vega-gateway binary
// (two processes), redis-server, and fakeollama processes, each built or
// found once and started with its own command line and environment.

// buildBinaries builds vega-gateway and fakeollama into dir.
func buildBinaries(dir string) (gateway, fake string, err error) {
	gateway, fake = filepath.Join(dir, "vega-gateway"), filepath.Join(dir, "fakeollama")
	for out, pkg := range map[string]string{gateway: "github.com/vega-gateway/vega-gateway", fake: "github.com/vega-gateway/vega-gateway/ollamatest/cmd/fakeollama"} {
		if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w: %s", pkg, err, b)
		}
	}
	return gateway, fake, nil
}

// proc is a started process and its exit.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
}

func startProc(name string, args, env []string, stdout io.Writer) (*proc, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stdout
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

// stop sends sig to the process we started and waits up to 10 s for it,
// then kills it.
func (p *proc) stop(sig syscall.Signal) {
	_ = p.stdin.Close()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// redisProc is redis-server on a fixed loopback port, stopped (SIGKILL,
// as a crash) and started again on the same port for the outage scenario.
type redisProc struct {
	bin, dir, addr string
	p              *proc
}

func startRedis(dir string) (*redisProc, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found (apt-get install redis-server)")
	}
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &redisProc{bin: bin, dir: dir, addr: addr}
	return r, r.start()
}

func (r *redisProc) url() string { return "redis://" + r.addr + "/0" }

func (r *redisProc) start() error {
	_, port, _ := net.SplitHostPort(r.addr)
	p, err := startProc(r.bin, []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--daemonize", "no", "--loglevel", "warning"}, nil, io.Discard)
	if err != nil {
		return err
	}
	r.p = p
	if err := waitListening(r.addr, 10*time.Second, p.exited); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	return nil
}

func (r *redisProc) stop() {
	if r.p != nil {
		r.p.stop(syscall.SIGKILL)
		r.p = nil
	}
}

// startFakes starts n fakeollama processes on free loopback ports and
// returns their URLs; stop ends them all.
func startFakes(bin string, n int, args ...string) (urls []string, stop func(), err error) {
	var procs []*proc
	stop = func() {
		for _, p := range procs {
			p.stop(syscall.SIGTERM)
		}
	}
	for range n {
		pr, pw := io.Pipe()
		p, err := startProc(bin, append([]string{"-addr", "127.0.0.1:0", "-record-limit", "1"}, args...), nil, pw)
		if err != nil {
			stop()
			return nil, nil, err
		}
		procs = append(procs, p)
		line, err := bufio.NewReader(pr).ReadString('\n')
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		url, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
		if err != nil || !ok {
			stop()
			return nil, nil, fmt.Errorf("fakeollama did not announce its address: %q %v", line, err)
		}
		urls = append(urls, url)
	}
	return urls, stop, nil
}

// gatewayProc is one vega-gateway serve process.
type gatewayProc struct {
	*proc
	data, admin string
}

// startGateways starts n gateway processes with env (VEGA_* settings) and
// waits until each is ready (/readyz: a backend answered).
func startGateways(bin string, n int, env []string, dir string) ([]*gatewayProc, error) {
	var out []*gatewayProc
	for i := range n {
		data, err := freePort()
		if err != nil {
			return nil, err
		}
		admin, err := freePort()
		if err != nil {
			return nil, err
		}
		logf, err := os.Create(filepath.Join(dir, "gateway-"+strconv.Itoa(i)+".log"))
		if err != nil {
			return nil, err
		}
		p, err := startProc(bin, []string{"serve"}, append([]string{"VEGA_GATEWAY_LISTEN=" + data, "VEGA_ADMIN_LISTEN=" + admin,
			"VEGA_LOG_DIR=", "VEGA_LOG_LEVEL=warn", "VEGA_POOL_MAX_CONNECTIONS=256"}, env...), logf)
		if err != nil {
			logf.Close()
			stopGateways(out)
			return nil, err
		}
		g := &gatewayProc{proc: p, data: data, admin: admin}
		out = append(out, g)
		go func() { <-p.exited; logf.Close() }()
		if err := waitReady(admin, 15*time.Second, p.exited); err != nil {
			stopGateways(out)
			b, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("gateway %d: %w: %s", i, err, tail(string(b), 800))
		}
	}
	return out, nil
}

func stopGateways(gs []*gatewayProc) {
	for _, g := range gs {
		g.stop(syscall.SIGTERM)
	}
}

// waitReady polls GET /readyz on the admin address until 200.
func waitReady(admin string, d time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("exited at start")
		default:
		}
		if st, _, err := httpGet("http://" + admin + "/readyz"); err == nil && st == 200 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s", d)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// httpGet is a GET with a one-second timeout.
func httpGet(url string) (int, []byte, error) {
	return fasthttp.GetTimeout(nil, url, time.Second)
}
