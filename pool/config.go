package pool

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Defaults, applied where a Config or UpstreamConfig field is zero.
const (
	DefaultMaxConnections      = 100
	DefaultMaxQueue            = 1000
	DefaultMaxWait             = 5 * time.Second
	DefaultMaxIdleConnDuration = 10 * time.Second
	DefaultURL                 = "http://127.0.0.1:11434"
	DefaultConnectTimeout      = 2 * time.Second
	DefaultFirstByteTimeout    = 5 * time.Minute
	DefaultIdleTimeout         = 60 * time.Second
	DefaultMaxResponseBytes    = 64 << 20
	DefaultHealthInterval      = 10 * time.Second
	DefaultHealthTimeout       = 2 * time.Second
	DefaultUnhealthyAfter      = 3
	DefaultHealthyAfter        = 2
)

// Config bounds the requests to one upstream.
type Config struct {
	// MaxConnections is the most upstream connections open at any moment,
	// and so the most requests in flight. A hard bound: fasthttp's own pool
	// is sized to it and never waits. Default DefaultMaxConnections.
	MaxConnections int `mapstructure:"max_connections"`
	// MaxQueue is the most requests waiting for a free connection; one more
	// is refused at once with ErrQueueFull. Default DefaultMaxQueue;
	// negative means no queue (refuse as soon as all connections are busy).
	MaxQueue int `mapstructure:"max_queue"`
	// MaxWait is how long a request waits for a free connection before
	// ErrPoolExhausted. Default DefaultMaxWait.
	MaxWait time.Duration `mapstructure:"max_wait"`
	// MaxIdleConnDuration closes keep-alive connections idle this long. Keep
	// it below the upstream's own idle close, or a reused connection may be
	// found closed. Default DefaultMaxIdleConnDuration.
	MaxIdleConnDuration time.Duration `mapstructure:"max_idle_conn_duration"`
}

// UpstreamConfig says where an upstream is and how long to wait for it.
type UpstreamConfig struct {
	// URL is the upstream's base URL, http or https, with no path, query or
	// credentials. Default DefaultURL (Ollama's own default).
	URL string `mapstructure:"url"`
	// ConnectTimeout bounds a TCP (and TLS) connect. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"`
	// FirstByteTimeout bounds the wait for the first response byte after the
	// request is sent. It must cover a cold model load (minutes).
	// Default DefaultFirstByteTimeout.
	FirstByteTimeout time.Duration `mapstructure:"first_byte_timeout"`
	// IdleTimeout bounds the silence between two reads of a response body,
	// so a stalled stream ends while a long generation does not.
	// Default DefaultIdleTimeout.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// MaxResponseBytes caps a non-streamed response body. Default
	// DefaultMaxResponseBytes.
	MaxResponseBytes int `mapstructure:"max_response_bytes"`
	// HealthInterval is the pause between health probes; the first runs at
	// start. Default DefaultHealthInterval.
	HealthInterval time.Duration `mapstructure:"health_interval"`
	// HealthTimeout bounds one probe. Default DefaultHealthTimeout.
	HealthTimeout time.Duration `mapstructure:"health_timeout"`
	// UnhealthyAfter consecutive failed probes mark the upstream down, so
	// requests fail fast with ErrUnhealthy. Default DefaultUnhealthyAfter.
	UnhealthyAfter int `mapstructure:"unhealthy_after"`
	// HealthyAfter consecutive good probes bring a down upstream back.
	// Default DefaultHealthyAfter.
	HealthyAfter int `mapstructure:"healthy_after"`
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = DefaultMaxQueue
	}
	if c.MaxQueue < 0 {
		c.MaxQueue = 0
	}
	if c.MaxWait == 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.MaxIdleConnDuration == 0 {
		c.MaxIdleConnDuration = DefaultMaxIdleConnDuration
	}
	return c
}

func (c Config) validate() error {
	if c.MaxConnections < 0 {
		return fmt.Errorf("pool.max_connections: must be positive, got %d", c.MaxConnections)
	}
	if c.MaxWait < 0 {
		return fmt.Errorf("pool.max_wait: must not be negative, got %s", c.MaxWait)
	}
	if c.MaxIdleConnDuration < 0 {
		return fmt.Errorf("pool.max_idle_conn_duration: must not be negative, got %s", c.MaxIdleConnDuration)
	}
	return nil
}

func (u UpstreamConfig) withDefaults() UpstreamConfig {
	if u.URL == "" {
		u.URL = DefaultURL
	}
	if u.ConnectTimeout == 0 {
		u.ConnectTimeout = DefaultConnectTimeout
	}
	if u.FirstByteTimeout == 0 {
		u.FirstByteTimeout = DefaultFirstByteTimeout
	}
	if u.IdleTimeout == 0 {
		u.IdleTimeout = DefaultIdleTimeout
	}
	if u.MaxResponseBytes == 0 {
		u.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if u.HealthInterval == 0 {
		u.HealthInterval = DefaultHealthInterval
	}
	if u.HealthTimeout == 0 {
		u.HealthTimeout = DefaultHealthTimeout
	}
	if u.UnhealthyAfter == 0 {
		u.UnhealthyAfter = DefaultUnhealthyAfter
	}
	if u.HealthyAfter == 0 {
		u.HealthyAfter = DefaultHealthyAfter
	}
	return u
}

// target is a parsed upstream URL.
type target struct {
	addr  string // host:port to dial
	host  string // Host header the upstream expects
	isTLS bool
}

func (u UpstreamConfig) validate() (target, error) {
	for name, d := range map[string]time.Duration{
		"connect_timeout": u.ConnectTimeout, "first_byte_timeout": u.FirstByteTimeout,
		"idle_timeout": u.IdleTimeout, "health_interval": u.HealthInterval, "health_timeout": u.HealthTimeout,
	} {
		if d < 0 {
			return target{}, fmt.Errorf("upstream.%s: must not be negative, got %s", name, d)
		}
	}
	if u.MaxResponseBytes < 0 || u.UnhealthyAfter < 0 || u.HealthyAfter < 0 {
		return target{}, errors.New("upstream.max_response_bytes, unhealthy_after, healthy_after: must not be negative")
	}
	return parseURL(u.URL)
}

func parseURL(raw string) (target, error) {
	pu, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("upstream.url: not a URL: %w", err)
	}
	var t target
	switch strings.ToLower(pu.Scheme) {
	case "http":
	case "https":
		t.isTLS = true
	default:
		return target{}, fmt.Errorf("upstream.url: scheme must be http or https, got %q", pu.Scheme)
	}
	if pu.User != nil {
		return target{}, errors.New("upstream.url: must not carry credentials")
	}
	if pu.Path != "" && pu.Path != "/" || pu.RawQuery != "" || pu.Fragment != "" {
		return target{}, errors.New("upstream.url: must have no path, query or fragment (Ollama serves at the root)")
	}
	if pu.Hostname() == "" {
		return target{}, errors.New("upstream.url: missing host")
	}
	t.host = pu.Host
	port := pu.Port()
	if port == "" {
		port = "80"
		if t.isTLS {
			port = "443"
		}
	}
	t.addr = net.JoinHostPort(pu.Hostname(), port)
	return t, nil
}
