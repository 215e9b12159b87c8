package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// The servers run in child processes — this same binary with -serve — so
// that they can be pinned to one CPU and the load generator to the other:
// one child for the fake Ollama, one for the proxies in front of it (nginx,
// its own process, inherits the child's CPU affinity). Keeping the fake and
// the gateway in separate Go runtimes compares like with like: nginx does
// not share a scheduler or a heap with the upstream either. A child prints
// one "target<TAB>name<TAB>addr" line per server, then "ready", and stops
// everything when its stdin closes.

// serveFlags are the child's settings, passed on its command line.
type serveFlags struct {
	tokens   int
	delay    time.Duration
	maxConns int
	nginx    bool
	dir      string
	upstream string // host:port of the fake; empty: be the fake
}

// serve is the child: start the fake or the proxies, announce them, wait
// for stdin EOF.
func serve(f serveFlags) error {
	var st *stack
	var err error
	if f.upstream == "" {
		st, err = startFake(ollamatest.Config{Tokens: f.tokens, TokenDelay: f.delay})
	} else {
		st, err = startProxies(f.upstream, f.nginx, f.dir, f.maxConns)
	}
	if err != nil {
		return err
	}
	defer st.close()
	for _, t := range st.targets {
		fmt.Printf("target\t%s\t%s\n", t.name, t.addr)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
	return nil
}

// spawnStack starts the fake's child, then the proxies' child in front of
// it, both pinned to cpu when cpu >= 0. Its targets are direct, then the
// proxies.
func spawnStack(f serveFlags, cpu int) (*stack, error) {
	fake, err := spawn(f, cpu)
	if err != nil {
		return nil, fmt.Errorf("fake: %w", err)
	}
	f.upstream = fake.targets[0].addr
	proxies, err := spawn(f, cpu)
	if err != nil {
		fake.close()
		return nil, fmt.Errorf("proxies: %w", err)
	}
	return &stack{
		targets: append(fake.targets, proxies.targets...),
		stops:   []func(){fake.close, proxies.close}, // proxies stop first
	}, nil
}

// spawn starts one child, pinned to cpu when cpu >= 0.
func spawn(f serveFlags, cpu int) (*stack, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{exe, "-serve",
		"-serve-tokens", strconv.Itoa(f.tokens), "-serve-delay", f.delay.String(),
		"-serve-maxconns", strconv.Itoa(f.maxConns), "-serve-nginx=" + strconv.FormatBool(f.nginx), "-serve-dir", f.dir,
		"-serve-upstream", f.upstream}
	if cpu >= 0 {
		args = append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	st := &stack{}
	st.stops = append(st.stops, func() {
		_ = stdin.Close()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill() // the child we started, by its own handle
			<-exited
		}
	})

	type announced struct {
		targets []target
		err     error
	}
	ready := make(chan announced, 1)
	go func() {
		var a announced
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				ready <- a
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
			if parts := strings.Split(line, "\t"); len(parts) == 3 && parts[0] == "target" {
				a.targets = append(a.targets, target{parts[1], parts[2]})
			}
		}
		a.err = errors.New("server process ended before it was ready")
		ready <- a
	}()
	go func() { _ = cmd.Wait(); close(exited) }()

	select {
	case a := <-ready:
		if a.err != nil {
			st.close()
			return nil, a.err
		}
		st.targets = a.targets
		return st, nil
	case <-time.After(30 * time.Second):
		st.close()
		return nil, errors.New("server process not ready after 30s")
	}
}

// pinSelf moves every thread of this process to cpu.
func pinSelf(cpu int) error {
	out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(cpu), strconv.Itoa(os.Getpid())).CombinedOutput()
	if err != nil {
		return fmt.Errorf("taskset: %w: %s", err, out)
	}
	return nil
}

// loadavg returns the 1-minute load average, or "?".
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}
