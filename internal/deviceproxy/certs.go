package deviceproxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// CertCheckInterval is how often CertReloader looks at its files. cert-manager
// renews weeks before expiry, so promptness hardly matters; the check costs
// two small file reads on one handshake per interval.
const CertCheckInterval = 10 * time.Second

// CertReloader serves a certificate and key from files
// (FLOCK_PROXY_TLS_CERT / FLOCK_PROXY_TLS_KEY) and picks up new contents
// when they change, so a rotated certificate needs no restart. It reads
// the files during handshakes, at most once per CertCheckInterval, rather
// than in a goroutine of its own, so it needs no lifecycle. A pair that does
// not load (cert-manager writes the two files one after the other) leaves
// the previous certificate in service until a later check succeeds.
type CertReloader struct {
	certFile, keyFile string
	interval          time.Duration

	current   atomic.Pointer[tls.Certificate]
	lastCheck atomic.Int64 // unix nanoseconds

	mu              sync.Mutex // serialises checks and guards the fields below
	certPEM, keyPEM []byte     // the contents behind current
	lastErr         string     // the failure last logged, so it is logged once
}

// NewCertReloader loads the pair once; a pair that does not load at start
// is an error rather than a server without a certificate.
func NewCertReloader(certFile, keyFile string) (*CertReloader, error) {
	c := &CertReloader{certFile: certFile, keyFile: keyFile, interval: CertCheckInterval}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (c *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := time.Now().UnixNano()
	if now-c.lastCheck.Load() >= int64(c.interval) && c.mu.TryLock() {
		// TryLock: handshakes never queue behind a check another one is
		// already making; they serve the current certificate meanwhile.
		c.lastCheck.Store(now)
		// A half-written rotation or a missing file would otherwise be
		// logged on every check until it is fixed.
		if err := c.reloadLocked(); err != nil && err.Error() != c.lastErr {
			c.lastErr = err.Error()
			slog.Default().Error("device proxy: TLS certificate reload failed; serving the previous one", "error", err.Error())
		}
		c.mu.Unlock()
	}
	return c.current.Load(), nil
}

// Reload reads the files now, e.g. on SIGHUP. An error leaves the current
// certificate in service.
func (c *CertReloader) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastCheck.Store(time.Now().UnixNano())
	return c.reloadLocked()
}

// reloadLocked compares contents rather than modification times: secret
// volumes swap a symlink and keep old times, and a fast rewrite can land in
// the same timestamp.
func (c *CertReloader) reloadLocked() error {
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return fmt.Errorf("read TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return fmt.Errorf("read TLS key: %w", err)
	}
	if bytes.Equal(certPEM, c.certPEM) && bytes.Equal(keyPEM, c.keyPEM) && c.current.Load() != nil {
		return nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("load TLS pair %s, %s: %w", c.certFile, c.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parse TLS certificate %s: %w", c.certFile, err)
		}
	}
	c.current.Store(&cert)
	c.certPEM, c.keyPEM = certPEM, keyPEM
	c.lastErr = ""
	return nil
}
