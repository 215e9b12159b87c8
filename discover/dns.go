package discover

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/miekg/dns"
)

// server queries one DNS server directly (config key resolver). The name is
// taken as fully qualified: no search domains, no /etc/hosts.
type server struct {
	addr string
}

// query sends one question, over UDP and again over TCP when the answer
// is truncated (a headless Service with many pods). A missing name
// (NXDOMAIN) is an empty answer; any other failure code is an error.
func (s *server) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	c := &dns.Client{Net: "udp", UDPSize: dns.DefaultMsgSize}
	m.SetEdns0(dns.DefaultMsgSize, false)
	in, _, err := c.ExchangeContext(ctx, m, s.addr)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.ExchangeContext(ctx, m, s.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], s.addr, err)
	}
	switch in.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return in, nil
	}
	return nil, fmt.Errorf("%s %s: %s", dns.TypeToString[qtype], s.addr, dns.RcodeToString[in.Rcode])
}

// addrs asks for host's A and AAAA records; both questions must be
// answered, so a failed one cannot drop its half of the backends.
func (s *server) addrs(ctx context.Context, host string) ([]net.IP, error) {
	var ips []net.IP
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		in, err := s.query(ctx, host, qt)
		if err != nil {
			return nil, err
		}
		for _, rr := range in.Answer {
			switch a := rr.(type) {
			case *dns.A:
				ips = append(ips, a.A)
			case *dns.AAAA:
				ips = append(ips, a.AAAA)
			}
		}
	}
	return ips, nil
}

// srv asks for name's SRV records, with the targets' addresses when the
// server adds them (CoreDNS does for a headless Service).
func (s *server) srv(ctx context.Context, name string) ([]srvRecord, error) {
	in, err := s.query(ctx, name, dns.TypeSRV)
	if err != nil {
		return nil, err
	}
	extra := map[string][]net.IP{}
	for _, rr := range in.Extra {
		owner := strings.ToLower(strings.TrimSuffix(rr.Header().Name, "."))
		switch a := rr.(type) {
		case *dns.A:
			extra[owner] = append(extra[owner], a.A)
		case *dns.AAAA:
			extra[owner] = append(extra[owner], a.AAAA)
		}
	}
	var out []srvRecord
	for _, rr := range in.Answer {
		if r, ok := rr.(*dns.SRV); ok {
			target := strings.ToLower(strings.TrimSuffix(r.Target, "."))
			out = append(out, srvRecord{target: target, port: int(r.Port), addrs: extra[target]})
		}
	}
	return out, nil
}
