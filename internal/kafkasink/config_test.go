package kafkasink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestValidate(t *testing.T) {
	valid := func() Config {
		return Config{
			Brokers: []string{"kafka-1.example.com:9092", "10.0.0.7:9093", "[::1]:9094"},
			Topic:   "flock.events_v1-prod",
			SASL:    SASLConfig{Mechanism: MechanismScramSHA512, Username: "u", Password: "p"},
			TLS:     true,
		}
	}
	_, caPEM := selfSigned(t)
	tests := []struct {
		name string
		mod  func(*Config)
		want string // substring of the error; "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"no sasl", func(c *Config) { c.SASL = SASLConfig{} }, ""},
		{"plain", func(c *Config) { c.SASL.Mechanism = MechanismPlain }, ""},
		{"scram-256", func(c *Config) { c.SASL.Mechanism = MechanismScramSHA256 }, ""},
		{"private CA", func(c *Config) { c.CACertPEM = caPEM }, ""},
		{"topic 249", func(c *Config) { c.Topic = strings.Repeat("a", 249) }, ""},
		{"no brokers", func(c *Config) { c.Brokers = nil }, "no brokers"},
		{"broker without port", func(c *Config) { c.Brokers = []string{"kafka"} }, "want host:port"},
		{"broker empty host", func(c *Config) { c.Brokers = []string{":9092"} }, "missing host"},
		{"broker port 0", func(c *Config) { c.Brokers = []string{"kafka:0"} }, "not in 1-65535"},
		{"broker port 70000", func(c *Config) { c.Brokers = []string{"kafka:70000"} }, "not in 1-65535"},
		{"broker port name", func(c *Config) { c.Brokers = []string{"kafka:kafka"} }, "not in 1-65535"},
		{"broker url", func(c *Config) { c.Brokers = []string{"SASL_SSL://kafka:9092"} }, "not a URL"},
		{"empty topic", func(c *Config) { c.Topic = "" }, "topic"},
		{"topic 250", func(c *Config) { c.Topic = strings.Repeat("a", 250) }, "topic"},
		{"topic slash", func(c *Config) { c.Topic = "a/b" }, "topic"},
		{"topic space", func(c *Config) { c.Topic = "a b" }, "topic"},
		{"topic dot", func(c *Config) { c.Topic = "." }, "reserved"},
		{"topic dotdot", func(c *Config) { c.Topic = ".." }, "reserved"},
		{"unknown mechanism", func(c *Config) { c.SASL.Mechanism = "GSSAPI" }, "unknown mechanism"},
		{"lowercase mechanism", func(c *Config) { c.SASL.Mechanism = "plain" }, "unknown mechanism"},
		{"no username", func(c *Config) { c.SASL.Username = "" }, "needs a username"},
		{"no password", func(c *Config) { c.SASL.Password = "" }, "needs a password"},
		{"credentials without mechanism", func(c *Config) { c.SASL.Mechanism = "" }, "without a mechanism"},
		{"CA without TLS", func(c *Config) { c.TLS = false; c.CACertPEM = caPEM }, "TLS is off"},
		{"skip-verify without TLS", func(c *Config) { c.TLS = false; c.TLSInsecureSkipVerify = true }, "TLS is off"},
		{"CA not PEM", func(c *Config) { c.CACertPEM = "not a certificate" }, "no PEM certificate"},
		{"negative dial timeout", func(c *Config) { c.DialTimeout = -time.Second }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mod(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig mentioning %q", err, tt.want)
			}
			if Retryable(err) {
				t.Errorf("Retryable(%v) = true", err)
			}
			if _, oerr := Open(t.Context(), c); !errors.Is(oerr, ErrInvalidConfig) {
				t.Errorf("Open = %v, want ErrInvalidConfig", oerr)
			}
		})
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	err := Config{Topic: "bad topic", SASL: SASLConfig{Mechanism: MechanismPlain}}.Validate()
	for _, want := range []string{"no brokers", "topic", "username", "password"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to mention %q", err, want)
		}
	}
}

func TestConfigDoesNotPrintPassword(t *testing.T) {
	c := Config{Brokers: []string{"k:9092"}, Topic: "t",
		SASL: SASLConfig{Mechanism: MechanismPlain, Username: "alice", Password: "hunter2"}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, c)
		if strings.Contains(out, "hunter2") {
			t.Errorf("%s prints the password: %s", verb, out)
		}
		if !strings.Contains(out, "alice") {
			t.Errorf("%s hides the username too: %s", verb, out)
		}
	}
}

func TestRetryable(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"connection refused", refused, true},
		{"eof", io.EOF, true},
		{"deadline", context.DeadlineExceeded, true},
		{"canceled", context.Canceled, true},
		{"record timeout", kgo.ErrRecordTimeout, true},
		{"not leader", kerr.NotLeaderForPartition, true},
		{"leader not available", kerr.LeaderNotAvailable, true},
		{"timeout after not leader", fmt.Errorf("%w, last err: %w", kgo.ErrRecordTimeout, kerr.NotLeaderForPartition), true},
		{"client closed", kgo.ErrClientClosed, true},
		{"sasl failed", kerr.SaslAuthenticationFailed, false},
		{"timeout after sasl failed", fmt.Errorf("%w, last err: %w", kgo.ErrRecordTimeout, kerr.SaslAuthenticationFailed), false},
		{"unsupported mechanism", kerr.UnsupportedSaslMechanism, false},
		{"topic authorization", kerr.TopicAuthorizationFailed, false},
		{"cluster authorization", kerr.ClusterAuthorizationFailed, false},
		{"unknown topic", kerr.UnknownTopicOrPartition, false},
		{"too large", kerr.MessageTooLarge, false},
		{"invalid record", kerr.InvalidRecord, false},
		{"invalid config", fmt.Errorf("%w: x", ErrInvalidConfig), false},
		{"invalid event", fmt.Errorf("%w: x", ErrInvalidEvent), false},
		{"classified auth", fmt.Errorf("send: %w: %w", ErrAuthentication, io.EOF), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Retryable(tt.err); got != tt.want {
				t.Fatalf("Retryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
