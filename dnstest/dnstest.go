// Package dnstest runs an in-process DNS server on a loopback port whose
// records a test sets and changes, as httptest does for HTTP: tests of DNS
// discovery never depend on the machine's resolver.
package dnstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
)

// SRV is one SRV record's data.
type SRV struct {
	Target string
	Port   uint16
}

// Server answers A, AAAA and SRV questions from its records over UDP and
// TCP. Its methods are safe for concurrent use.
type Server struct {
	udp, tcp *dns.Server
	addr     string

	mu    sync.Mutex
	addrs map[string][]net.IP // by fqdn, lower case
	srvs  map[string][]SRV
	// fail, when not zero, is the rcode every question gets (SERVFAIL).
	fail int
	// drop: questions are not answered at all (a timeout).
	drop bool
	// noExtra: SRV answers carry no additional section.
	noExtra bool

	queries atomic.Int64
}

// NewServer starts a server on 127.0.0.1 (UDP and TCP on one port). Close
// stops it.
func NewServer() (*Server, error) {
	s := &Server{addrs: map[string][]net.IP{}, srvs: map[string][]SRV{}}
	pc, ln, err := listenBoth()
	if err != nil {
		return nil, err
	}
	s.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go func() { _ = s.udp.ActivateAndServe() }()
	go func() { _ = s.tcp.ActivateAndServe() }()
	<-started
	<-started
	return s, nil
}

// listenBoth binds UDP and TCP on one free loopback port: the UDP port the
// kernel picks may be taken for TCP, so a few are tried.
func listenBoth() (net.PacketConn, net.Listener, error) {
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			break
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, fmt.Errorf("dnstest: %w", err)
}

// Addr is the server's host:port, for config key resolver.
func (s *Server) Addr() string { return s.addr }

// Close stops both listeners.
func (s *Server) Close() {
	_ = s.udp.Shutdown()
	_ = s.tcp.Shutdown()
}

// SetA replaces name's address records (A and AAAA); none removes them.
func (s *Server) SetA(name string, ips ...string) {
	var out []net.IP
	for _, ip := range ips {
		p := net.ParseIP(ip)
		if p == nil {
			panic("dnstest: not an IP: " + ip)
		}
		out = append(out, p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addrs[key(name)] = out
}

// SetSRV replaces name's SRV records.
func (s *Server) SetSRV(name string, recs ...SRV) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.srvs[key(name)] = recs
}

// Fail makes every question answered with rcode (dns.RcodeServerFailure)
// until Fail(0).
func (s *Server) Fail(rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = rcode
}

// Drop makes the server ignore questions (the client times out) until
// Drop(false).
func (s *Server) Drop(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop = on
}

// OmitAdditional makes SRV answers carry no target addresses, as some
// servers send them, until OmitAdditional(false).
func (s *Server) OmitAdditional(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noExtra = on
}

// Queries counts the questions received.
func (s *Server) Queries() int64 { return s.queries.Load() }

func key(name string) string { return strings.ToLower(dns.Fqdn(name)) }

func (s *Server) serve(w dns.ResponseWriter, r *dns.Msg) {
	s.queries.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drop || len(r.Question) != 1 {
		return
	}
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if s.fail != 0 {
		m.Rcode = s.fail
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 5}
	}
	_, hasA := s.addrs[name]
	_, hasSRV := s.srvs[name]
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA:
		for _, ip := range s.addrs[name] {
			if v4 := ip.To4(); v4 != nil && q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: v4})
			} else if v4 == nil && q.Qtype == dns.TypeAAAA {
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: ip})
			}
		}
	case dns.TypeSRV:
		for _, rec := range s.srvs[name] {
			target := dns.Fqdn(rec.Target)
			m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(dns.TypeSRV), Priority: 0, Weight: 1, Port: rec.Port, Target: target})
			// The targets' addresses in the additional section, as CoreDNS
			// sends them for a headless Service.
			for _, ip := range s.addrs[key(rec.Target)] {
				if s.noExtra {
					break
				}
				h := dns.RR_Header{Name: target, Class: dns.ClassINET, Ttl: 5}
				if v4 := ip.To4(); v4 != nil {
					h.Rrtype = dns.TypeA
					m.Extra = append(m.Extra, &dns.A{Hdr: h, A: v4})
				} else {
					h.Rrtype = dns.TypeAAAA
					m.Extra = append(m.Extra, &dns.AAAA{Hdr: h, AAAA: ip})
				}
			}
		}
	}
	if !hasA && !hasSRV {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}
