package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// The replicas case (issue 17): two gateway processes share one
// redis-server and three fake Ollama processes. It measures the latency
// that shared limits add per request against limits off and in-process
// limits, in the same run, and checks that the limits hold across the
// replicas: requests_per_minute exact, tokens_per_minute overdrawn by at
// most one request, a SIGKILLed replica's slots back within
// limits.lease_ttl, and no failed request while Redis is stopped
// (on_redis_error: allow), with counting resumed after it returns.

type replicasFlags struct {
	duration, warmup, leaseTTL, outage time.Duration
	conns, rpm                         int
}

func registerReplicasFlags() *replicasFlags {
	rf := &replicasFlags{}
	flag.DurationVar(&rf.duration, "replicas-duration", 5*time.Second, "replicas: measured time per variant and run")
	flag.DurationVar(&rf.warmup, "replicas-warmup", time.Second, "replicas: unmeasured time before each measurement")
	flag.IntVar(&rf.conns, "replicas-conns", 4, "replicas: closed-loop clients, spread over the two gateways (few: latency is measured below saturation)")
	flag.IntVar(&rf.rpm, "replicas-rpm", 300, "replicas: the requests_per_minute checked for exactness (twice as many are sent)")
	flag.DurationVar(&rf.leaseTTL, "replicas-lease-ttl", 3*time.Second, "replicas: limits.lease_ttl of the kill scenario")
	flag.DurationVar(&rf.outage, "replicas-outage", 2*time.Second, "replicas: how long Redis is stopped mid-run")
	return rf
}

const benchKey = "bench-key-0123456789abcdef0123456789abcdef"

// huge is a limit the load never reaches: every check is made, none refuses.
const huge = 1_000_000_000

func keysJSON(limits map[string]any) string {
	k := map[string]any{"name": "bench", "key": benchKey}
	for n, v := range limits {
		k[n] = v
	}
	b, _ := json.Marshal([]any{k})
	return string(b)
}

// replicaVariants are the latency columns: the same two gateways and load,
// with the key's limits off, kept in each process, and shared in Redis.
var replicaVariants = []string{"limits off", "in-process limits", "Redis limits", "Redis, rpm only"}

func runReplicas(rf *replicasFlags, runs int, dir string) error {
	gwBin, fakeBin, err := buildBinaries(dir)
	if err != nil {
		return err
	}
	rd, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer rd.stop()
	urls, stopFakes, err := startFakes(fakeBin, 3, "-tokens", "5")
	if err != nil {
		return err
	}
	defer stopFakes()
	upstreams := "VEGA_UPSTREAMS=" + strings.Join(urls, ",")
	all := map[string]any{"requests_per_minute": huge, "max_concurrent": huge, "tokens_per_minute": huge, "tokens_per_day": huge}
	envs := map[string][]string{
		"limits off":        {upstreams, "VEGA_AUTH_KEYS=" + keysJSON(nil)},
		"in-process limits": {upstreams, "VEGA_AUTH_KEYS=" + keysJSON(all)},
		"Redis limits":      {upstreams, "VEGA_AUTH_KEYS=" + keysJSON(all), "VEGA_LIMITS_REDIS_URL=" + rd.url()},
		// Admission only: no token budget to charge, no slot to give back.
		"Redis, rpm only": {upstreams, "VEGA_AUTH_KEYS=" + keysJSON(map[string]any{"requests_per_minute": huge}), "VEGA_LIMITS_REDIS_URL=" + rd.url()},
	}
	fmt.Printf("#### replicas: two gateway processes, one redis-server (loopback), three fake Ollamas (processes)\n\n")
	fmt.Printf("%d closed-loop clients alternating over the two gateways, non-stream /api/chat (5 tokens), %s (+%s warmup) per variant × %d runs, order rotated per run; not pinned. "+
		"Limits on: the key has requests_per_minute, max_concurrent, tokens_per_minute and tokens_per_day, all out of reach, so every check is made (with Redis: one script at admission, one at the end); rpm only: requests_per_minute alone, one script at admission and nothing at the end.\n\n",
		rf.conns, rf.duration, rf.warmup, runs)
	res := map[string][]loadResult{}
	for r := range runs {
		order := slices.Clone(replicaVariants)
		k := r % len(order)
		order = append(order[k:], order[:k]...)
		for _, v := range order {
			gws, err := startGateways(gwBin, 2, envs[v], dir)
			if err != nil {
				return fmt.Errorf("%s: %w", v, err)
			}
			addrs := []string{gws[0].data, gws[1].data}
			loadFor(addrs, rf.conns, rf.warmup, nil)
			got := loadFor(addrs, rf.conns, rf.duration, nil)
			stopGateways(gws)
			res[v] = append(res[v], got)
			fmt.Fprintf(os.Stderr, "bench: replicas run %d %-18s %.0f req/s, p50 %s, p99 %s, %d failed %s\n",
				r+1, v, got.rps, got.p50, got.p99, got.failed, got.firstErr)
		}
	}
	rtt, err := redisRoundTrip(rd.addr, 2000)
	if err != nil {
		return err
	}
	fmt.Println(replicasTable(res))
	fmt.Printf("One Redis round trip in this run (PING from this process over go-redis, 2000 in a row): p50 %.3f ms, p99 %.3f ms.\n",
		float64(rtt[0].Microseconds())/1000, float64(rtt[1].Microseconds())/1000)
	if perCall, err := redisUsecPerCall(rd.addr, "evalsha"); err == nil {
		fmt.Printf("Redis's own time per limits script over the Redis variants (INFO commandstats, evalsha): %.1f µs; load average now %s.\n", perCall, loadavg())
	}

	fmt.Printf("\n| check (two gateways, shared Redis) | result |\n|---|---|\n")
	for _, check := range []func() (string, string, error){
		func() (string, string, error) { return checkRate(gwBin, upstreams, rd, rf, dir) },
		func() (string, string, error) { return checkTokens(gwBin, upstreams, rd, dir) },
		func() (string, string, error) { return checkKill(gwBin, fakeBin, rd, rf, dir) },
		func() (string, string, error) { return checkOutage(gwBin, upstreams, rd, rf, dir) },
	} {
		// Each check starts from an empty Redis: the latency runs used the
		// same key name.
		rdb := redis.NewClient(&redis.Options{Addr: rd.addr})
		err := rdb.FlushDB(context.Background()).Err()
		rdb.Close()
		if err != nil {
			return fmt.Errorf("flushdb: %w", err)
		}
		name, result, err := check()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf("| %s | %s |\n", name, result)
	}
	return nil
}

// redisRoundTrip times n PINGs in a row: p50 and p99.
func redisRoundTrip(addr string, n int) ([2]time.Duration, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := rdb.Ping(context.Background()).Err(); err != nil {
			return [2]time.Duration{}, fmt.Errorf("redis ping: %w", err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return [2]time.Duration{pct(lat, .5), pct(lat, .99)}, nil
}

// redisUsecPerCall reads a command's mean server time from INFO
// commandstats.
func redisUsecPerCall(addr, cmd string) (float64, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":"); ok {
			for _, f := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
					return strconv.ParseFloat(v, 64)
				}
			}
		}
	}
	return 0, fmt.Errorf("no %s in commandstats", cmd)
}

// loadResult is one variant's numbers in one run.
type loadResult struct {
	ok, failed, refused int
	rps                 float64
	p50, p99            time.Duration
	firstErr            string
}

// loadFor runs conns closed-loop clients over addrs (client i on addrs[i %
// len]) for d; stop, when given, ends it early once closed.
func loadFor(addrs []string, conns int, d time.Duration, stop <-chan struct{}) loadResult {
	var mu sync.Mutex
	var lat []time.Duration
	var res loadResult
	var fails failures
	var refused atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := addrs[i%len(addrs)]
			c := newClient(addr, 1, false)
			req, resp, release := newCall(addr, "/api/chat", chatBody)
			defer release()
			req.Header.Set("X-API-Key", benchKey)
			var mine []time.Duration
			for n := 0; n < maxRequestsPerWorker && time.Now().Before(deadline); n++ {
				select {
				case <-stop:
					n = maxRequestsPerWorker
					continue
				default:
				}
				t0 := time.Now()
				err := c.DoTimeout(req, resp, requestTimeout)
				switch {
				case err != nil:
					fails.add("%v", err)
				case resp.StatusCode() == 429:
					refused.Add(1)
				case resp.StatusCode() != 200:
					fails.add("status %d: %s", resp.StatusCode(), resp.Body())
				default:
					mine = append(mine, time.Since(t0))
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	start := time.Now()
	wg.Wait()
	slices.Sort(lat)
	res.ok, res.failed, res.refused, res.firstErr = len(lat), fails.n, int(refused.Load()), fails.first
	res.rps = float64(len(lat)) / time.Since(start).Seconds()
	res.p50, res.p99 = pct(lat, .5), pct(lat, .99)
	return res
}

// replicasTable: per variant the median over runs, the range in
// brackets, and the difference to limits off.
func replicasTable(res map[string][]loadResult) string {
	var b strings.Builder
	b.WriteString("| variant | req/s | p50 ms | p99 ms | p50 added | p99 added | failed |\n|---|---:|---:|---:|---:|---:|---:|\n")
	stat := func(v string, f func(loadResult) float64) (med, lo, hi float64) {
		var xs []float64
		for _, r := range res[v] {
			xs = append(xs, f(r))
		}
		return median(xs), slices.Min(xs), slices.Max(xs)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	offP50, _, _ := stat("limits off", func(r loadResult) float64 { return ms(r.p50) })
	offP99, _, _ := stat("limits off", func(r loadResult) float64 { return ms(r.p99) })
	offRPS, _, _ := stat("limits off", func(r loadResult) float64 { return r.rps })
	for _, v := range replicaVariants {
		rps, rlo, rhi := stat(v, func(r loadResult) float64 { return r.rps })
		p50, lo50, hi50 := stat(v, func(r loadResult) float64 { return ms(r.p50) })
		p99, lo99, hi99 := stat(v, func(r loadResult) float64 { return ms(r.p99) })
		_, _, failed := stat(v, func(r loadResult) float64 { return float64(r.failed) })
		fmt.Fprintf(&b, "| %s | %.0f [%.0f–%.0f] (%.2f×) | %.3f [%.3f–%.3f] | %.3f [%.3f–%.3f] | %+.3f | %+.3f | %.0f |\n",
			v, rps, rlo, rhi, rps/offRPS, p50, lo50, hi50, p99, lo99, hi99, p50-offP50, p99-offP99, failed)
	}
	b.WriteString("\nCells: median over runs [lowest–highest run]; (×) req/s against limits off; added: median against limits off's median, ms; failed: the worst run.\n")
	return b.String()
}

// chatOnce sends one non-stream chat with key to addr: status, tokens
// (prompt + completion) reported, Retry-After.
func chatOnce(addr, key string) (status int, tokens int64, retryAfter string, err error) {
	req, resp, release := newCall(addr, "/api/chat", chatBody)
	defer release()
	req.Header.Set("X-API-Key", key)
	if err := fasthttp.DoTimeout(req, resp, requestTimeout); err != nil {
		return 0, 0, "", err
	}
	var body struct {
		PromptEvalCount int64 `json:"prompt_eval_count"`
		EvalCount       int64 `json:"eval_count"`
	}
	_ = json.Unmarshal(resp.Body(), &body)
	return resp.StatusCode(), body.PromptEvalCount + body.EvalCount, string(resp.Header.Peek("Retry-After")), nil
}

// awayFromMinuteEdge waits for the next clock minute when fewer than need
// are left of this one, so a per-minute count is not split.
func awayFromMinuteEdge(need time.Duration) {
	now := time.Now()
	if left := now.Truncate(time.Minute).Add(time.Minute).Sub(now); left < need {
		time.Sleep(left + 100*time.Millisecond)
	}
}

// checkTimeout: the exactness checks are about what is counted; on a
// loaded machine the default 50 ms would turn slow answers into
// on_redis_error decisions (admitted unchecked).
const checkTimeout = "VEGA_LIMITS_REDIS_TIMEOUT=1s"

func checkRate(gwBin, upstreams string, rd *redisProc, rf *replicasFlags, dir string) (string, string, error) {
	name := fmt.Sprintf("requests_per_minute %d, %d requests over both", rf.rpm, 2*rf.rpm)
	gws, err := startGateways(gwBin, 2, []string{upstreams, "VEGA_LIMITS_REDIS_URL=" + rd.url(), checkTimeout,
		"VEGA_AUTH_KEYS=" + keysJSON(map[string]any{"requests_per_minute": rf.rpm})}, dir)
	if err != nil {
		return name, "", err
	}
	defer stopGateways(gws)
	awayFromMinuteEdge(20 * time.Second)
	var ok, refused, failed, next atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(2*rf.rpm) {
				st, _, retry, err := chatOnce(gws[w%2].data, benchKey)
				switch {
				case err == nil && st == 200:
					ok.Add(1)
				case err == nil && st == 429 && retry != "":
					refused.Add(1)
				default:
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	verdict := "exact"
	if ok.Load() != int64(rf.rpm) {
		verdict = fmt.Sprintf("off by %+.1f %%", 100*float64(ok.Load()-int64(rf.rpm))/float64(rf.rpm))
	}
	return name, fmt.Sprintf("%d admitted, %d refused (429 + Retry-After), %d failed: %s", ok.Load(), refused.Load(), failed.Load(), verdict), nil
}

func checkTokens(gwBin, upstreams string, rd *redisProc, dir string) (string, string, error) {
	const budget = 500
	name := fmt.Sprintf("tokens_per_minute %d, requests in turn on both until 429", budget)
	gws, err := startGateways(gwBin, 2, []string{upstreams, "VEGA_LIMITS_REDIS_URL=" + rd.url(), checkTimeout,
		"VEGA_AUTH_KEYS=" + keysJSON(map[string]any{"tokens_per_minute": budget})}, dir)
	if err != nil {
		return name, "", err
	}
	defer stopGateways(gws)
	awayFromMinuteEdge(20 * time.Second)
	var used, biggest int64
	for i := 0; i < 10_000; i++ {
		st, n, _, err := chatOnce(gws[i%2].data, benchKey)
		if err != nil {
			return name, "", err
		}
		if st == 429 {
			over := used - budget
			verdict := "within one request"
			if over >= biggest {
				verdict = "NOT within one request"
			}
			return name, fmt.Sprintf("%d tokens admitted (budget %d, over by %d; one request %d): %s", used, budget, over, biggest, verdict), nil
		}
		used += n
		biggest = max(biggest, n)
	}
	return name, "the budget never ran out", nil
}

func checkKill(gwBin, fakeBin string, rd *redisProc, rf *replicasFlags, dir string) (string, string, error) {
	const slots = 4
	name := fmt.Sprintf("max_concurrent %d held by gateway A, A SIGKILLed; lease_ttl %s", slots, rf.leaseTTL)
	// Slow streams, from a fake of their own.
	urls, stopFake, err := startFakes(fakeBin, 1, "-token-delay", "20ms")
	if err != nil {
		return name, "", err
	}
	defer stopFake()
	gws, err := startGateways(gwBin, 2, []string{"VEGA_UPSTREAM_URL=" + urls[0], "VEGA_LIMITS_REDIS_URL=" + rd.url(), checkTimeout,
		"VEGA_LIMITS_LEASE_TTL=" + rf.leaseTTL.String(), "VEGA_AUTH_KEYS=" + keysJSON(map[string]any{"max_concurrent": slots})}, dir)
	if err != nil {
		return name, "", err
	}
	defer stopGateways(gws[1:])
	var streams []*fasthttp.Response
	for range slots {
		req, resp, _ := newCall(gws[0].data, "/api/chat", streamBody)
		req.Header.Set("X-API-Key", benchKey)
		req.Header.Set("X-Ollamatest-Tokens", "100000")
		c := newClient(gws[0].data, 1, true)
		if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
			return name, "", fmt.Errorf("stream: %v %d", err, resp.StatusCode())
		}
		streams = append(streams, resp)
	}
	if st, _, _, _ := chatOnce(gws[1].data, benchKey); st != 429 {
		return name, "", fmt.Errorf("gateway B while A holds every slot: %d, want 429", st)
	}
	gws[0].stop(syscall.SIGKILL)
	killed := time.Now()
	for time.Since(killed) < 3*rf.leaseTTL {
		if st, _, _, _ := chatOnce(gws[1].data, benchKey); st == 200 {
			return name, fmt.Sprintf("gateway B admitted again %s after the kill (%.2f× lease_ttl)",
				time.Since(killed).Round(10*time.Millisecond), time.Since(killed).Seconds()/rf.leaseTTL.Seconds()), nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return name, fmt.Sprintf("slots NOT freed %s after the kill", 3*rf.leaseTTL), nil
}

func checkOutage(gwBin, upstreams string, rd *redisProc, rf *replicasFlags, dir string) (string, string, error) {
	name := fmt.Sprintf("Redis stopped (SIGKILL) for %s under load, on_redis_error allow", rf.outage)
	gws, err := startGateways(gwBin, 2, []string{upstreams, "VEGA_LIMITS_REDIS_URL=" + rd.url(),
		"VEGA_AUTH_KEYS=" + keysJSON(map[string]any{"requests_per_minute": huge})}, dir)
	if err != nil {
		return name, "", err
	}
	defer stopGateways(gws)
	awayFromMinuteEdge(rf.outage + 15*time.Second)
	stop := make(chan struct{})
	done := make(chan loadResult, 1)
	go func() { done <- loadFor([]string{gws[0].data, gws[1].data}, 8, time.Minute, stop) }()
	time.Sleep(time.Second)
	rd.stop()
	time.Sleep(rf.outage)
	if err := rd.start(); err != nil {
		close(stop)
		return name, "", err
	}
	back := time.Now()
	rdb := redis.NewClient(&redis.Options{Addr: rd.addr})
	defer rdb.Close()
	counter := "vega:key:bench:rpm:" + strconv.FormatInt(time.Now().Unix()/60, 10)
	resumed := time.Duration(-1)
	for time.Since(back) < 10*time.Second {
		if n, _ := rdb.Get(context.Background(), counter).Int(); n > 0 {
			resumed = time.Since(back)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Second)
	close(stop)
	res := <-done
	resume := "NOT within 10 s"
	if resumed >= 0 {
		resume = resumed.Round(10 * time.Millisecond).String()
	}
	return name, fmt.Sprintf("%d requests, %d failed, %d refused; counting again %s after Redis returned", res.ok+res.failed+res.refused, res.failed, res.refused, resume), nil
}
