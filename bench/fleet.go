package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vega-gateway/vega-gateway/fleet"
	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// The fleet case (-cases fleet) puts three fake Ollamas in scheduler mode,
// each its own process, behind each routing variant in turn — the gateway
// at each fleet policy, and nginx round robin — and runs five workloads
// against them, one table each. Every variant of a workload starts from
// fresh (cold) fakes and sends the same requests per client (-fleet-seed).
// One run per variant: the tables are not medians.

// fleetFlags are the fleet case's settings.
type fleetFlags struct {
	duration, warmup, outage time.Duration
	clients                  int
	seed                     uint64
	workloads, variants      string
	logDir                   string
}

// registerFleetFlags declares the -fleet-* flags.
func registerFleetFlags() *fleetFlags {
	var ff fleetFlags
	flag.DurationVar(&ff.duration, "fleet-duration", 8*time.Second, "fleet: measured time per workload and variant")
	flag.DurationVar(&ff.warmup, "fleet-warmup", 2*time.Second, "fleet: unmeasured time before it (the fakes start cold)")
	flag.DurationVar(&ff.outage, "fleet-outage", 3*time.Second, "fleet (d): how long the killed backend stays down")
	flag.IntVar(&ff.clients, "fleet-clients", 12, "fleet: concurrent clients ((b): half as many, (e): a quarter more)")
	flag.Uint64Var(&ff.seed, "fleet-seed", 1, "fleet: seed of the clients' requests (the same for every variant)")
	flag.StringVar(&ff.workloads, "fleet-workloads", "a,b,c,d,e", "fleet: workloads to run (a one model, b three models, c conversations, d backend outage, e small queue)")
	flag.StringVar(&ff.variants, "fleet-variants", "model_aware,least_loaded,round_robin,nginx", "fleet: the columns: gateway routing policies, and nginx (round robin; when installed and -nginx)")
	flag.StringVar(&ff.logDir, "fleet-log", "", "fleet: write each gateway's access log (info: backend, route_reason, ttft_ms per request) to this directory as fleet-<workload>-<policy>.log")
	return &ff
}

func (ff *fleetFlags) validate() error {
	switch {
	case ff.duration <= 0 || ff.duration > 10*time.Minute || ff.warmup < 0 || ff.warmup > time.Minute:
		return errors.New("-fleet-duration must be in (0, 10m], -fleet-warmup in [0, 1m]")
	case slices.Contains(strings.Split(ff.workloads, ","), "d") && (ff.outage <= 0 || ff.outage > ff.duration/2):
		return errors.New("-fleet-outage must be positive and at most half of -fleet-duration (workload d)")
	case ff.clients < 4 || ff.clients > 1000:
		return errors.New("-fleet-clients must be 4..1000")
	}
	_, err := fleetVariants(ff.variants, true)
	return err
}

// fleetVariants are the columns asked for, in this order: the gateway at
// each policy, then nginx (when withNginx).
func fleetVariants(asked string, withNginx bool) ([]string, error) {
	want := strings.Split(asked, ",")
	for _, w := range want {
		if !slices.Contains(allFleetVariants, w) {
			return nil, fmt.Errorf("-fleet-variants: unknown %q (%s)", w, strings.Join(allFleetVariants, ", "))
		}
	}
	var v []string
	for _, a := range allFleetVariants {
		if slices.Contains(want, a) && (a != "nginx" || withNginx) {
			v = append(v, a)
		}
	}
	if len(v) == 0 {
		return nil, errors.New("-fleet-variants: none to run (nginx alone, but nginx is left out)")
	}
	return v, nil
}

var allFleetVariants = []string{fleet.PolicyModelAware, fleet.PolicyLeastLoaded, fleet.PolicyRoundRobin, "nginx"}

// fleetResult is one variant's run of one workload.
type fleetResult struct {
	ok                int
	rps               float64
	ttft50, ttft95    time.Duration
	failedBefore, cut int
	busy              int // busy 503s the clients got
	firstErr          string
	backends          [fleetSize]fakeStats // over the measured window
}

func (r fleetResult) total() fakeStats {
	var t fakeStats
	for _, b := range r.backends {
		t = t.add(b)
	}
	return t
}

// shares are each backend's share of the inference requests it served
// (received less those refused busy); false when a fake could not count
// them.
func (r fleetResult) shares() ([fleetSize]float64, bool) {
	var s [fleetSize]float64
	t := r.total()
	total := t.Chats - t.BusyRejections
	for _, b := range r.backends {
		if b.Chats < 0 {
			return s, false
		}
	}
	if total <= 0 {
		return s, false
	}
	for i, b := range r.backends {
		s[i] = float64(b.Chats-b.BusyRejections) / float64(total)
	}
	return s, true
}

// runFleetCase runs the selected workloads for every variant and prints
// their tables; ff has been validated.
func runFleetCase(ff *fleetFlags, withNginx bool, cpu int, dir string) error {
	want := strings.Split(ff.workloads, ",")
	var selected []*fleetWorkload
	for _, w := range fleetWorkloads(ff.clients, ff.seed) {
		if slices.Contains(want, w.id) {
			selected = append(selected, w)
		}
	}
	if len(selected) == 0 {
		return fmt.Errorf("no known workload in -fleet-workloads %q (a, b, c, d, e)", ff.workloads)
	}
	variants, err := fleetVariants(ff.variants, withNginx)
	if err != nil {
		return err
	}
	start := time.Now()
	fmt.Printf("fleet: %d fake Ollamas (scheduler mode, each its own process), %d-token replies %s apart; "+
		"per workload and variant: fresh fakes, %s warm-up, %s measured, one run; seed %d\n",
		fleetSize, fleetTokens, fleetTokenDelay, ff.warmup, ff.duration, ff.seed)
	for _, w := range selected {
		res := map[string]fleetResult{}
		for _, v := range variants {
			r, err := runFleetVariant(w, v, ff, cpu, dir)
			if err != nil {
				return fmt.Errorf("(%s) %s: %w", w.id, v, err)
			}
			res[v] = r
			fmt.Fprintf(os.Stderr, "bench: fleet (%s) %-12s done: %d ok, %.1f req/s", w.id, v, r.ok, r.rps)
			if r.failedBefore > 0 {
				fmt.Fprintf(os.Stderr, " (%d failed before the response, first: %s)", r.failedBefore, r.firstErr)
			}
			if r.cut > 0 {
				fmt.Fprintf(os.Stderr, " (%d cut)", r.cut)
			}
			fmt.Fprintln(os.Stderr)
		}
		fmt.Print(fleetTable(w, variants, res))
	}
	fmt.Printf("fleet: %d workloads × %d variants in %s\n", len(selected), len(variants), time.Since(start).Round(time.Second))
	fmt.Println("\nCells: clients' view over the measured window (requests started in it): TTFT from the request to the " +
		"first frame with content; failed before the response: no answer or an error status; cut: a 200 whose " +
		"stream broke or ended in an error line; busy 503s are also counted as failed. Fakes' view over the same " +
		"window: cold loads, evictions, busy rejections, prompt tokens from a slot's cache, each backend's share " +
		"of the POST /api/chat served (a killed backend's counted up to its kill). Ratios are to the named variant's " +
		"value (–: the baseline itself); ✓/✗: the target. A share's target is relative: a third ± a tenth of a third.")
	return nil
}

// fleetProc is one fake's child process.
type fleetProc struct {
	st   *stack
	addr string
}

func (p *fleetProc) ctl() *child { return p.st.targets[0].ctl }

// spawnFleetChild starts one fleet child and returns it with its target.
func spawnFleetChild(role string, cfg fleetServeConfig, cpu int, dir string) (*stack, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return spawn(serveFlags{role: role, fleet: string(b), dir: dir}, cpu)
}

// runFleetVariant runs w once against variant v: fresh fakes, the models
// of w.warm loaded on each, the proxy, the load; then the fakes' counters.
func runFleetVariant(w *fleetWorkload, v string, ff *fleetFlags, cpu int, dir string) (fleetResult, error) {
	var r fleetResult
	fakeCfg := func(i int, addr string) fleetServeConfig {
		sc := w.fakes[i]
		return fleetServeConfig{Fake: ollamatest.Config{Addr: addr, Tokens: fleetTokens, TokenDelay: fleetTokenDelay,
			Models: w.models, Scheduler: &sc}}
	}
	var procs [fleetSize]*fleetProc
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.st.close()
			}
		}
	}()
	var spawnErrs [fleetSize]error
	var started sync.WaitGroup
	for i := range procs { // at once: each takes a process start
		started.Add(1)
		go func() {
			defer started.Done()
			st, err := spawnFleetChild(roleFleetFake, fakeCfg(i, ""), cpu, dir)
			if err != nil {
				spawnErrs[i] = fmt.Errorf("fake b%d: %w", i+1, err)
				return
			}
			procs[i] = &fleetProc{st: st, addr: st.targets[0].addr}
		}()
	}
	started.Wait()
	if err := errors.Join(spawnErrs[:]...); err != nil {
		return r, err
	}
	var upstreams []string
	for _, p := range procs {
		upstreams = append(upstreams, p.addr)
	}
	if err := warmFleet(upstreams, w.warm); err != nil {
		return r, err
	}
	role, policy := roleFleetGateway, v
	if v == "nginx" {
		role, policy = roleFleetNginx, ""
	}
	pcfg := fleetServeConfig{Policy: policy, Upstreams: upstreams, MaxConns: 4 * w.clients}
	if ff.logDir != "" && role == roleFleetGateway {
		pcfg.AccessLog = filepath.Join(ff.logDir, fmt.Sprintf("fleet-%s-%s.log", w.id, v))
	}
	proxy, err := spawnFleetChild(role, pcfg, cpu, dir)
	if err != nil {
		return r, fmt.Errorf("proxy: %w", err)
	}
	defer proxy.close()

	start := time.Now()
	measureFrom := start.Add(ff.warmup)
	endsAt := measureFrom.Add(ff.duration)
	var (
		base, killed [fleetSize]fakeStats
		errs         = make(chan error, 2)
		wg           sync.WaitGroup
	)
	wg.Add(1)
	go func() { // baseline at the window's start; the outage inside it
		defer wg.Done()
		time.Sleep(time.Until(measureFrom))
		for i, p := range procs {
			s, err := queryFakeStats(p.ctl())
			if err != nil {
				errs <- fmt.Errorf("fake b%d stats: %w", i+1, err)
				return
			}
			base[i] = s
		}
		if !w.outage {
			return
		}
		time.Sleep(time.Until(measureFrom.Add(ff.duration / 3)))
		const down = 1 // b2
		p := procs[down]
		s, err := queryFakeStats(p.ctl())
		if err != nil {
			errs <- fmt.Errorf("fake b2 stats before the kill: %w", err)
			return
		}
		killed[down] = s.sub(base[down])
		base[down] = fakeStats{}
		_ = p.ctl().proc.Kill() // SIGKILL, the child we started
		p.st.close()            // reaps it
		fmt.Fprintf(os.Stderr, "bench: fleet (%s) %s: b2 killed\n", w.id, v)
		time.Sleep(ff.outage)
		st, err := respawnFake(fakeCfg(down, p.addr), cpu, dir)
		if err != nil {
			errs <- fmt.Errorf("fake b2 restart: %w", err)
			return
		}
		procs[down] = &fleetProc{st: st, addr: p.addr}
		fmt.Fprintf(os.Stderr, "bench: fleet (%s) %s: b2 back on %s\n", w.id, v, p.addr)
	}()
	load := runFleetLoad(w, proxy.targets[0].addr, ff.seed, measureFrom, endsAt)
	wg.Wait()
	select {
	case err := <-errs:
		return r, err
	default:
	}
	for i, p := range procs {
		s, err := queryFakeStats(p.ctl())
		if err != nil {
			return r, fmt.Errorf("fake b%d stats: %w", i+1, err)
		}
		r.backends[i] = s.sub(base[i]).add(killed[i])
	}
	if v != "nginx" {
		if s, err := proxy.targets[0].ctl.query(); err == nil {
			fmt.Fprintf(os.Stderr, "bench: fleet (%s) %s gateway: %s\n", w.id, v, s)
		}
	}
	r.ok, r.failedBefore, r.cut, r.busy = load.ok, load.failedBefore, load.cut, load.busy
	r.firstErr = load.firstErr
	if r.firstErr == "" {
		r.firstErr = load.firstCut
	}
	r.rps = float64(load.ok) / ff.duration.Seconds()
	r.ttft50, r.ttft95 = load.percentiles()
	return r, nil
}

// respawnFake starts a fake again on the port of a killed one; the port
// may take a moment to be free.
func respawnFake(cfg fleetServeConfig, cpu int, dir string) (*stack, error) {
	var err error
	for range 20 {
		var st *stack
		if st, err = spawnFleetChild(roleFleetFake, cfg, cpu, dir); err == nil {
			return st, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, err
}

// warmFleet loads each model on every fake (Ollama's load request: a chat
// without messages) and waits for the loads.
func warmFleet(addrs, models []string) error {
	if len(models) == 0 {
		return nil
	}
	c := &http.Client{Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	errs := make(chan error, len(addrs)*len(models))
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Add(1)
		go func() { // one model after the other: a fake loads one at a time
			defer wg.Done()
			for _, m := range models {
				body := fmt.Sprintf(`{"model":%q,"messages":[]}`, m)
				resp, err := c.Post("http://"+a+"/api/chat", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- fmt.Errorf("load %s on %s: %w", m, a, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("load %s on %s: status %d", m, a, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when closed empty
}

// query asks the child for its stats line; the answer is the line's
// payload.
func (c *child) query() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select { // a late answer to an earlier request
	case <-c.stats:
	default:
	}
	if _, err := io.WriteString(c.stdin, "stats\n"); err != nil {
		return "", err
	}
	select {
	case s := <-c.stats:
		return s, nil
	case <-time.After(5 * time.Second):
		return "", errors.New("no answer to stats within 5s")
	}
}

func queryFakeStats(c *child) (fakeStats, error) {
	var s fakeStats
	line, err := c.query()
	if err != nil {
		return s, err
	}
	err = json.Unmarshal([]byte(line), &s)
	return s, err
}

// fleetTable renders one workload: a row per measure, a column per
// variant, then the target rows.
func fleetTable(w *fleetWorkload, variants []string, res map[string]fleetResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n#### fleet (%s): %s\n\n", w.id, w.title)
	b.WriteString(tableHeader([]string{"metric"}, variants) + "\n")
	row := func(label string, cell func(r fleetResult) string) {
		b.WriteString("| " + label + " |")
		for _, v := range variants {
			b.WriteString(" " + cell(res[v]) + " |")
		}
		b.WriteString("\n")
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/1e6) }
	row("requests ok", func(r fleetResult) string { return fmt.Sprint(r.ok) })
	row("req/s", func(r fleetResult) string { return fmt.Sprintf("%.1f", r.rps) })
	row("TTFT p50 ms", func(r fleetResult) string { return ms(r.ttft50) })
	row("TTFT p95 ms", func(r fleetResult) string { return ms(r.ttft95) })
	row("failed before the response", func(r fleetResult) string { return fmt.Sprint(r.failedBefore) })
	row("failed: cut mid-stream", func(r fleetResult) string { return fmt.Sprint(r.cut) })
	row("busy 503s at clients", func(r fleetResult) string { return fmt.Sprint(r.busy) })
	row("cold loads (fakes)", func(r fleetResult) string { return fmt.Sprint(r.total().ColdLoads) })
	row("evictions (fakes)", func(r fleetResult) string { return fmt.Sprint(r.total().Evictions) })
	row("busy rejections (fakes)", func(r fleetResult) string { return fmt.Sprint(r.total().BusyRejections) })
	row("prompt tokens from cache", func(r fleetResult) string { return percent(cacheShare(r)) })
	row("share of requests served b1/b2/b3", func(r fleetResult) string {
		s, ok := r.shares()
		if !ok {
			return "?"
		}
		return fmt.Sprintf("%.0f/%.0f/%.0f %%", 100*s[0], 100*s[1], 100*s[2])
	})
	for _, t := range w.targets {
		b.WriteString("| **" + t.label + "** |")
		for _, v := range variants {
			b.WriteString(" " + targetCell(t, v, res) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func percent(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.1f %%", v)
}

// targetCell is a target row's value for variant v, with ✓ or ✗.
func targetCell(t fleetTarget, v string, res map[string]fleetResult) string {
	if t.baseline == v {
		return "–"
	}
	x := t.get(res[v])
	if t.baseline != "" {
		base, ok := res[t.baseline]
		if !ok {
			return "–"
		}
		d := t.get(base)
		if d == 0 {
			return "n/a (baseline 0)"
		}
		x /= d
	}
	if math.IsNaN(x) {
		return "?"
	}
	mark := " ✗"
	if t.pass(x) {
		mark = " ✓"
	}
	return fmt.Sprintf(t.format, x) + mark
}

// runFleet runs the fleet case with the machine's context around its
// tables; on an error it removes dir and ends the process.
func runFleet(ff *fleetFlags, withNginx bool, cpu int, pinning, dir string) {
	fmt.Printf("fleet: %s; load average at start: %s\n", pinning, loadavg())
	if err := runFleetCase(ff, withNginx, cpu, dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench: fleet:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	fmt.Printf("\nload average at end: %s\n", loadavg())
}
