package metrics_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestSeriesBoundedUnderDistinctIDsAndPaths is B-73: 10 000 requests, each
// with its own correlation ID and its own path, add no series to the
// scrape (IDs are never labels; paths become route templates).
func TestSeriesBoundedUnderDistinctIDsAndPaths(t *testing.T) {
	_, _, m, base := startStack(t, 0, true)
	client := &fasthttp.Client{MaxConnsPerHost: 8}
	send := func(from, to int) {
		t.Helper()
		var wg sync.WaitGroup
		const workers = 4
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for i := from + w; i < to; i += workers {
					req.Reset()
					// Three shapes, each with a path and an ID never seen before.
					switch i % 3 {
					case 0:
						req.SetRequestURI(fmt.Sprintf("%s/api/path-%d?q=%d", base, i, i))
					case 1:
						req.SetRequestURI(fmt.Sprintf("%s/v1/path-%d", base, i))
						req.Header.SetMethod("POST")
						req.SetBodyString(`{"model":"llama3.2"}`)
					default:
						req.SetRequestURI(fmt.Sprintf("%s/api/tags/../tags/%d", base, i))
					}
					req.Header.Set("X-Correlation-ID", fmt.Sprintf("b73-id-%d", i))
					if err := client.DoTimeout(req, resp, 5*time.Second); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	scrape := func() (series int, body string) {
		var ctx fasthttp.RequestCtx
		m.Handler()(&ctx)
		body = string(ctx.Response.Body())
		for _, l := range strings.Split(body, "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				series++
			}
		}
		return series, body
	}
	waitCount := func(n uint64) {
		deadline := time.Now().Add(10 * time.Second)
		for m.Stats().RequestsTotal < n {
			if time.Now().After(deadline) {
				t.Fatalf("requests_total %d, want %d", m.Stats().RequestsTotal, n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	const warm, total = 30, 10030
	send(0, warm) // every label combination the burst uses
	waitCount(warm)
	before, _ := scrape()
	send(warm, total)
	waitCount(total)
	after, body := scrape()
	if after != before {
		t.Fatalf("%d series after %d distinct IDs and paths, %d before", after, total-warm, before)
	}
	for _, leak := range []string{"b73-id-", "path-", "tags/"} {
		if strings.Contains(body, leak) {
			t.Fatalf("a request's ID or path became a label: %q in the scrape", leak)
		}
	}
	t.Logf("%d series before and after", after)
}
