package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ollama "github.com/ollama/ollama/api"

	"github.com/vega-gateway/vega-gateway/ollamatest"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vega test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue writes a leaf certificate for localhost and 127.0.0.1, with the
// given serial, and its key, to certFile and keyFile (each replaced in one
// rename, as cert-manager's atomic writer does).
func (ca *testCA) issue(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "vega-gateway"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeAtomic(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// tlsClient verifies the gateway's certificate against the test CA and
// opens a new connection per request unless keepAlive.
func tlsClient(ca *testCA, keepAlive bool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.pool},
		DisableKeepAlives: !keepAlive,
	}}
}

// servedSerial dials addr and returns the serial of the certificate it
// presents, verified against the test CA.
func servedSerial(t *testing.T, ca *testCA, addr string) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestTLSListeners serves both listeners over TLS with a generated
// certificate: a client that checks it against its CA streams a chat,
// reuses the connection the stream gave back, reads the admin listener,
// and sees a renewed certificate on its next connection once the files are
// replaced; a bad renewal leaves the good certificate in service, and TLS
// 1.1 and CBC suites are refused.
func TestTLSListeners(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.issue(t, 100, certFile, keyFile)
	fake, err := ollamatest.NewServer(ollamatest.Config{Tokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	app := startApp(t, "VEGA_UPSTREAM_URL="+fake.URL(),
		"VEGA_GATEWAY_TLS_CERT_FILE="+certFile, "VEGA_GATEWAY_TLS_KEY_FILE="+keyFile,
		"VEGA_ADMIN_TLS_CERT_FILE="+certFile, "VEGA_ADMIN_TLS_KEY_FILE="+keyFile)
	base := "https://" + app.data

	t.Run("streamed chat, then the same connection again", func(t *testing.T) {
		hc := tlsClient(ca, true)
		u, _ := url.Parse(base)
		client := ollama.NewClient(u, hc)
		var chunks int
		var text strings.Builder
		err := client.Chat(context.Background(), &ollama.ChatRequest{Model: "llama3.2", Messages: []ollama.Message{{Role: "user", Content: "hi"}}},
			func(r ollama.ChatResponse) error { chunks++; text.WriteString(r.Message.Content); return nil })
		if err != nil || chunks < 5 || text.Len() == 0 {
			t.Fatalf("chat over TLS: %v, %d chunks %q", err, chunks, text.String())
		}
		// The stream handed its connection back to the server: the next
		// request goes on it.
		reused := false
		req, _ := http.NewRequest("GET", base+"/api/tags", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
		}))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !reused || resp.TLS == nil {
			t.Fatalf("after the stream: %d, reused %v, TLS %+v", resp.StatusCode, reused, resp.TLS)
		}
	})

	t.Run("admin listener", func(t *testing.T) {
		resp, err := tlsClient(ca, false).Get("https://" + app.admin + "/readyz")
		if err != nil {
			t.Fatalf("admin over TLS: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("admin /readyz over TLS: %d", resp.StatusCode)
		}
	})

	t.Run("old protocols and suites refused", func(t *testing.T) {
		for name, cfg := range map[string]*tls.Config{
			"TLS 1.1":         {MaxVersion: tls.VersionTLS11},
			"TLS 1.2 CBC":     {MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}},
			"TLS 1.2 RSA kex": {MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
		} {
			cfg.RootCAs, cfg.ServerName = ca.pool, "localhost"
			if c, err := tls.Dial("tcp", app.data, cfg); err == nil {
				c.Close()
				t.Errorf("%s: handshake succeeded, want refused", name)
			}
		}
		cfg := &tls.Config{RootCAs: ca.pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
		c, err := tls.Dial("tcp", app.data, cfg)
		if err != nil {
			t.Fatalf("TLS 1.2 with the default suites: %v", err)
		}
		c.Close()
		if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Fatalf("ALPN chose %q for a client offering h2 and http/1.1, want http/1.1", p)
		}
	})

	t.Run("rotation", func(t *testing.T) {
		if got := servedSerial(t, ca, app.data); got != 100 {
			t.Fatalf("serial %d before rotation, want 100", got)
		}
		ca.issue(t, 101, certFile, keyFile)
		waitServed(t, ca, app.data, 101)
		waitServed(t, ca, app.admin, 101)
		// A renewal that does not load: the good certificate stays.
		writeAtomic(t, keyFile, []byte("not a key"))
		time.Sleep(1500 * time.Millisecond) // past a check
		if got := servedSerial(t, ca, app.data); got != 101 {
			t.Fatalf("serial %d after a bad renewal, want 101 kept", got)
		}
		if n := strings.Count(app.out.String(), "renewed TLS certificate does not load"); n < 1 || n > 2 {
			t.Fatalf("%d log lines for the bad renewal, want it logged once per listener", n)
		}
		ca.issue(t, 102, certFile, keyFile)
		waitServed(t, ca, app.data, 102)
	})
}

// waitServed polls new connections for up to 5 s until addr presents the
// certificate with serial want.
func waitServed(t *testing.T, ca *testCA, addr string, want int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := servedSerial(t, ca, addr)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still serves serial %d, want %d", addr, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTLSConfigErrors: one file of a pair is a start-up error naming the
// missing key; an unreadable pair names both.
func TestTLSConfigErrors(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	ca.issue(t, 1, certFile, keyFile)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"gateway cert only", []string{"VEGA_GATEWAY_TLS_CERT_FILE=" + certFile}, "gateway.tls.key_file"},
		{"gateway key only", []string{"VEGA_GATEWAY_TLS_KEY_FILE=" + keyFile}, "gateway.tls.cert_file"},
		{"admin cert only", []string{"VEGA_ADMIN_TLS_CERT_FILE=" + certFile}, "admin.tls.key_file"},
		{"missing file", []string{"VEGA_GATEWAY_TLS_CERT_FILE=" + certFile, "VEGA_GATEWAY_TLS_KEY_FILE=" + keyFile + ".gone"}, "gateway.tls.key_file"},
		{"key of another cert", []string{"VEGA_GATEWAY_TLS_CERT_FILE=" + certFile, "VEGA_GATEWAY_TLS_KEY_FILE=" + certFile}, "gateway.tls.cert_file, gateway.tls.key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig("", nil, append([]string{"VEGA_GATEWAY_LISTEN=127.0.0.1:0", "VEGA_ADMIN_LISTEN=" + freeAddr(t), "VEGA_LOG_DIR="}, tc.env...))
			if err == nil {
				var a *app
				log, sink := newLogger(cfg.Log, io.Discard, io.Discard)
				defer sink.Close()
				a, err = newApp(cfg, log, sink)
				if err == nil {
					a.gwLn.Close()
					a.adminLn.Close()
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s", err, tc.want)
			}
		})
	}
}
