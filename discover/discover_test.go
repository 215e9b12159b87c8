package discover

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/vega-gateway/vega-gateway/dnstest"
)

func newDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	s, err := dnstest.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestLookup(t *testing.T) {
	srv := newDNS(t)
	srv.SetA("ollama.llm.svc", "127.0.0.3", "127.0.0.2", "fd00::2")
	srv.SetA("v6.llm.svc", "fd00::9")
	srv.SetSRV("_http._tcp.ollama-srv.llm.svc", dnstest.SRV{Target: "ollama-1.llm.svc", Port: 8001}, dnstest.SRV{Target: "ollama-0.llm.svc", Port: 8000})
	srv.SetA("ollama-0.llm.svc", "127.0.0.4")
	srv.SetA("ollama-1.llm.svc", "127.0.0.5")
	srv.SetA("ollama-srv.llm.svc", "127.0.0.9") // ignored while SRV records exist
	srv.SetSRV("_http._tcp.two-ports.llm.svc", dnstest.SRV{Target: "pod.llm.svc", Port: 1}, dnstest.SRV{Target: "pod.llm.svc", Port: 2})
	srv.SetA("pod.llm.svc", "127.0.0.6")
	// A target with two addresses, listed in the additional section out of
	// order: the backend's URL is the lowest, on every lookup.
	srv.SetSRV("_http._tcp.multi.llm.svc", dnstest.SRV{Target: "multi-0.llm.svc", Port: 8000})
	srv.SetA("multi-0.llm.svc", "127.0.0.12", "127.0.0.11")
	for _, c := range []struct {
		name, url, srv string
		want           []Endpoint
	}{
		{"A and AAAA, sorted by name", "http://ollama.llm.svc:11434", "", []Endpoint{
			{"127.0.0.2:11434", "http://127.0.0.2:11434"}, {"127.0.0.3:11434", "http://127.0.0.3:11434"},
			{"[fd00::2]:11434", "http://[fd00::2]:11434"},
		}},
		{"default port of https", "https://v6.llm.svc", "", []Endpoint{{"[fd00::9]:443", "https://[fd00::9]:443"}}},
		{"IP literal", "http://127.0.0.7:8080", "", []Endpoint{{"127.0.0.7:8080", "http://127.0.0.7:8080"}}},
		{"SRV target with two addresses", "http://multi.llm.svc:11434", "_http._tcp", []Endpoint{
			{"multi-0.llm.svc", "http://127.0.0.11:8000"},
		}},
		{"SRV targets by name", "http://ollama-srv.llm.svc:11434", "_http._tcp", []Endpoint{
			{"ollama-0.llm.svc", "http://127.0.0.4:8000"}, {"ollama-1.llm.svc", "http://127.0.0.5:8001"},
		}},
		{"no SRV records: A", "http://ollama.llm.svc:11434", "_http._tcp", []Endpoint{
			{"127.0.0.2:11434", "http://127.0.0.2:11434"}, {"127.0.0.3:11434", "http://127.0.0.3:11434"},
			{"[fd00::2]:11434", "http://[fd00::2]:11434"},
		}},
		{"one target, two ports", "http://two-ports.llm.svc", "_http._tcp", []Endpoint{
			{"pod.llm.svc:1", "http://127.0.0.6:1"}, {"pod.llm.svc:2", "http://127.0.0.6:2"},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := New(Config{URL: c.url, Resolver: srv.Addr(), SRV: c.srv})
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.Lookup(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Lookup = %v, want %v", got, c.want)
			}
		})
	}
}

// TestSRVTargetResolvedWithoutAdditional: when the SRV answer carries no
// target address, each target is asked for.
func TestSRVTargetResolvedWithoutAdditional(t *testing.T) {
	srv := newDNS(t)
	srv.OmitAdditional(true)
	srv.SetSRV("_ollama._tcp.svc.test", dnstest.SRV{Target: "pod-a.other.test", Port: 9000})
	r, err := New(Config{URL: "http://svc.test:1", Resolver: srv.Addr(), SRV: "_ollama._tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lookup(context.Background()); err == nil || !errors.Is(err, ErrEmpty) {
		t.Fatalf("Lookup with a target without address: err = %v, want ErrEmpty", err)
	}
	srv.SetA("pod-a.other.test", "127.0.0.8")
	before := srv.Queries()
	got, err := r.Lookup(context.Background())
	if n := srv.Queries() - before; n != 3 { // SRV, then the target's A and AAAA
		t.Errorf("queries = %d, want 3", n)
	}
	want := []Endpoint{{"pod-a.other.test", "http://127.0.0.8:9000"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Lookup = %v, %v; want %v", got, err, want)
	}
}

func TestLookupFailures(t *testing.T) {
	srv := newDNS(t)
	srv.SetA("ollama.test", "127.0.0.2")
	srv.SetA("empty.test")
	for _, c := range []struct {
		name, host string
		setup      func()
		want       string
	}{
		{"SERVFAIL", "ollama.test", func() { srv.Fail(dns.RcodeServerFailure) }, "SERVFAIL"},
		{"REFUSED", "ollama.test", func() { srv.Fail(dns.RcodeRefused) }, "REFUSED"},
		{"timeout", "ollama.test", func() { srv.Drop(true) }, "timeout"},
		{"NXDOMAIN", "missing.test", func() {}, ErrEmpty.Error()},
		{"no records", "empty.test", func() {}, ErrEmpty.Error()},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.setup()
			defer srv.Fail(0)
			defer srv.Drop(false)
			r, err := New(Config{URL: "http://" + c.host + ":11434", Resolver: srv.Addr(), Timeout: 300 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.Lookup(context.Background())
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Lookup = %v, %v; want an error with %q", got, err, c.want)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "ftp://x:1"}, "url: scheme"},
		{Config{URL: "http://:1"}, "url: missing host"},
		{Config{URL: "http://x:99999"}, "url: bad port"},
		{Config{URL: "http://x:1", Resolver: "10.0.0.1"}, "resolver: must be host:port"},
		{Config{URL: "http://x:1", SRV: "http.tcp"}, "srv: must be _service._proto"},
		{Config{URL: "http://x:1", SRV: "_http"}, "srv: must be _service._proto"},
		{Config{URL: "http://10.0.0.1:1", SRV: "_http._tcp"}, "srv: the url's host is an IP"},
		{Config{URL: "http://x:1", Timeout: -1}, "timeout: must not be negative"},
	} {
		if _, err := New(c.cfg); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error starting %q", c.cfg, err, c.want)
		}
	}
}
