package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// With -syscalls, the non-stream and 200-stream rows also count each
// server's system calls per request or per frame, from the kernel's
// syscall tracepoints (perf stat; no sampling, next to no overhead). The
// question they answer is which part of a proxy's CPU is its own code and
// which is the calls every proxy must make: nginx reads a socket only when
// epoll said it has bytes, a Go server reads first and waits for epoll
// only after an EAGAIN, and the Go runtime adds timer sleeps and thread
// wake-ups of its own.

// perfPath is where Debian's linux-perf puts perf.
const perfPath = "/usr/bin/perf"

// syscallKinds groups the tracepoints into the table's rows.
var syscallKinds = []struct {
	row    string
	events []string
}{
	{"reads", []string{"read", "recvfrom", "readv"}},
	{"writes", []string{"write", "writev", "sendto", "sendmsg"}},
	{"epoll waits", []string{"epoll_wait", "epoll_pwait"}},
	{"Go runtime sleeps and wake-ups", []string{"futex", "nanosleep", "sched_yield"}},
}

// syscallCounts is what one window counted, by syscallKinds row, plus all
// system calls, first in total and then (per) per unit of work.
type syscallCounts struct {
	byKind []float64
	all    float64
}

// per divides the counts by units; nil for nothing counted or no units.
func (c *syscallCounts) per(units int) *syscallCounts {
	if c == nil || units == 0 {
		return nil
	}
	p := &syscallCounts{all: c.all / float64(units)}
	for _, n := range c.byKind {
		p.byKind = append(p.byKind, n/float64(units))
	}
	return p
}

// syscallCounter counts a process's system calls over a window.
type syscallCounter struct {
	cmd *exec.Cmd
	out string
}

// countSyscalls is -syscalls, once perfUsable said yes.
var countSyscalls bool

// perfUsable reports whether perf can count syscall tracepoints here
// (root, or perf_event_paranoid low enough, and tracefs mounted).
func perfUsable() error {
	if _, err := os.Stat(perfPath); err != nil {
		return fmt.Errorf("%s not found (apt-get install linux-perf)", perfPath)
	}
	out, err := exec.Command(perfPath, "stat", "-x,", "-e", "syscalls:sys_enter_read", "--", "true").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("sys_enter_read")) || bytes.Contains(out, []byte("<not")) {
		return fmt.Errorf("perf cannot count syscall tracepoints: %v %.200s", err, out)
	}
	return nil
}

// startSyscallCounter starts perf stat on pid and its child processes
// (nginx's worker); stop ends it and reads the counts.
func startSyscallCounter(pid int) (*syscallCounter, error) {
	pids := []string{strconv.Itoa(pid)}
	for _, c := range childPIDs(pid) {
		pids = append(pids, strconv.Itoa(c))
	}
	var events []string
	for _, k := range syscallKinds {
		for _, e := range k.events {
			events = append(events, "syscalls:sys_enter_"+e)
		}
	}
	events = append(events, "raw_syscalls:sys_enter")
	f, err := os.CreateTemp("", "bench-perf-*.csv")
	if err != nil {
		return nil, err
	}
	f.Close()
	cmd := exec.Command(perfPath, "stat", "-x,", "-o", f.Name(), "-e", strings.Join(events, ","), "-p", strings.Join(pids, ","))
	if err := cmd.Start(); err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return &syscallCounter{cmd: cmd, out: f.Name()}, nil
}

// stop ends the count and returns it; nil if perf failed.
func (c *syscallCounter) stop() *syscallCounts {
	defer os.Remove(c.out)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
		return nil
	}
	b, err := os.ReadFile(c.out)
	if err != nil {
		return nil
	}
	return parsePerfStat(b)
}

// parsePerfStat reads perf stat's -x, output: one "count,unit,event,…"
// line per event. It returns nil without the raw_syscalls total, which
// every run asks for; an event perf could not count ("<not counted>")
// counts 0.
func parsePerfStat(b []byte) *syscallCounts {
	count := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue // "<not counted>", comments
		}
		name := strings.TrimPrefix(strings.TrimPrefix(f[2], "syscalls:sys_enter_"), "raw_syscalls:sys_")
		count[name] = v
	}
	all, ok := count["enter"]
	if !ok {
		return nil
	}
	sc := &syscallCounts{all: all}
	for _, k := range syscallKinds {
		n := 0.0
		for _, e := range k.events {
			n += count[e]
		}
		sc.byKind = append(sc.byKind, n)
	}
	return sc
}

// syscallMetrics are the rows -syscalls adds, per request or per frame.
func syscallMetrics(unit string) []metric {
	ms := []metric{{name: "syscalls/" + unit, get: func(r result) float64 {
		if r.syscalls == nil {
			return -1
		}
		return r.syscalls.all
	}, prec: 2, na: true}}
	for i, k := range syscallKinds {
		ms = append(ms, metric{name: "  " + k.row + "/" + unit, get: func(r result) float64 {
			if r.syscalls == nil {
				return -1
			}
			return r.syscalls.byKind[i]
		}, prec: 2, na: true})
	}
	return ms
}
