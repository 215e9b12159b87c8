// Package tlsfiles serves a listener's TLS certificate from a PEM
// certificate and key file pair, and picks up a renewed pair (cert-manager,
// certbot) without a restart.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// CheckInterval is how often, at most, a handshake looks at the files
// (their modification time and size) for a renewed pair. A check is two
// stat calls; between checks a handshake reads nothing from disk.
const CheckInterval = time.Second

// Config names a listener's certificate and key (config keys
// <listener>.tls.cert_file and key_file). Both set: the listener speaks
// HTTPS; neither: plain HTTP (the default); one alone is a start-up error.
type Config struct {
	// CertFile is a PEM file with the certificate chain, leaf first (what
	// cert-manager writes as tls.crt, certbot as fullchain.pem).
	CertFile string `mapstructure:"cert_file"`
	// KeyFile is the PEM private key of the leaf (tls.key, privkey.pem).
	KeyFile string `mapstructure:"key_file"`
}

// Enabled reports whether the config asks for TLS (either file named).
func (c Config) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

// Certificate is a certificate and key pair loaded from files. Handshakes
// are served the pair in memory; at most every CheckInterval, a handshake
// first looks whether either file changed and, if so, loads the pair
// again. A new pair that does not load (a half-written renewal, a key that
// does not match) leaves the old one in service and is logged once; the
// next change to the files is tried again.
type Certificate struct {
	cfg    Config
	prefix string
	log    zerolog.Logger
	cert   atomic.Pointer[tls.Certificate]
	// next is when the files are next looked at (unix ns).
	next atomic.Int64
	// mu serialises reloads; seen is the files' state last loaded or
	// tried (guarded by mu).
	mu   sync.Mutex
	seen stamp
}

// stamp is what tells a changed file: modification time and size of each.
type stamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
}

// Load loads cfg's pair. prefix is the config key prefix named in errors
// and logs ("gateway.tls"). It returns nil, nil when cfg names no file,
// and an error naming the key when it names one only or the pair does not
// load.
func Load(cfg Config, prefix string, log zerolog.Logger) (*Certificate, error) {
	switch {
	case !cfg.Enabled():
		return nil, nil
	case cfg.CertFile == "":
		return nil, fmt.Errorf("%s.cert_file: must be set together with %s.key_file", prefix, prefix)
	case cfg.KeyFile == "":
		return nil, fmt.Errorf("%s.key_file: must be set together with %s.cert_file", prefix, prefix)
	}
	c := &Certificate{cfg: cfg, prefix: prefix, log: log}
	st, err := c.stat()
	if err != nil {
		return nil, err
	}
	pair, err := c.load()
	if err != nil {
		return nil, err
	}
	c.seen = st
	c.cert.Store(pair)
	c.next.Store(time.Now().Add(CheckInterval).UnixNano())
	return c, nil
}

func (c *Certificate) stat() (stamp, error) {
	ci, err := os.Stat(c.cfg.CertFile)
	if err != nil {
		return stamp{}, fmt.Errorf("%s.cert_file: %w", c.prefix, err)
	}
	ki, err := os.Stat(c.cfg.KeyFile)
	if err != nil {
		return stamp{}, fmt.Errorf("%s.key_file: %w", c.prefix, err)
	}
	return stamp{certMod: ci.ModTime(), keyMod: ki.ModTime(), certSize: ci.Size(), keySize: ki.Size()}, nil
}

func (c *Certificate) load() (*tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(c.cfg.CertFile, c.cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s.cert_file, %s.key_file: %w", c.prefix, c.prefix, err)
	}
	if len(pair.Certificate) == 0 {
		return nil, fmt.Errorf("%s.cert_file: no certificate", c.prefix)
	}
	if pair.Leaf == nil { // set by LoadX509KeyPair since Go 1.23; kept for the expiry log
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%s.cert_file: %w", c.prefix, err)
		}
	}
	return &pair, nil
}

// NotAfter is the expiry of the certificate in service.
func (c *Certificate) NotAfter() time.Time { return c.cert.Load().Leaf.NotAfter }

// GetCertificate is tls.Config.GetCertificate: the pair in service,
// reloaded first if the files changed.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := time.Now().UnixNano()
	if next := c.next.Load(); now >= next && c.next.CompareAndSwap(next, now+int64(CheckInterval)) {
		c.reload()
	}
	return c.cert.Load(), nil
}

// reload loads the pair again if either file changed since it was last
// loaded or tried.
func (c *Certificate) reload() {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.stat()
	if err != nil {
		if !c.seen.certMod.IsZero() { // log a vanished file once
			c.log.Error().Err(err).Str("listener", c.prefix).Msg("TLS certificate files unreadable; the certificate in service stays")
			c.seen = stamp{}
		}
		return
	}
	if st == c.seen {
		return
	}
	c.seen = st
	pair, err := c.load()
	if err != nil {
		c.log.Error().Err(err).Str("listener", c.prefix).Time("in_service_not_after", c.NotAfter()).
			Msg("renewed TLS certificate does not load; the certificate in service stays")
		return
	}
	c.cert.Store(pair)
	c.log.Info().Str("listener", c.prefix).Str("subject", pair.Leaf.Subject.String()).Time("not_after", pair.Leaf.NotAfter).
		Msg("TLS certificate reloaded")
}

// ServerConfig is the listener's TLS configuration: TLS 1.2 or 1.3, and
// under TLS 1.2 only ECDHE key exchange with AEAD ciphers (forward secrecy,
// no CBC or RSA key transport: Mozilla's "intermediate" list; TLS 1.3's
// suites are all of that kind and not configurable). ALPN offers
// http/1.1 only: the listeners speak HTTP/1.1.
func (c *Certificate) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		CipherSuites:   CipherSuites,
		NextProtos:     []string{"http/1.1"},
		GetCertificate: c.GetCertificate,
	}
}

// CipherSuites are the TLS 1.2 suites offered (ServerConfig).
var CipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}
