package fleet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/valyala/fasthttp"

	"github.com/vega-gateway/vega-gateway/discover"
	"github.com/vega-gateway/vega-gateway/dnstest"
	"github.com/vega-gateway/vega-gateway/ollamatest"
	"github.com/vega-gateway/vega-gateway/pool"
)

const (
	testName    = "ollama.llm.test"
	testRefresh = 100 * time.Millisecond
	// waitFor bounds every wait on an event.
	waitFor = 10 * time.Second
)

// fakesOnOnePort starts one fake Ollama on each of ips at one port, as the
// pods behind a headless Service listen: A records carry no port.
func fakesOnOnePort(t *testing.T, cfg ollamatest.Config, ips ...string) (int, map[string]*ollamatest.Server) {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Skipf("cannot listen on %s: %v", ips[0], err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		fakes, err := startFakes(cfg, port, ips)
		if err == nil {
			return port, fakes
		}
	}
	t.Fatal("no port free on every address")
	return 0, nil
}

func startFakes(cfg ollamatest.Config, port int, ips []string) (map[string]*ollamatest.Server, error) {
	fakes := map[string]*ollamatest.Server{}
	for _, ip := range ips {
		c := cfg
		c.Addr = net.JoinHostPort(ip, strconv.Itoa(port))
		s, err := ollamatest.NewServer(c)
		if err != nil {
			for _, o := range fakes {
				o.Close()
			}
			return nil, err
		}
		fakes[ip] = s
	}
	return fakes, nil
}

// discovered is a fleet of one discovery group ("ollama") over a dnstest
// server, running until the test ends; its events arrive on events.
type discovered struct {
	f      *Fleet
	dns    *dnstest.Server
	events chan Event
}

// setA replaces the name's address records.
func (d *discovered) setA(ips ...string) { d.dns.SetA(testName, ips...) }

// wait returns the next event of kind for backend ("" any), failing on
// waitFor.
func (d *discovered) wait(t *testing.T, kind EventKind, backend string) Event {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case e := <-d.events:
			if e.Kind == kind && (backend == "" || e.Backend == backend) {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event for %q within %s", kind, backend, waitFor)
		}
	}
}

func names(bs []*Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	return out
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// newDiscovered runs a fleet whose one group resolves url's host (and its
// srv records, if srv is set) at the test's DNS server, where testName has
// the addresses ips from the first lookup on.
func newDiscovered(t *testing.T, cfg Config, url, srv string, ips ...string) *discovered {
	t.Helper()
	d := &discovered{events: make(chan Event, 1024)}
	var err error
	if d.dns, err = dnstest.NewServer(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.dns.Close)
	if len(ips) > 0 {
		d.setA(ips...)
	}
	d.f = runGroupFleet(t, cfg, d, url, srv, 50*time.Millisecond, 200*time.Millisecond)
	return d
}

// runGroupFleet runs the fleet of d's group; health is its backends' probe
// interval, dnsTimeout bounds a lookup.
func runGroupFleet(t *testing.T, cfg Config, d *discovered, url, srv string, health, dnsTimeout time.Duration) *Fleet {
	t.Helper()
	r, err := discover.New(discover.Config{URL: url, Resolver: d.dns.Addr(), SRV: srv, Timeout: dnsTimeout})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = testRefresh
	}
	f, err := New(cfg, nil, Group{
		Name: "ollama", Refresh: testRefresh,
		Lookup: func(ctx context.Context) ([]Endpoint, error) {
			eps, err := r.Lookup(ctx)
			out := make([]Endpoint, len(eps))
			for i, e := range eps {
				out[i] = Endpoint{Name: e.Name, URL: e.URL}
			}
			return out, err
		},
		NewPool: func(url string) (*pool.Pool, error) {
			return pool.New(pool.UpstreamConfig{URL: url, HealthInterval: health, HealthTimeout: time.Second}, pool.Config{})
		},
		Observe: func(e Event) {
			select {
			case d.events <- e:
			default:
				t.Error("event queue full")
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx, nil)
	}()
	t.Cleanup(func() {
		f.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	return f
}

func TestDiscoveryFindsBackends(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	port, _ := fakesOnOnePort(t, ollamatest.Config{}, ips...)
	d := newDiscovered(t, Config{Policy: PolicyLeastLoaded}, "http://"+hostPort(testName, port), "", ips...)
	for range ips {
		d.wait(t, EventJoined, "")
	}
	want := []string{hostPort(ips[0], port), hostPort(ips[1], port), hostPort(ips[2], port)}
	if got := names(d.f.Backends()); !slices.Equal(got, want) {
		t.Fatalf("backends = %v, want %v", got, want)
	}
	for _, b := range d.f.Backends() {
		if u := "http://" + b.Name; b.Pool.URL() != u {
			t.Errorf("%s: url = %s, want %s", b.Name, b.Pool.URL(), u)
		}
		if installed, known := b.Installed(); !known || !slices.Contains(installed, "llama3.2:latest") {
			t.Errorf("%s: catalogue = %v (known %v), want the fake's models", b.Name, installed, known)
		}
	}
	// Every backend is chosen: with none outstanding, least_loaded picks
	// among equals at random.
	seen := map[string]bool{}
	for i := 0; i < 300 && len(seen) < 3; i++ {
		b, _, err := d.f.Pick(Request{Model: "llama3.2", NeedModel: true, Inference: true})
		if err != nil {
			t.Fatal(err)
		}
		seen[b.Name] = true
	}
	if len(seen) != 3 {
		t.Errorf("picked %v, want all three", seen)
	}
	s := d.f.Snapshot()
	if len(s.Discovery) != 1 || !slices.Equal(s.Discovery[0].Backends, want) || s.Discovery[0].Lookups == 0 || s.Discovery[0].LookupFailures != 0 {
		t.Errorf("snapshot discovery = %+v", s.Discovery)
	}
}

func TestDiscoveryJoinsAfterFirstGoodProbe(t *testing.T) {
	port, _ := fakesOnOnePort(t, ollamatest.Config{}, "127.0.0.2")
	d := newDiscovered(t, Config{}, "http://"+hostPort(testName, port), "")
	d.setA("127.0.0.2")
	d.wait(t, EventJoined, "")
	// A record for an address where nothing listens yet: found, probed,
	// never in the view.
	late := hostPort("127.0.0.5", port)
	d.setA("127.0.0.2", "127.0.0.5")
	d.wait(t, EventFound, late)
	time.Sleep(3 * testRefresh) // several failed probes: still out
	if d.f.Lookup(late) != nil || d.f.Len() != 1 {
		t.Fatalf("backends = %v before %s answered a probe", names(d.f.Backends()), late)
	}
	if s := d.f.Snapshot().Discovery[0]; !slices.Equal(s.Joining, []string{late}) {
		t.Errorf("joining = %v, want [%s]", s.Joining, late)
	}
	fake, err := ollamatest.NewServer(ollamatest.Config{Addr: late})
	if err != nil {
		t.Skipf("cannot listen on %s: %v", late, err)
	}
	defer fake.Close()
	d.wait(t, EventJoined, late)
	if b := d.f.Lookup(late); b == nil || !b.Pool.Ready() {
		t.Fatalf("%s joined but is not in the view, ready", late)
	}
}

// TestDiscoveryRemovedDrains: a backend gone from DNS takes no new request
// at once; a stream open on it finishes whole; then its pool closes.
func TestDiscoveryRemovedDrains(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	port, fakes := fakesOnOnePort(t, ollamatest.Config{Tokens: 4}, ips...)
	d := newDiscovered(t, Config{Policy: PolicyLeastLoaded}, "http://"+hostPort(testName, port), "")
	d.setA(ips...)
	d.wait(t, EventJoined, "")
	d.wait(t, EventJoined, "")
	gone := d.f.Lookup(hostPort(ips[1], port))

	// A gated stream on it: frame 1 now, the others when released.
	rel, _, err := gone.Pool.Acquire(nil)
	if err != nil {
		t.Fatal(err)
	}
	ticket := gone.Start("llama3.2")
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(gone.Pool.URL() + "/api/chat")
	req.Header.SetMethod("POST")
	req.Header.Set(ollamatest.FaultHeader, ollamatest.FaultGated)
	req.SetBodyString(`{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}`)
	if _, err := gone.Pool.Do(req, resp); err != nil {
		t.Fatal(err)
	}
	body := bufio.NewReader(resp.BodyStream())
	if _, err := body.ReadBytes('\n'); err != nil {
		t.Fatalf("first frame: %v", err)
	}

	// What it counts stays in the fleet's totals while it drains and once
	// it has closed: fleet-wide counters never go down.
	gone.Pool.NoteClientDisconnect()
	gone.Pool.Stats().Errors.Add(2)
	if dis, errs := d.f.Departed(); dis != 0 || errs != 0 {
		t.Fatalf("Departed before any backend left = %d, %d", dis, errs)
	}
	d.setA(ips[0])
	d.wait(t, EventLeft, gone.Name)
	if dis, errs := d.f.Departed(); dis != 1 || errs != 2 {
		t.Errorf("Departed while draining = %d, %d; want 1, 2", dis, errs)
	}
	for range 200 {
		b, _, err := d.f.Pick(Request{Model: "llama3.2", NeedModel: true, Inference: true})
		if err != nil || b == gone {
			t.Fatalf("Pick after removal = %v, %v", b, err)
		}
	}
	if d.f.Lookup(gone.Name) != nil || d.f.Len() != 1 {
		t.Fatalf("backends after removal = %v", names(d.f.Backends()))
	}
	time.Sleep(drainGrace + 3*drainPoll)
	if gone.Pool.Closed() {
		t.Fatal("pool closed while its stream was open")
	}
	if s := d.f.Snapshot().Discovery[0]; !slices.Equal(s.Draining, []string{gone.Name}) {
		t.Errorf("draining = %v", s.Draining)
	}
	for range 8 {
		fakes[ips[1]].ReleaseFrame()
	}
	frames := 1
	for {
		line, err := body.ReadBytes('\n')
		if len(line) > 0 {
			frames++
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream on the draining backend: %v after %d frames", err, frames)
			}
			break
		}
	}
	if frames < 5 { // 4 tokens and the final frame
		t.Errorf("stream ended after %d frames, want 5", frames)
	}
	_ = resp.CloseBodyStream()
	rel()
	ticket.End(Success, 0)
	d.wait(t, EventClosed, gone.Name)
	if !gone.Pool.Closed() {
		t.Error("pool of the drained backend not closed")
	}
	if dis, errs := d.f.Departed(); dis != 1 || errs < 2 {
		t.Errorf("Departed once closed = %d, %d; want 1, ≥ 2", dis, errs)
	}
	if s := d.f.Snapshot().Discovery[0]; len(s.Draining) != 0 || !slices.Equal(s.Backends, []string{hostPort(ips[0], port)}) {
		t.Errorf("after the drain: %+v", s)
	}
}

// TestDiscoveryReturnWhileDraining: an address back in DNS before its pool
// closed is the same backend, with its state.
func TestDiscoveryReturnWhileDraining(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	port, _ := fakesOnOnePort(t, ollamatest.Config{}, ips...)
	d := newDiscovered(t, Config{}, "http://"+hostPort(testName, port), "")
	d.setA(ips...)
	d.wait(t, EventJoined, "")
	d.wait(t, EventJoined, "")
	b := d.f.Lookup(hostPort(ips[1], port))
	ticket := b.Start("m") // an open request keeps it draining
	d.setA(ips[0])
	d.wait(t, EventLeft, b.Name)
	d.setA(ips...)
	d.wait(t, EventReturned, b.Name)
	if d.f.Lookup(b.Name) != b || b.Pool.Closed() {
		t.Fatal("the returned backend is not the same, open one")
	}
	ticket.End(Success, 0)
}

func TestDiscoveryLookupFailureKeepsSet(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	port, _ := fakesOnOnePort(t, ollamatest.Config{}, ips...)
	d := newDiscovered(t, Config{}, "http://"+hostPort(testName, port), "")
	d.setA(ips...)
	d.wait(t, EventJoined, "")
	d.wait(t, EventJoined, "")
	for _, c := range []struct {
		name         string
		break_, mend func()
	}{
		{"SERVFAIL", func() { d.dns.Fail(dns.RcodeServerFailure) }, func() { d.dns.Fail(0) }},
		{"timeout", func() { d.dns.Drop(true) }, func() { d.dns.Drop(false) }},
		{"empty answer", func() { d.setA() }, func() { d.setA(ips...) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := d.f.Snapshot().Discovery[0].LookupFailures
			c.break_()
			deadline := time.Now().Add(waitFor)
			for d.f.Snapshot().Discovery[0].LookupFailures < before+2 {
				if time.Now().After(deadline) {
					t.Fatal("no two failed lookups counted")
				}
				time.Sleep(testRefresh / 4)
			}
			e := d.wait(t, EventLookupFailed, "")
			if e.Err == nil || e.Backends != 2 {
				t.Errorf("event = %+v, want an error and 2 backends", e)
			}
			if s := d.f.Snapshot().Discovery[0]; d.f.Len() != 2 || s.LastError == "" {
				t.Errorf("while failing: %d backends, %+v", d.f.Len(), s)
			}
			c.mend()
			deadline = time.Now().Add(waitFor)
			for d.f.Snapshot().Discovery[0].LastError != "" {
				if time.Now().After(deadline) {
					t.Fatal("lookups still failing after the resolver came back")
				}
				time.Sleep(testRefresh / 4)
			}
			if d.f.Len() != 2 {
				t.Errorf("%d backends after the resolver came back, want 2", d.f.Len())
			}
		})
	}
}

func TestDiscoverySRV(t *testing.T) {
	ips := []string{"127.0.0.2", "127.0.0.3"}
	port, _ := fakesOnOnePort(t, ollamatest.Config{}, ips...)
	d := newDiscovered(t, Config{}, "http://"+hostPort(testName, 11434), "_http._tcp")
	d.dns.SetA("ollama-0."+testName, ips[0])
	d.dns.SetA("ollama-1."+testName, ips[1])
	d.dns.SetSRV("_http._tcp."+testName,
		dnstest.SRV{Target: "ollama-0." + testName, Port: uint16(port)}, dnstest.SRV{Target: "ollama-1." + testName, Port: uint16(port)})
	d.wait(t, EventJoined, "")
	d.wait(t, EventJoined, "")
	want := []string{"ollama-0." + testName, "ollama-1." + testName}
	if got := names(d.f.Backends()); !slices.Equal(got, want) {
		t.Fatalf("backends = %v, want %v", got, want)
	}
	if u := d.f.Lookup(want[1]).Pool.URL(); u != "http://"+hostPort(ips[1], port) {
		t.Errorf("%s: url = %s", want[1], u)
	}
}

// TestDiscoveryBoundedByMaxBackends: past MaxBackends a record is refused
// (and said so), the others are kept.
func TestDiscoveryBoundedByMaxBackends(t *testing.T) {
	d := &discovered{events: make(chan Event, 1024)}
	var err error
	if d.dns, err = dnstest.NewServer(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.dns.Close)
	// Nothing listens: all stay joining. Probes are slow, so 64 probers do
	// not crowd the lookups out of a loaded machine.
	d.f = runGroupFleet(t, Config{RefreshInterval: time.Minute}, d, "http://"+testName+":9", "", time.Minute, 2*time.Second)
	var ips []string
	for i := range MaxBackends + 2 {
		ips = append(ips, fmt.Sprintf("127.0.1.%d", i+1))
	}
	d.setA(ips...)
	e := d.wait(t, EventRejected, "")
	if !errors.Is(e.Err, ErrTooManyBackends) {
		t.Errorf("rejected: %v, want ErrTooManyBackends", e.Err)
	}
	if s := d.f.Snapshot().Discovery[0]; len(s.Joining) != MaxBackends {
		t.Errorf("joining = %d, want %d", len(s.Joining), MaxBackends)
	}
	d.setA(ips[:2]...) // the others go (they never joined: closed at once) and slots come free
	d.wait(t, EventClosed, "")
	deadline := time.Now().Add(waitFor)
	for len(d.f.Snapshot().Discovery[0].Joining) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("joining = %d, want 2", len(d.f.Snapshot().Discovery[0].Joining))
		}
		time.Sleep(testRefresh / 4)
	}
}
