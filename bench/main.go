// Command bench measures the gateway against a direct connection to a fake
// Ollama and, when installed, nginx as a reference proxy, and prints one
// markdown table with ratios to direct. See docs/BENCHMARKS.md.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// benchCase is one row group of the table.
type benchCase struct {
	name    string
	title   string
	tokens  int           // fake reply length; 0: the fake's default
	delay   time.Duration // fake pacing
	run     func(addr string) result
	metrics []metric
}

func main() {
	var (
		duration = flag.Duration("duration", 10*time.Second, "measured time per case, per target, per run")
		warmup   = flag.Duration("warmup", time.Second, "unmeasured time before each measurement")
		runs     = flag.Int("runs", 3, "runs per case; the table shows medians (failures and stalls: the worst run)")
		cases    = flag.String("cases", "nonstream,stream1,stream200", "comma-separated cases to run")
		conns    = flag.Int("conns", 50, "keep-alive connections for nonstream")
		streams  = flag.Int("streams", 200, "concurrent streams for stream200")
		tokens   = flag.Int("tokens", 50, "tokens per stream")
		pacing   = flag.Duration("pacing", 5*time.Millisecond, "fake Ollama's delay between two tokens when streaming")
		nginx    = flag.Bool("nginx", true, "include nginx when "+nginxPath+" exists")
		pin      = flag.Bool("pin", true, "with taskset and 2+ CPUs: servers on CPU 0, load generator on CPU 1")

		serveMode = flag.Bool("serve", false, "internal: run the servers for the parent process")
		sf        serveFlags
	)
	flag.IntVar(&sf.tokens, "serve-tokens", 0, "internal")
	flag.DurationVar(&sf.delay, "serve-delay", 0, "internal")
	flag.IntVar(&sf.maxConns, "serve-maxconns", 0, "internal")
	flag.BoolVar(&sf.nginx, "serve-nginx", false, "internal")
	flag.StringVar(&sf.dir, "serve-dir", "", "internal")
	flag.StringVar(&sf.upstream, "serve-upstream", "", "internal")
	flag.Parse()
	if *serveMode {
		if err := serve(sf); err != nil {
			fmt.Fprintln(os.Stderr, "bench -serve:", err)
			os.Exit(1)
		}
		return
	}
	if *runs < 1 || *runs > 20 || *duration <= 0 || *duration > 10*time.Minute {
		fmt.Fprintln(os.Stderr, "bench: -runs must be 1..20 and -duration in (0, 10m]")
		os.Exit(2)
	}

	all := []benchCase{
		{
			name: "nonstream", title: fmt.Sprintf("non-stream, %d conns", *conns),
			run:     func(addr string) result { return runNonStream(addr, *conns, *warmup, *duration) },
			metrics: nonStreamMetrics,
		},
		{
			name: "stream1", title: fmt.Sprintf("stream ×1, %d tok × %s", *tokens, *pacing),
			tokens: *tokens, delay: *pacing,
			run:     func(addr string) result { return runStream(addr, 1, *tokens, *pacing, *warmup, *duration) },
			metrics: streamMetrics,
		},
		{
			name: "stream200", title: fmt.Sprintf("stream ×%d, %d tok × %s", *streams, *tokens, *pacing),
			tokens: *tokens, delay: *pacing,
			run:     func(addr string) result { return runStream(addr, *streams, *tokens, *pacing, *warmup, *duration) },
			metrics: streamMetrics,
		},
	}
	want := strings.Split(*cases, ",")
	var selected []benchCase
	for _, c := range all {
		if slices.Contains(want, c.name) {
			selected = append(selected, c)
		}
	}
	if len(selected) == 0 {
		fmt.Fprintf(os.Stderr, "bench: no known case in -cases %q (nonstream, stream1, stream200)\n", *cases)
		os.Exit(2)
	}

	withNginx := *nginx
	if _, err := os.Stat(nginxPath); err != nil {
		withNginx = false
		fmt.Fprintf(os.Stderr, "bench: %s not found, no nginx column (apt-get install nginx-light)\n", nginxPath)
	}
	dir, err := os.MkdirTemp("", "vega-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)

	maxConns := max(*conns, *streams) + 56
	serverCPU := -1
	pinning := "not pinned"
	if _, err := exec.LookPath("taskset"); *pin && err == nil && runtime.NumCPU() >= 2 {
		if err := pinSelf(1); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		runtime.GOMAXPROCS(1)
		serverCPU = 0
		pinning = "servers (fake, nginx, gateways: each its own process) pinned to CPU 0, load generator to CPU 1"
	}
	fmt.Printf("%s\n\n", machine())
	fmt.Printf("duration %s (+%s warmup) × %d runs per case and target; %s; gateway defaults but pool.max_connections=%d; "+
		"nginx: 1 worker, proxy_buffering off, upstream keepalive, access_log to a file; gateway: access log at info to a file (diode, as in main)\n\n",
		*duration, *warmup, *runs, pinning, maxConns)
	fmt.Printf("load average at start: %s\n\n", loadavg())

	var tables []string
	for _, c := range selected {
		// per target name, one result per run
		res := map[string][]result{}
		var names []string
		for r := range *runs {
			st, err := spawnStack(serveFlags{tokens: c.tokens, delay: c.delay, maxConns: maxConns, nginx: withNginx, dir: dir}, serverCPU)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench:", err)
				os.Exit(1)
			}
			names = names[:0]
			for _, t := range st.targets {
				names = append(names, t.name)
			}
			// Rotate the order per run, so drift in the machine's load is
			// not always charged to the same target.
			order := slices.Clone(st.targets)
			k := r % len(order)
			order = append(order[k:], order[:k]...)
			for _, t := range order {
				got := c.run(t.addr)
				res[t.name] = append(res[t.name], got)
				fmt.Fprintf(os.Stderr, "bench: %s run %d %-18s done", c.name, r+1, t.name)
				if got.failed > 0 {
					fmt.Fprintf(os.Stderr, " (%d failed, first: %s)", got.failed, got.errMsg)
				}
				fmt.Fprintln(os.Stderr)
			}
			st.close()
		}
		tables = append(tables, rows(c, names, res))
	}
	fmt.Println(header(tablesNames(withNginx)))
	for _, t := range tables {
		fmt.Print(t)
	}
	fmt.Printf("\nload average at end: %s\n", loadavg())
	fmt.Println("\nCells: value, then (×ratio to direct) for throughput, (+added over direct) for latencies; ms unless stated.")
}

func tablesNames(withNginx bool) []string {
	if withNginx {
		return []string{"direct", "nginx", "gateway", "gateway (log off)"}
	}
	return []string{"direct", "gateway", "gateway (log off)"}
}

func header(names []string) string {
	var b strings.Builder
	b.WriteString("| case | metric |")
	for _, n := range names {
		b.WriteString(" " + n + " |")
	}
	b.WriteString("\n|---|---|")
	for range names {
		b.WriteString("---:|")
	}
	return b.String()
}

// rows renders one case: one row per metric, one column per target.
func rows(c benchCase, names []string, res map[string][]result) string {
	var b strings.Builder
	for _, m := range c.metrics {
		agg := func(name string) float64 {
			var xs []float64
			for _, r := range res[name] {
				xs = append(xs, m.get(r))
			}
			if m.integer && m.name != "streams" {
				return slices.Max(xs) // failures, stalls: the worst run
			}
			return median(xs)
		}
		direct := agg("direct")
		label := m.name
		if m.dur {
			label += " ms"
		}
		fmt.Fprintf(&b, "| %s | %s |", c.title, label)
		for _, n := range names {
			v := agg(n)
			b.WriteString(" " + cell(m, v, direct, n == "direct") + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func cell(m metric, v, direct float64, isDirect bool) string {
	switch {
	case m.integer:
		return fmt.Sprintf("%.0f", v)
	case m.dur:
		s := fmt.Sprintf("%.3f", v/1e6)
		if m.added && !isDirect {
			s += fmt.Sprintf(" (%+.3f)", (v-direct)/1e6)
		}
		return s
	default:
		s := fmt.Sprintf("%.0f", v)
		if m.ratio && !isDirect && direct > 0 {
			s += fmt.Sprintf(" (%.2f×)", v/direct)
		}
		return s
	}
}

// machine describes where the numbers come from.
func machine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		model = cpuModel(f)
		f.Close()
	}
	return fmt.Sprintf("machine: %d CPUs (%s), GOMAXPROCS %d, %s %s/%s",
		runtime.NumCPU(), model, runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func cpuModel(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
