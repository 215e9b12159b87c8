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
	run     func(t target) result
	metrics []metric
	// gateway pool bounds and nginx worker_connections; 0: the common ones
	maxConns, maxQueue, nginxConns int
}

func main() {
	var (
		duration    = flag.Duration("duration", 10*time.Second, "measured time per case, per target, per run")
		warmup      = flag.Duration("warmup", time.Second, "unmeasured time before each measurement")
		runs        = flag.Int("runs", 3, "runs per case; the table shows medians (failures and stalls: the worst run)")
		cases       = flag.String("cases", "nonstream,stream1,stream200,chat,scale", "comma-separated cases to run; also, not in the default: fleet (about 4 min; see -fleet-*), cache (in process, about 1 min per run; see -cache-*) and replicas (two gateway processes sharing limits in redis-server; about 2 min; see -replicas-*)")
		conns       = flag.Int("conns", 50, "keep-alive connections for nonstream")
		streams     = flag.Int("streams", 200, "concurrent streams for stream200")
		tokens      = flag.Int("tokens", 50, "tokens per stream")
		pacing      = flag.Duration("pacing", 5*time.Millisecond, "fake Ollama's delay between two tokens when streaming")
		scaleN      = flag.Int("scale-streams", 5000, "concurrent streams for scale")
		scaleTokens = flag.Int("scale-tokens", 20, "tokens per stream for scale")
		scalePacing = flag.Duration("scale-pacing", 500*time.Millisecond, "fake Ollama's delay between two tokens for scale")
		scaleRamp   = flag.Duration("scale-ramp", 3*time.Second, "scale: the streams' starts are spread over this")
		nginx       = flag.Bool("nginx", true, "include nginx when "+nginxPath+" exists")
		bare        = flag.Bool("bare", false, "add a column: a bare fasthttp proxy (Server handler calling HostClient.Do; no auth, IDs, logs, metrics, limits) — what fasthttp itself costs")
		pin         = flag.Bool("pin", true, "with taskset and 2+ CPUs: servers on CPU 0, load generator on CPU 1")
		syscalls    = flag.Bool("syscalls", false, "add rows: each server's system calls per request (nonstream, chat) and per frame (stream200), counted with perf stat on the kernel's syscall tracepoints")
		instr       = flag.Bool("instructions", false, "instead of the timed table: each proxy's user-space instructions per request, per stream and per frame, counted under valgrind's callgrind (steady to ±1 % where times move ±30 %)")
		otelCost    = flag.Bool("otel", false, "add two columns: the gateway (log on) exporting every request's spans to an OTLP collector that answers, and to one that accepts connections and never answers; prints their req/s, p50 and p99 over the gateway's, per run")
		instrReqs   = flag.Int("instructions-requests", 3000, "-instructions: non-stream requests counted (streams: a tenth as many of each length)")

		fleetFl   = registerFleetFlags()
		cacheFl   = registerCacheFlags()
		replFl    = registerReplicasFlags()
		serveMode = flag.Bool("serve", false, "internal: run the servers for the parent process")
		sf        serveFlags
	)
	flag.StringVar(&sf.role, "serve-role", "", "internal")
	flag.IntVar(&sf.maxQueue, "serve-maxqueue", 0, "internal")
	flag.IntVar(&sf.nginxConns, "serve-nginxconns", 0, "internal")
	flag.IntVar(&sf.tokens, "serve-tokens", 0, "internal")
	flag.DurationVar(&sf.delay, "serve-delay", 0, "internal")
	flag.IntVar(&sf.maxConns, "serve-maxconns", 0, "internal")
	flag.StringVar(&sf.dir, "serve-dir", "", "internal")
	flag.StringVar(&sf.upstream, "serve-upstream", "", "internal")
	flag.StringVar(&sf.fleet, "serve-fleet", "", "internal")
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
	if *scaleN < 1 || *scaleN > 9000 || *scaleTokens < 1 || *scaleTokens > 10000 || *scalePacing < 0 ||
		time.Duration(*scaleTokens)**scalePacing > 5*time.Minute || *scaleRamp < 0 || *scaleRamp > time.Minute {
		fmt.Fprintln(os.Stderr, "bench: -scale-streams must be 1..9000 (two sockets each at the proxy, 20,000 files per process), "+
			"a scale stream at most 5m long, -scale-ramp at most 1m")
		os.Exit(2)
	}

	nsMetrics, stMetrics := nonStreamMetrics, streamMetrics
	if *syscalls {
		if err := perfUsable(); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -syscalls left out:", err)
		} else {
			countSyscalls = true
			nsMetrics = append(slices.Clone(nsMetrics), syscallMetrics("req")...)
			stMetrics = append(slices.Clone(stMetrics), syscallMetrics("frame")...)
		}
	}
	all := []benchCase{
		{
			name: "nonstream", title: fmt.Sprintf("non-stream, %d conns", *conns),
			run:     func(t target) result { return runNonStream(t, *conns, *warmup, *duration, false) },
			metrics: nsMetrics,
		},
		{
			name: "chat", title: fmt.Sprintf("/chat + correlation IDs, %d conns (direct, nginx: /api/chat)", *conns),
			run:     func(t target) result { return runNonStream(t, *conns, *warmup, *duration, true) },
			metrics: nsMetrics,
		},
		{
			name: "stream1", title: fmt.Sprintf("stream ×1, %d tok × %s", *tokens, *pacing),
			tokens: *tokens, delay: *pacing,
			run:     func(t target) result { return runStream(t, 1, *tokens, *pacing, *warmup, *duration) },
			metrics: streamMetrics, // one paced stream: its CPU is timers, not frames
		},
		{
			name: "stream200", title: fmt.Sprintf("stream ×%d, %d tok × %s", *streams, *tokens, *pacing),
			tokens: *tokens, delay: *pacing,
			run:     func(t target) result { return runStream(t, *streams, *tokens, *pacing, *warmup, *duration) },
			metrics: stMetrics,
		},
		{
			name: "scale", title: fmt.Sprintf("scale: %d streams, %d tok × %s, ramp %s", *scaleN, *scaleTokens, *scalePacing, *scaleRamp),
			tokens: *scaleTokens, delay: *scalePacing,
			run:      func(t target) result { return runScale(t, *scaleN, *scaleTokens, *scalePacing, *scaleRamp) },
			metrics:  scaleMetrics,
			maxConns: *scaleN + 100, maxQueue: *scaleN, nginxConns: 3 * *scaleN, // two sockets a stream, plus closing ones and idle upstream keep-alives
		},
	}
	want := strings.Split(*cases, ",")
	var selected []benchCase
	for _, c := range all {
		if slices.Contains(want, c.name) {
			selected = append(selected, c)
		}
	}
	withFleet := slices.Contains(want, "fleet")
	withReplicas := slices.Contains(want, "replicas")
	if slices.Contains(want, "cache") {
		if cacheFl.chunks < 1 || cacheFl.batch < 1 || cacheFl.chats < 1 || cacheFl.latencyN < 10 || cacheFl.runs < 1 || cacheFl.runs > 20 ||
			cacheFl.embedDelay < 0 || cacheFl.memMax < 1<<20 {
			fmt.Fprintln(os.Stderr, "bench: -cache-* counts must be positive (latency requests ≥ 10, runs ≤ 20, mem max ≥ 1 MiB)")
			os.Exit(2)
		}
		fmt.Printf("%s\n\n", machine())
		runCacheCase(cacheFl)
		if len(selected) == 0 && !withFleet && !withReplicas {
			return
		}
	}
	if len(selected) == 0 && !withFleet && !withReplicas {
		fmt.Fprintf(os.Stderr, "bench: no known case in -cases %q (nonstream, stream1, stream200, chat, scale, fleet, replicas, cache)\n", *cases)
		os.Exit(2)
	}
	if withFleet {
		if err := fleetFl.validate(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
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
	if withReplicas {
		// Before this process pins itself: the replicas' processes (two
		// gateways, redis-server, fakes) run unpinned, as deployed.
		fmt.Printf("%s\n\n", machine())
		if err := runReplicas(replFl, *runs, dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench: replicas:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
		fmt.Println()
		if len(selected) == 0 && !withFleet {
			return
		}
	}

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
	if *instr {
		if *instrReqs < 10 || *instrReqs > 100_000 {
			fmt.Fprintln(os.Stderr, "bench: -instructions-requests must be 10..100000")
			os.Exit(2)
		}
		load := instructionLoad{requests: *instrReqs, streams: max(1, *instrReqs/10), conns: *conns}
		if err := runInstructions(load, withNginx, *bare, serverCPU, dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -instructions:", err)
			os.Exit(1)
		}
		return
	}
	if err := raiseNofile(uint64(*scaleN + 1000)); err != nil {
		fmt.Fprintln(os.Stderr, "bench: open-file limit:", err)
	}
	if len(selected) == 0 { // fleet alone
		runFleet(fleetFl, withNginx, serverCPU, pinning, dir)
		return
	}
	fmt.Printf("duration %s (+%s warmup) × %d runs per case and target (scale: one wave of streams per run); %s; "+
		"each server its own process; gateway defaults but pool.max_connections=%d (scale: %d, pool.max_queue %d); "+
		"nginx: 1 worker, proxy_buffering off, upstream keepalive, access_log to a file; gateway: access log at info to a file (batched queue, as in main)\n\n",
		*duration, *warmup, *runs, pinning, maxConns, *scaleN+100, *scaleN)
	fmt.Printf("load average at start: %s\n\n", loadavg())

	var tables, otelTables []string
	for _, c := range selected {
		// per target name, one result per run
		res := map[string][]result{}
		var names []string
		for r := range *runs {
			sf := serveFlags{tokens: c.tokens, delay: c.delay, maxConns: maxConns, maxQueue: c.maxQueue, nginxConns: c.nginxConns, dir: dir}
			if c.maxConns > 0 {
				sf.maxConns = c.maxConns
			}
			st, err := spawnStack(sf, withNginx, *bare, *otelCost, serverCPU)
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
				got := c.run(t)
				res[t.name] = append(res[t.name], got)
				fmt.Fprintf(os.Stderr, "bench: %s run %d %-18s done", c.name, r+1, t.name)
				if c.name == "scale" {
					fmt.Fprintf(os.Stderr, " (ok %d, peak concurrent %d, peak RSS %.1f MiB, RSS/stream %.1f KiB, goroutines/stream %.2f)",
						got.streams, got.peakConc, got.rssPeakMB, got.rssPerStream, got.gorPerStream)
				}
				if got.failed > 0 {
					fmt.Fprintf(os.Stderr, " (%d failed, first: %s)", got.failed, got.errMsg)
				}
				fmt.Fprintln(os.Stderr)
			}
			st.close()
		}
		tables = append(tables, rows(c, names, res))
		if *otelCost {
			otelTables = append(otelTables, otelRows(c, res, nameGatewayLive, "live"), otelRows(c, res, nameGatewayOtel, "silent"))
		}
	}
	fmt.Println(header(tablesNames(withNginx, *bare, *otelCost)))
	for _, t := range tables {
		fmt.Print(t)
	}
	if *otelCost {
		fmt.Print("\nTracing cost: the gateway exporting every request's spans ÷ the gateway, same runs " +
			"(median [min–max] over runs, then each run)\n\n")
		fmt.Println(tableHeader([]string{"case", "metric", "collector"}, []string{"÷ gateway", "per run"}))
		for _, t := range otelTables {
			fmt.Print(t)
		}
	}
	fmt.Printf("\nload average at end: %s\n", loadavg())
	fmt.Println("\nCells: value, then (×ratio to direct) for throughput, (+added over direct) for latencies; ms unless stated. " +
		"failed and stalls: the worst run; the rest: medians. chat: the gateways answer Vega's POST /chat {\"prompt\":\"hi\"}, " +
		"direct and nginx the equivalent /api/chat \"stream\":false (nginx has no /chat); every request carries its own X-Correlation-ID. " +
		"scale: TTFC counts from the dial; RSS is the target's process (nginx: master + worker) at its peak, per stream (peak − idle) ÷ streams; " +
		"– does not apply.")
	if withFleet {
		fmt.Println()
		runFleet(fleetFl, withNginx, serverCPU, pinning, dir)
	}
}

func tablesNames(withNginx, withBare, withOtel bool) []string {
	names := []string{"direct"}
	if withNginx {
		names = append(names, "nginx")
	}
	names = append(names, "gateway", "gateway (log off)")
	if withOtel {
		names = append(names, nameGatewayLive, nameGatewayOtel)
	}
	if withBare {
		names = append(names, "fasthttp (bare)")
	}
	return names
}

func header(names []string) string { return tableHeader([]string{"case", "metric"}, names) }

// tableHeader renders a markdown table's first two lines: label columns,
// then one right-aligned column per name.
func tableHeader(labels, names []string) string {
	var b strings.Builder
	b.WriteString("|")
	for _, l := range labels {
		b.WriteString(" " + l + " |")
	}
	for _, n := range names {
		b.WriteString(" " + n + " |")
	}
	b.WriteString("\n|")
	for range labels {
		b.WriteString("---|")
	}
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
			if m.name == "failed" || m.name == "stalls" {
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
	case m.na && v < 0:
		return "–"
	case m.integer:
		return fmt.Sprintf("%.0f", v)
	case m.dur:
		s := fmt.Sprintf("%.3f", v/1e6)
		if m.added && !isDirect {
			s += fmt.Sprintf(" (%+.3f)", (v-direct)/1e6)
		}
		return s
	default:
		s := fmt.Sprintf("%.*f", m.prec, v)
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

// otelRows renders, for one case, an exporting gateway's (column name)
// req/s, p50 and p99 (streams: TTFC p50 and p99) over the plain gateway's
// of the same run: the median ratio, its range, and every run's.
func otelRows(c benchCase, res map[string][]result, name, collector string) string {
	base, traced := res["gateway"], res[name]
	type ratio struct {
		name string
		get  func(result) float64
	}
	ratios := []ratio{
		{"req/s", func(r result) float64 { return r.rps }},
		{"p50", func(r result) float64 { return float64(r.p50) }},
		{"p99", func(r result) float64 { return float64(r.p99) }},
	}
	if c.name != "nonstream" && c.name != "chat" {
		ratios = []ratio{
			{"TTFC p50", func(r result) float64 { return float64(r.ttfc50) }},
			{"TTFC p99", func(r result) float64 { return float64(r.ttfc99) }},
		}
	}
	var b strings.Builder
	for _, m := range ratios {
		var xs []float64
		for i := range min(len(base), len(traced)) {
			if d := m.get(base[i]); d > 0 {
				xs = append(xs, m.get(traced[i])/d)
			}
		}
		if len(xs) == 0 {
			continue
		}
		runs := make([]string, len(xs))
		for i, x := range xs {
			runs[i] = fmt.Sprintf("%.3f", x)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.3f [%.3f–%.3f] | %s |\n", c.title, m.name, collector, median(xs), slices.Min(xs), slices.Max(xs), strings.Join(runs, ", "))
	}
	return b.String()
}
