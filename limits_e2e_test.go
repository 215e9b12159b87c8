package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/redistest"
)

// limitsKeys are the keys of the replica tests, each with one limit.
const (
	keyRPM  = "rpm-key-0123456789abcdef0123456789abcdef"
	keyTPM  = "tpm-key-0123456789abcdef0123456789abcdef"
	keyConc = "conc-key-0123456789abcdef0123456789abcdef"
	keyOpen = "open-key-0123456789abcdef0123456789abcdef"
	rpm     = 40
	tpm     = 200
)

// untilMinuteEdge waits out the end of a clock minute, so a check of a
// per-minute limit is not split across two windows.
func untilMinuteEdge(t *testing.T, need time.Duration) {
	t.Helper()
	now := time.Now()
	if left := now.Truncate(time.Minute).Add(time.Minute).Sub(now); left < need {
		t.Logf("waiting %s for the next clock minute", left.Round(time.Millisecond))
		time.Sleep(left + 100*time.Millisecond)
	}
}

// TestLimitsAcrossReplicas is issue 17's replica check: two gateway
// processes share one real redis-server and three fake Ollama backends. A
// key's requests_per_minute holds exactly across both, a tokens_per_minute
// budget is overdrawn by at most one request, a SIGKILLed replica's
// max_concurrent slots come back within limits.lease_ttl, and with Redis
// stopped no request fails (on_redis_error: allow) and limits resume
// within 5 s of its return.
func TestLimitsAcrossReplicas(t *testing.T) {
	rd := redistest.Start(t)
	var urls []string
	for range 3 {
		f, err := ollamatest.NewServer(ollamatest.Config{Tokens: 5, TokenDelay: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		urls = append(urls, f.URL())
	}
	keys, _ := json.Marshal([]map[string]any{
		{"name": "rpm", "key": keyRPM, "requests_per_minute": rpm},
		{"name": "tpm", "key": keyTPM, "tokens_per_minute": tpm},
		{"name": "conc", "key": keyConc, "max_concurrent": 2},
		{"name": "open", "key": keyOpen},
	})
	const leaseTTL = 2 * time.Second
	env := []string{"VEGA_UPSTREAMS=" + strings.Join(urls, ","), "VEGA_LIMITS_REDIS_URL=" + rd.URL(),
		"VEGA_AUTH_KEYS=" + string(keys), "VEGA_LIMITS_LEASE_TTL=" + leaseTTL.String(), "VEGA_LIMITS_REDIS_TIMEOUT=1s",
		"VEGA_LOG_LEVEL=warn"}
	gws := []*gatewayProcess{startProcess(t, []string{"serve"}, env...), startProcess(t, []string{"serve"}, env...)}
	top := t // processes started in a subtest outlive it
	client := func(i int, key string) openai.Client {
		return openai.NewClient(option.WithBaseURL("http://"+gws[i%2].data+"/v1"), option.WithAPIKey(key), option.WithMaxRetries(0))
	}
	chat := func(c openai.Client) (*openai.ChatCompletion, error) {
		return c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model: "llama3.2", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello there")},
		})
	}
	apiError := func(err error) *openai.Error {
		var e *openai.Error
		if !errors.As(err, &e) {
			t.Fatalf("not an API error: %v", err)
		}
		return e
	}

	t.Run("requests_per_minute exact across replicas", func(t *testing.T) {
		untilMinuteEdge(t, 15*time.Second)
		const attempts = rpm * 2
		var ok, limited atomic.Int64
		var wg sync.WaitGroup
		next := atomic.Int64{}
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := client(w, keyRPM)
				for next.Add(1) <= attempts {
					_, err := chat(c)
					if err == nil {
						ok.Add(1)
						continue
					}
					if e := apiError(err); e.StatusCode == 429 && e.Code == "rate_limited" && e.Response.Header.Get("Retry-After") != "" {
						limited.Add(1)
					} else {
						t.Errorf("not a 429 rate_limited with Retry-After: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		if ok.Load() != rpm || limited.Load() != attempts-rpm {
			t.Fatalf("admitted %d, limited %d of %d over two replicas; want exactly %d admitted", ok.Load(), limited.Load(), attempts, rpm)
		}
	})

	t.Run("tokens_per_minute held within one request", func(t *testing.T) {
		untilMinuteEdge(t, 15*time.Second)
		var used, biggest int64
		for i := 0; ; i++ {
			r, err := chat(client(i, keyTPM))
			if err != nil {
				e := apiError(err)
				if e.StatusCode != 429 || e.Code != "token_budget_exhausted" || e.Response.Header.Get("Retry-After") == "" || !strings.Contains(e.Message, "resets at") {
					t.Fatalf("after %d tokens: want 429 token_budget_exhausted with Retry-After and the reset time, got %v", used, err)
				}
				break
			}
			n := r.Usage.PromptTokens + r.Usage.CompletionTokens
			if n <= 0 {
				t.Fatalf("reply %d reports no tokens: %+v", i, r.Usage)
			}
			used += n
			biggest = max(biggest, n)
			if i > 1000 {
				t.Fatal("the budget never ran out")
			}
		}
		if used < tpm || used >= tpm+biggest {
			t.Fatalf("%d tokens admitted against a budget of %d; want within one request (%d) over it", used, tpm, biggest)
		}
		t.Logf("%d tokens used of a %d budget (one request: %d)", used, tpm, biggest)
	})

	t.Run("a killed replica's slots free within the lease time", func(t *testing.T) {
		// Two long streams hold the key's two slots on gateway 0.
		for range 2 {
			stopStream := longStream(t, gws[0].data, keyConc)
			defer stopStream()
		}
		if _, err := chat(client(1, keyConc)); err == nil || apiError(err).Code != "key_concurrency_limit" {
			t.Fatalf("a third request while two run: %v, want 429 key_concurrency_limit", err)
		}
		if err := gws[0].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		for {
			_, err := chat(client(1, keyConc))
			if err == nil {
				break
			}
			if apiError(err).Code != "key_concurrency_limit" {
				t.Fatal(err)
			}
			if time.Since(killed) > leaseTTL+time.Second {
				t.Fatalf("slots still held %s after the kill (lease_ttl %s)", time.Since(killed), leaseTTL)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("slots freed %s after SIGKILL (lease_ttl %s)", time.Since(killed).Round(time.Millisecond), leaseTTL)
		gws[0] = startProcess(top, []string{"serve"}, env...)
	})

	t.Run("use per key on /metrics and /admin/resources/stats", func(t *testing.T) {
		st, _, body := get(t, "http://"+gws[1].admin+"/admin/resources/stats", nil)
		var doc struct {
			Limits struct {
				Store string `json:"store"`
				Keys  []struct {
					Name               string `json:"name"`
					RequestsThisMinute int64  `json:"requests_this_minute"`
					TokensThisMinute   int64  `json:"tokens_this_minute"`
					TokensPerMinute    int64  `json:"tokens_per_minute"`
				} `json:"keys"`
			} `json:"limits"`
		}
		if st != 200 || json.Unmarshal(body, &doc) != nil || !strings.HasPrefix(doc.Limits.Store, "redis://127.0.0.1:") {
			t.Fatalf("stats: %d %s", st, body)
		}
		names := map[string]bool{}
		for _, k := range doc.Limits.Keys {
			names[k.Name] = true
			if k.Name == "tpm" && (k.TokensPerMinute != tpm || k.TokensThisMinute == 0) {
				t.Errorf("tpm key: %+v", k)
			}
		}
		if !names["rpm"] || !names["tpm"] || !names["conc"] || names["open"] {
			t.Fatalf("limited keys listed: %v (want rpm, tpm, conc; not the unlimited one)", names)
		}
		_, _, m := get(t, "http://"+gws[1].admin+"/metrics", nil)
		for _, want := range []string{`vega_key_limit{key="rpm",limit="requests_per_minute"} 40`, `vega_key_tokens_used{key="tpm",window="day"}`,
			"vega_limits_redis_errors_total 0", `vega_key_requests{key="rpm"}`} {
			if !strings.Contains(string(m), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	t.Run("redis stopped: no request fails, limits resume within 5 s", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
		defer rdb.Close()
		untilMinuteEdge(t, 20*time.Second)
		rd.Stop()
		for i := range 20 {
			if _, err := chat(client(i, keyRPM)); err != nil { // rpm is used up: unchecked now
				t.Fatalf("request %d with Redis stopped (allow): %v", i, err)
			}
		}
		if n := metricValue(t, gws[1].admin, "vega_limits_redis_errors_total"); n == 0 {
			t.Fatal("Redis errors not counted")
		}
		rd.Restart()
		back := time.Now()
		for i := 0; ; i++ {
			if _, err := chat(client(i, keyRPM)); err != nil {
				t.Fatalf("request %d after Redis returned: %v", i, err)
			}
			// The window of this minute (read each time: the wait may
			// cross a minute's edge).
			minute := strconv.FormatInt(time.Now().Unix()/60, 10)
			n, _ := rdb.Get(context.Background(), "vega:key:rpm:rpm:"+minute).Int()
			if n > 0 {
				break
			}
			if time.Since(back) > 5*time.Second {
				t.Fatal("no request counted in Redis 5 s after it returned")
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("limits counted again %s after Redis returned", time.Since(back).Round(time.Millisecond))
	})
}

// longStream opens a streamed /api/chat on addr that runs until stop.
func longStream(t *testing.T, addr, key string) (stop func()) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/api/chat",
		strings.NewReader(`{"model":"llama3.2","messages":[{"role":"user","content":"go on"}],"stream":true}`))
	req.Header.Set("X-API-Key", key)
	req.Header.Set(ollamatest.TokensHeader, "100000")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatal(fmt.Errorf("stream's first line: %w", err))
	}
	return func() { resp.Body.Close() }
}
