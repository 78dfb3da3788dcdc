package deviceproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCert is a self-signed wildcard certificate for *.devices.test.
type testCert struct {
	cert    *x509.Certificate
	certPEM []byte
	keyPEM  []byte
}

func newTestCert(t *testing.T, serial int64) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "*." + testDomain},
		DNSNames:              []string{"*." + testDomain},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
}

// install writes the pair the way a secret volume changes: each file
// replaced whole by a rename, never seen half-written.
func (c testCert) install(t *testing.T, certFile, keyFile string) {
	t.Helper()
	for file, data := range map[string][]byte{certFile: c.certPEM, keyFile: c.keyPEM} {
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTLS serves the proxy with the reloader's certificate, requests a
// device URL over HTTPS (HTTP/1.1 and HTTP/2), then rotates the files and
// shows that the next handshake gets the new certificate.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first, second := newTestCert(t, 1), newTestCert(t, 2)
	first.install(t, certFile, keyFile)

	reloader, err := NewCertReloader(certFile, keyFile)
	if err != nil {
		t.Fatalf("NewCertReloader: %v", err)
	}
	// Check on every handshake, so that the test need not wait out the interval.
	reloader.interval = 0

	h := newHarness(t)
	port := startDevice(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{
			"host": r.Host, "proto": r.Proto, "xfp": r.Header.Get("X-Forwarded-Proto"),
		})
	}))
	id := h.fleet.add(device{public: true, port: port})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           h.proxy,
		TLSConfig:         &tls.Config{GetCertificate: reloader.GetCertificate, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})

	// fetch makes a fresh client, so each call is a new handshake.
	fetch := func(t *testing.T, trusted *x509.Certificate, http2 bool) (*http.Response, map[string]string) {
		t.Helper()
		roots := x509.NewCertPool()
		roots.AddCert(trusted)
		c := clientTo(t, ln.Addr().String(), func(tr *http.Transport) {
			tr.TLSClientConfig = &tls.Config{RootCAs: roots}
			tr.ForceAttemptHTTP2 = http2
		})
		resp, err := c.Get("https://" + hostOf(id) + "/")
		if err != nil {
			t.Fatalf("GET over TLS: %v", err)
		}
		defer resp.Body.Close()
		var seen map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&seen); err != nil {
			t.Fatalf("decode: %v", err)
		}
		return resp, seen
	}

	for _, tc := range []struct {
		name  string
		http2 bool
		proto string
	}{{"HTTP/1.1", false, "HTTP/1.1"}, {"HTTP/2", true, "HTTP/2.0"}} {
		t.Run(tc.name, func(t *testing.T) {
			resp, seen := fetch(t, first.cert, tc.http2)
			if resp.Proto != tc.proto {
				t.Errorf("client spoke %s, want %s", resp.Proto, tc.proto)
			}
			if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != 1 {
				t.Errorf("served certificate serial %d, want 1", got)
			}
			want := map[string]string{"host": hostOf(id), "proto": "HTTP/1.1", "xfp": "https"}
			for k, v := range want {
				if seen[k] != v {
					t.Errorf("device saw %s = %q, want %q", k, seen[k], v)
				}
			}
		})
	}

	t.Run("rotation", func(t *testing.T) {
		second.install(t, certFile, keyFile)
		resp, _ := fetch(t, second.cert, false)
		if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != 2 {
			t.Errorf("after rotation the served certificate has serial %d, want 2", got)
		}
	})

	t.Run("a broken pair keeps the current certificate", func(t *testing.T) {
		// The new certificate with the old key: what a rotation looks like
		// between its two writes.
		if err := os.WriteFile(certFile, first.certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		resp, _ := fetch(t, second.cert, false)
		if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != 2 {
			t.Errorf("served serial %d, want the last good one, 2", got)
		}
		if err := reloader.Reload(); err == nil {
			t.Error("Reload accepted a mismatched pair")
		}
	})
}

func TestNewCertReloaderFails(t *testing.T) {
	dir := t.TempDir()
	good := newTestCert(t, 1)
	other := newTestCert(t, 2)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, cert, key string
	}{
		{"missing certificate", filepath.Join(dir, "none.crt"), write("a.key", good.keyPEM)},
		{"missing key", write("b.crt", good.certPEM), filepath.Join(dir, "none.key")},
		{"mismatched pair", write("c.crt", good.certPEM), write("c.key", other.keyPEM)},
		{"not PEM", write("d.crt", []byte("hello")), write("d.key", []byte("hello"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewCertReloader(tc.cert, tc.key); err == nil {
				t.Fatal("NewCertReloader accepted it")
			}
		})
	}
}
