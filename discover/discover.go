// Package discover finds an upstream's backends in DNS: the addresses
// behind its name (A and AAAA records), or the targets of its SRV records,
// through the system's resolver or a given DNS server.
package discover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultTimeout bounds one Lookup (every query it makes).
const DefaultTimeout = 2 * time.Second

// ErrEmpty: the name resolved to no address. It is treated as a failed
// lookup rather than as "no backends", so a DNS server that answers empty
// for a moment cannot empty the fleet; check the headless Service's
// endpoints (kubectl get endpoints) or the record itself.
var ErrEmpty = errors.New("discover: no address records")

// Config says what to resolve and where.
type Config struct {
	// URL is the upstream's base URL, http(s)://host:port; host is the name
	// resolved, scheme and port are kept for every backend found. Required.
	URL string
	// Resolver is the host:port of the DNS server to ask (UDP, TCP when an
	// answer is truncated). Empty means the system's resolver.
	Resolver string
	// SRV, as "_http._tcp", makes Lookup ask for the SRV records of
	// SRV + "." + host first; each target:port is a backend. When the name
	// has none, the A/AAAA records are used. Empty means A/AAAA only.
	SRV string
	// Timeout bounds one Lookup. Default DefaultTimeout.
	Timeout time.Duration
}

// Endpoint is one backend found: its name and its base URL.
type Endpoint struct {
	// Name is ip:port for an address record ("10.1.2.3:11434",
	// "[fd00::3]:11434"), the target (without its final dot) for an SRV
	// record, or target:port when one target is listed with two ports.
	Name string
	// URL is scheme://ip:port: every backend is dialled at an address the
	// lookup found, so the pool never depends on another resolver.
	URL string
}

// Resolver resolves one upstream's name. It is safe for concurrent use.
type Resolver struct {
	cfg    Config
	scheme string
	host   string
	port   int
	srv    string // the SRV name asked for; "" for none
	dns    *server
	system *net.Resolver
}

// New validates cfg. It sends no query.
func New(cfg Config) (*Resolver, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("url: scheme must be http or https, got %q", u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return nil, errors.New("url: missing host")
	}
	port := 80
	if scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("url: bad port %q", p)
		}
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("timeout: must not be negative, got %s", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	r := &Resolver{cfg: cfg, scheme: scheme, host: host, port: port, system: net.DefaultResolver}
	if cfg.SRV != "" {
		if !validSRV(cfg.SRV) {
			return nil, fmt.Errorf("srv: must be _service._proto (e.g. _http._tcp), got %q", cfg.SRV)
		}
		if net.ParseIP(host) != nil {
			return nil, errors.New("srv: the url's host is an IP address, which has no SRV records")
		}
		r.srv = cfg.SRV + "." + host
	}
	if cfg.Resolver != "" {
		h, p, err := net.SplitHostPort(cfg.Resolver)
		if err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("resolver: must be host:port of a DNS server, got %q", cfg.Resolver)
		}
		r.dns = &server{addr: cfg.Resolver}
	}
	return r, nil
}

func validSRV(s string) bool {
	service, proto, ok := strings.Cut(s, ".")
	return ok && len(service) > 1 && service[0] == '_' && (proto == "_tcp" || proto == "_udp") && !strings.ContainsAny(service[1:], "._ ")
}

// Host is the name resolved.
func (r *Resolver) Host() string { return r.host }

// Lookup resolves the name once and returns its backends sorted by name,
// or an error (the server's, a timeout, ErrEmpty): the caller keeps the
// set it had.
func (r *Resolver) Lookup(ctx context.Context) ([]Endpoint, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if ip := net.ParseIP(r.host); ip != nil {
		return []Endpoint{r.endpoint(net.JoinHostPort(ip.String(), strconv.Itoa(r.port)), ip, r.port)}, nil
	}
	if r.srv != "" {
		srvs, err := r.lookupSRV(ctx)
		if err != nil {
			return nil, fmt.Errorf("SRV %s: %w", r.srv, err)
		}
		if len(srvs) > 0 {
			return r.fromSRV(ctx, srvs)
		}
	}
	ips, err := r.lookupIP(ctx, r.host)
	if err != nil {
		return nil, fmt.Errorf("A/AAAA %s: %w", r.host, err)
	}
	out := make([]Endpoint, 0, len(ips))
	for _, ip := range ips {
		out = append(out, r.endpoint(net.JoinHostPort(ip.String(), strconv.Itoa(r.port)), ip, r.port))
	}
	return sortUnique(out), nil
}

// srvRecord is one SRV answer, target without its final dot.
type srvRecord struct {
	target string
	port   int
	// addrs are the target's addresses from the answer's additional
	// section, if the server sent them.
	addrs []net.IP
}

// fromSRV makes each target:port a backend, dialled at the target's first
// address (a pod's name has one).
func (r *Resolver) fromSRV(ctx context.Context, srvs []srvRecord) ([]Endpoint, error) {
	seen := map[string]int{}
	for _, s := range srvs {
		seen[s.target]++
	}
	out := make([]Endpoint, 0, len(srvs))
	for _, s := range srvs {
		ips := s.addrs
		sortIPs(ips) // the additional section's order is the server's
		if len(ips) == 0 {
			var err error
			if ips, err = r.lookupIP(ctx, s.target); err != nil {
				return nil, fmt.Errorf("SRV target %s: %w", s.target, err)
			}
		}
		name := s.target
		if seen[s.target] > 1 {
			name = net.JoinHostPort(s.target, strconv.Itoa(s.port))
		}
		out = append(out, r.endpoint(name, ips[0], s.port))
	}
	return sortUnique(out), nil
}

func (r *Resolver) endpoint(name string, ip net.IP, port int) Endpoint {
	return Endpoint{Name: name, URL: r.scheme + "://" + net.JoinHostPort(ip.String(), strconv.Itoa(port))}
}

// lookupIP returns host's addresses, IPv4 first, each sorted.
func (r *Resolver) lookupIP(ctx context.Context, host string) ([]net.IP, error) {
	var ips []net.IP
	if r.dns != nil {
		var err error
		if ips, err = r.dns.addrs(ctx, host); err != nil {
			return nil, err
		}
	} else {
		addrs, err := r.system.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	if len(ips) == 0 {
		return nil, ErrEmpty
	}
	sortIPs(ips)
	return ips, nil
}

// sortIPs orders addresses IPv4 first, each family by value, so a name's
// first address is the same whatever order the server listed them in:
// a backend's URL must not change from one lookup to the next.
func sortIPs(ips []net.IP) {
	slices.SortFunc(ips, func(a, b net.IP) int {
		if a4, b4 := a.To4() != nil, b.To4() != nil; a4 != b4 {
			if a4 {
				return -1
			}
			return 1
		}
		return strings.Compare(string(a.To16()), string(b.To16()))
	})
}

// lookupSRV returns the SRV records of r.srv; none (and no error) when the
// name does not exist or has no SRV records.
func (r *Resolver) lookupSRV(ctx context.Context) ([]srvRecord, error) {
	if r.dns != nil {
		return r.dns.srv(ctx, r.srv)
	}
	_, recs, err := r.system.LookupSRV(ctx, "", "", r.srv)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]srvRecord, 0, len(recs))
	for _, s := range recs {
		out = append(out, srvRecord{target: strings.ToLower(strings.TrimSuffix(s.Target, ".")), port: int(s.Port)})
	}
	return out, nil
}

// sortUnique sorts endpoints by name and drops repeated names.
func sortUnique(eps []Endpoint) []Endpoint {
	slices.SortFunc(eps, func(a, b Endpoint) int { return strings.Compare(a.Name, b.Name) })
	return slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.Name == b.Name })
}
