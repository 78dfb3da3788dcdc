package kafkasink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SASL mechanisms a customer's cluster may require.
const (
	MechanismNone        = ""
	MechanismPlain       = "PLAIN"
	MechanismScramSHA256 = "SCRAM-SHA-256"
	MechanismScramSHA512 = "SCRAM-SHA-512"
)

// ErrInvalidConfig wraps every problem Validate (and so Open) reports.
var ErrInvalidConfig = errors.New("kafkasink: invalid config")

// Config is one customer endpoint's connection to its Kafka cluster.
type Config struct {
	Brokers []string // seed brokers, host:port
	Topic   string
	SASL    SASLConfig
	// TLS dials the brokers over TLS, verified against the system roots
	// plus CACertPEM.
	TLS bool
	// TLSInsecureSkipVerify disables certificate verification: only for
	// tests and development clusters.
	TLSInsecureSkipVerify bool
	// CACertPEM optionally adds CA certificates for clusters whose
	// certificates are signed by a private CA.
	CACertPEM string
	// DialTimeout bounds one TCP (and TLS) connect; 0 means 10s.
	DialTimeout time.Duration
	// Dial, when set, opens every TCP connection to a broker (the seeds
	// and the addresses the cluster advertises): the platform passes its
	// SSRF guard here, so a customer's broker list cannot reach internal
	// addresses. TLS is layered on its connections.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)

	// deliveryTimeout overrides defaultDeliveryTimeout so tests of a dead
	// cluster do not wait 15s; not part of the API because callers have
	// no reason to tune it per endpoint.
	deliveryTimeout time.Duration
}

// SASLConfig is the SASL authentication of a Config. An empty Mechanism
// means no authentication.
type SASLConfig struct {
	Mechanism string // MechanismNone, MechanismPlain, MechanismScramSHA256 or MechanismScramSHA512
	Username  string
	Password  string
}

// String redacts the password, because configs end up in logs and error
// reports; fmt uses it for a Config printed with %v or %+v too.
func (s SASLConfig) String() string {
	if s.Mechanism == MechanismNone && s.Username == "" && s.Password == "" {
		return "{}"
	}
	pw := ""
	if s.Password != "" {
		pw = "REDACTED"
	}
	return fmt.Sprintf("{Mechanism:%s Username:%s Password:%s}", s.Mechanism, s.Username, pw)
}

// GoString redacts the password for %#v as well.
func (s SASLConfig) GoString() string { return "kafkasink.SASLConfig" + s.String() }

// topicRE is Kafka's legal topic name (kafka.common.internals.Topic).
var topicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// Validate reports every problem of the config at once, so a customer
// fixing an endpoint form sees them all; the error wraps ErrInvalidConfig.
func (c Config) Validate() error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if len(c.Brokers) == 0 {
		add("no brokers")
	}
	for i, b := range c.Brokers {
		if err := validateBroker(b); err != nil {
			add("brokers[%d] %q: %v", i, b, err)
		}
	}

	switch {
	case !topicRE.MatchString(c.Topic):
		add("topic %q: must be 1 to 249 characters of [a-zA-Z0-9._-]", c.Topic)
	case c.Topic == "." || c.Topic == "..":
		add("topic %q: is reserved", c.Topic)
	}

	switch c.SASL.Mechanism {
	case MechanismNone:
		// Credentials without a mechanism would silently be ignored and
		// the connection made unauthenticated: most likely a form bug.
		if c.SASL.Username != "" || c.SASL.Password != "" {
			add("sasl: username or password given without a mechanism")
		}
	case MechanismPlain, MechanismScramSHA256, MechanismScramSHA512:
		if c.SASL.Username == "" {
			add("sasl: %s needs a username", c.SASL.Mechanism)
		}
		if c.SASL.Password == "" {
			add("sasl: %s needs a password", c.SASL.Mechanism)
		}
	default:
		add("sasl: unknown mechanism %q (want %s, %s or %s)", c.SASL.Mechanism,
			MechanismPlain, MechanismScramSHA256, MechanismScramSHA512)
	}

	// TLS options without TLS would be ignored and the connection made in
	// plain text, which the customer clearly did not intend.
	if !c.TLS && (c.TLSInsecureSkipVerify || c.CACertPEM != "") {
		add("tls: CA certificate or skip-verify given but TLS is off")
	}
	if c.CACertPEM != "" {
		if _, err := certPool(c.CACertPEM); err != nil {
			add("tls: %v", err)
		}
	}
	if c.DialTimeout < 0 {
		add("dial timeout %v is negative", c.DialTimeout)
	}

	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	return nil
}

func validateBroker(b string) error {
	// A pasted URL ("SASL_SSL://h:9092") is a common mistake; say so
	// rather than "too many colons".
	if strings.Contains(b, "://") {
		return errors.New("want host:port, not a URL")
	}
	host, port, err := net.SplitHostPort(b)
	if err != nil {
		return errors.New("want host:port")
	}
	if host == "" {
		return errors.New("missing host")
	}
	if strings.ContainsAny(host, "/ \t@?#") {
		return errors.New("want host:port, not a URL")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not in 1-65535", port)
	}
	return nil
}

// certPool is the system roots plus the customer's CA, so that adding a
// private CA does not stop public certificates from verifying.
func certPool(caPEM string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("CA certificate: no PEM certificate found")
	}
	return pool, nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: c.TLSInsecureSkipVerify, //nolint:gosec // documented as tests/dev only
	}
	if c.CACertPEM != "" {
		pool, err := certPool(c.CACertPEM)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
