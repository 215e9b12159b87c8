package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// The servers run in child processes — this same binary with -serve — so
// that they can be pinned to one CPU and the load generator to the other,
// and so that each has its own memory and scheduler: one child per role
// (the fake Ollama, nginx — its own processes under a small child that
// starts and stops it —, the gateway with its access log on, the gateway
// with logging off). Like with like: nginx shares neither a scheduler nor a
// heap with the upstream, and neither does the gateway; and a process's RSS
// is its own. A child prints one "target<TAB>name<TAB>addr<TAB>pid" line
// (pid: the process whose RSS counts: the child itself, or nginx's master),
// then "ready"; it answers each "stats" line on its stdin with
// "stats<TAB>goroutines", and stops everything when its stdin closes.

// Roles of a child.
const (
	roleFake         = "fake"
	roleNginx        = "nginx"
	roleGateway      = "gateway"
	roleGatewayNoLog = "gateway-nolog"
	roleBare         = "fasthttp-bare"
	roleGatewayOtel  = "gateway-otel"
	roleGatewayLive  = "gateway-otel-live"
)

// serveFlags are the child's settings, passed on its command line.
type serveFlags struct {
	role       string
	tokens     int
	delay      time.Duration
	maxConns   int // gateway pool.max_connections
	maxQueue   int // gateway pool.max_queue; 0: default
	nginxConns int // nginx worker_connections
	dir        string
	upstream   string // host:port of the fake, for the proxies
	fleet      string // the fleet roles' settings, JSON (fleetServeConfig)
}

// serve is the child: start the server of its role, announce it, answer
// stats requests until stdin EOF.
func serve(f serveFlags) error {
	if isFleetRole(f.role) {
		return serveFleet(f)
	}
	if err := raiseNofile(uint64(2*max(f.maxConns, f.nginxConns/2) + 1000)); err != nil {
		fmt.Fprintln(os.Stderr, "bench -serve: open-file limit:", err)
	}
	var (
		name, addr string
		pid        = os.Getpid()
		stop       func()
		err        error
	)
	switch f.role {
	case roleFake:
		var st *stack
		st, err = startFake(ollamatest.Config{Tokens: f.tokens, TokenDelay: f.delay})
		if err == nil {
			name, addr, stop = "direct", st.targets[0].addr, st.close
		}
	case roleNginx:
		name = "nginx"
		addr, pid, stop, err = startNginx(f.dir, f.upstream, f.nginxConns)
	case roleGateway, roleGatewayNoLog:
		name = "gateway"
		if f.role == roleGatewayNoLog {
			name = "gateway (log off)"
		}
		addr, stop, err = startGateway("http://"+f.upstream, f.role == roleGateway, f.dir, f.maxConns, f.maxQueue, "")
	case roleGatewayOtel, roleGatewayLive:
		name = nameGatewayOtel
		start := startSilentCollector
		if f.role == roleGatewayLive {
			name, start = nameGatewayLive, startLiveCollector
		}
		var collector string
		var stopCollector func()
		if collector, stopCollector, err = start(); err != nil {
			break
		}
		addr, stop, err = startGateway("http://"+f.upstream, true, f.dir, f.maxConns, f.maxQueue, collector)
		if err != nil {
			stopCollector()
			break
		}
		stopGateway := stop
		stop = func() { stopGateway(); stopCollector() }
	case roleBare:
		name = "fasthttp (bare)"
		addr, stop, err = startBare(f.upstream, f.maxConns)
	default:
		err = fmt.Errorf("unknown role %q", f.role)
	}
	if err != nil {
		return err
	}
	defer stop()
	if dir := os.Getenv("BENCH_CPUPROFILE_DIR"); dir != "" && (f.role == roleGateway || f.role == roleBare) {
		if fh, err := os.Create(filepath.Join(dir, f.role+".pprof")); err == nil {
			if pprof.StartCPUProfile(fh) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	fmt.Printf("target\t%s\t%s\t%d\n", name, addr, pid)
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin) // the parent closes stdin to stop us
	for sc.Scan() {
		if sc.Text() == "stats" {
			fmt.Printf("stats\t%d\n", runtime.NumGoroutine())
			if dir := os.Getenv("BENCH_MEMDEBUG_DIR"); dir != "" && f.role == roleGateway {
				memDebug(dir)
			}
		}
	}
	return nil
}

// raiseNofile raises this process's soft open-file limit to at least want
// (and the hard one too when allowed, as root). Go already raises the soft
// limit to the hard one at start; this covers a hard limit below want.
func raiseNofile(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= want {
		return nil
	}
	if lim.Max < want {
		next := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err == nil {
			return nil
		}
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < want {
		return fmt.Errorf("only %d open files (hard limit), %d wanted", lim.Cur, want)
	}
	return nil
}

// The columns of the gateway exporting spans (-otel): to a collector that
// never answers, and to one that does.
const (
	nameGatewayOtel = "gateway (otel, silent collector)"
	nameGatewayLive = "gateway (otel, live collector)"
)

// spawnStack starts the fake's child, then one child per proxy in front of
// it (nginx when withNginx, the gateway with its log on, with it off, with
// its log on and spans exported to a collector that answers and to one that
// never does when withOtel), all pinned to cpu when cpu >= 0, and the bare fasthttp proxy
// when withBare. Its targets are direct, then the proxies.
func spawnStack(f serveFlags, withNginx, withBare, withOtel bool, cpu int) (*stack, error) {
	st := &stack{}
	roles := []string{roleFake}
	if withNginx {
		roles = append(roles, roleNginx)
	}
	roles = append(roles, roleGateway, roleGatewayNoLog)
	if withOtel {
		roles = append(roles, roleGatewayLive, roleGatewayOtel)
	}
	if withBare {
		roles = append(roles, roleBare)
	}
	for _, role := range roles {
		f.role = role
		c, err := spawn(f, cpu)
		if err != nil {
			st.close()
			return nil, fmt.Errorf("%s: %w", role, err)
		}
		if role == roleFake {
			f.upstream = c.targets[0].addr
		}
		st.targets = append(st.targets, c.targets...)
		// the fake stops last: stops run in reverse order
		st.stops = append(st.stops, c.close)
	}
	return st, nil
}

// child is the parent's handle on a server process.
type child struct {
	mu    sync.Mutex // one stats request at a time
	stdin io.WriteCloser
	stats chan string
	proc  *os.Process // the child itself (taskset execs it): the fleet outage SIGKILLs it
}

// goroutines asks the child for runtime.NumGoroutine(); -1 when it does not
// answer within a second.
func (c *child) goroutines() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	select { // a late answer to an earlier request
	case <-c.stats:
	default:
	}
	if _, err := io.WriteString(c.stdin, "stats\n"); err != nil {
		return -1
	}
	select {
	case s := <-c.stats:
		n, err := strconv.Atoi(s)
		if err != nil {
			return -1
		}
		return n
	case <-time.After(time.Second):
		return -1
	}
}

// spawn starts one child, pinned to cpu when cpu >= 0, under the command
// wrap when given (valgrind, for -instructions).
func spawn(f serveFlags, cpu int, wrap ...string) (*stack, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{exe, "-serve", "-serve-role", f.role,
		"-serve-tokens", strconv.Itoa(f.tokens), "-serve-delay", f.delay.String(),
		"-serve-maxconns", strconv.Itoa(f.maxConns), "-serve-maxqueue", strconv.Itoa(f.maxQueue),
		"-serve-nginxconns", strconv.Itoa(f.nginxConns), "-serve-dir", f.dir,
		"-serve-upstream", f.upstream, "-serve-fleet", f.fleet}
	args = append(slices.Clone(wrap), args...)
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
	ctl := &child{stdin: stdin, stats: make(chan string, 1), proc: cmd.Process}
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
		isReady := false
		for sc.Scan() {
			line := sc.Text()
			parts := strings.Split(line, "\t")
			switch {
			case line == "ready" && !isReady:
				isReady = true
				ready <- a
			case len(parts) == 4 && parts[0] == "target" && !isReady:
				pid, _ := strconv.Atoi(parts[3])
				a.targets = append(a.targets, target{name: parts[1], addr: parts[2], pid: pid, ctl: ctl})
			case len(parts) == 2 && parts[0] == "stats":
				select {
				case ctl.stats <- parts[1]:
				default:
				}
			}
		}
		if !isReady {
			a.err = errors.New("server process ended before it was ready")
			ready <- a
		}
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

// rssKB is the resident set of pid and its child processes (nginx's
// workers under its master), from /proc, in KiB; -1 if pid is gone.
func rssKB(pid int) int64 { return sumOverChildren(pid, vmRSS) }

// cpuTime is the CPU time (user + system, all threads) of pid and its
// child processes, from /proc; -1 if pid is gone.
func cpuTime(pid int) time.Duration {
	return time.Duration(sumOverChildren(pid, func(p int) int64 { return int64(procCPU(p)) }))
}

// sumOverChildren adds up get over pid and its child processes; -1 if
// pid itself gives -1 (it is gone).
func sumOverChildren(pid int, get func(pid int) int64) int64 {
	total := get(pid)
	if total < 0 {
		return -1
	}
	for _, c := range childPIDs(pid) {
		if v := get(c); v > 0 {
			total += v
		}
	}
	return total
}

// childPIDs lists pid's child processes (nginx's worker under its master),
// from /proc; none if it cannot be read.
func childPIDs(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			pids = append(pids, c)
		}
	}
	return pids
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go runs on.
const clockTicks = 100

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) may hold spaces: count from after it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(utime+stime) * time.Second / clockTicks
}

func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

// memDebugNext is the goroutine count at which memDebug reports again: a
// report every 500 goroutines more than the last, so the last one written
// is near the peak of a scale wave.
var memDebugNext int

// memDebug (BENCH_MEMDEBUG_DIR set: a profiling aid for the scale case)
// prints where the gateway's memory is — heap, goroutine stacks — and
// writes dir/heap.pprof, each time the goroutine count has grown by 500.
func memDebug(dir string) {
	g := runtime.NumGoroutine()
	if g < memDebugNext {
		return
	}
	memDebugNext = g + 500
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "memdebug goroutines=%d heap_inuse_kib=%d heap_sys_kib=%d stack_inuse_kib=%d sys_kib=%d\n",
		g, ms.HeapInuse>>10, ms.HeapSys>>10, ms.StackInuse>>10, ms.Sys>>10)
	// And what of it is live: after a forced collection, the heap holds
	// only what the streams keep.
	runtime.GC()
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "memdebug-live goroutines=%d heap_inuse_kib=%d heap_sys_kib=%d stack_inuse_kib=%d sys_kib=%d\n",
		g, ms.HeapInuse>>10, ms.HeapSys>>10, ms.StackInuse>>10, ms.Sys>>10)
	if fh, err := os.Create(filepath.Join(dir, "heap.pprof")); err == nil {
		_ = pprof.WriteHeapProfile(fh)
		_ = fh.Close()
	}
}
