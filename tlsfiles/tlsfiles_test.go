package tlsfiles_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vega-gateway/vega-gateway/tlsfiles"
)

// writePair writes a self-signed certificate with the given serial and its
// key to certFile and keyFile.
func writePair(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePair(t, 1, cert, key)
	otherCert, otherKey := filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key")
	writePair(t, 2, otherCert, otherKey)
	for _, tc := range []struct {
		name    string
		cfg     tlsfiles.Config
		wantErr string // "" : loads (or, with no file, nil)
	}{
		{"neither file: plain HTTP", tlsfiles.Config{}, ""},
		{"both", tlsfiles.Config{CertFile: cert, KeyFile: key}, ""},
		{"cert only", tlsfiles.Config{CertFile: cert}, "x.tls.key_file: must be set together with x.tls.cert_file"},
		{"key only", tlsfiles.Config{KeyFile: key}, "x.tls.cert_file: must be set together with x.tls.key_file"},
		{"missing key file", tlsfiles.Config{CertFile: cert, KeyFile: key + ".gone"}, "x.tls.key_file:"},
		{"key of another certificate", tlsfiles.Config{CertFile: cert, KeyFile: otherKey}, "x.tls.cert_file, x.tls.key_file:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tlsfiles.Load(tc.cfg, "x.tls", zerolog.Nop())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (c == nil) != !tc.cfg.Enabled() {
				t.Fatalf("Load returned %v for %+v", c, tc.cfg)
			}
		})
	}
}

// TestReload: a handshake a check interval after the files change gets
// the new pair; a pair that does not load keeps the old one, logged once.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePair(t, 1, cert, key)
	var logs bytes.Buffer
	c, err := tlsfiles.Load(tlsfiles.Config{CertFile: cert, KeyFile: key}, "x.tls", zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	serial := func() int64 {
		pair, err := c.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf.SerialNumber.Int64()
	}
	writePair(t, 2, cert, key)
	if got := serial(); got != 1 {
		t.Fatalf("serial %d within the check interval, want 1 (the files are looked at once a second at most)", got)
	}
	time.Sleep(tlsfiles.CheckInterval + 100*time.Millisecond)
	if got := serial(); got != 2 {
		t.Fatalf("serial %d after the interval, want 2", got)
	}
	if err := os.WriteFile(key, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		time.Sleep(tlsfiles.CheckInterval + 100*time.Millisecond)
		if got := serial(); got != 2 {
			t.Fatalf("serial %d after a bad renewal, want 2 kept", got)
		}
	}
	if n := strings.Count(logs.String(), "does not load"); n != 1 {
		t.Fatalf("%d log lines for one bad renewal, want 1:\n%s", n, logs.String())
	}
}
