package kafkasink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Users of the test cluster, one per mechanism: kfake keys users by
// (mechanism, name), and a SCRAM credential only answers its own hash.
var testUsers = map[string]SASLConfig{
	MechanismPlain:       {Mechanism: MechanismPlain, Username: "plain-user", Password: "plain-pass"},
	MechanismScramSHA256: {Mechanism: MechanismScramSHA256, Username: "scram256-user", Password: "scram256-pass"},
	MechanismScramSHA512: {Mechanism: MechanismScramSHA512, Username: "scram512-user", Password: "scram512-pass"},
}

// newCluster starts a kfake cluster with SASL and a superuser per mechanism.
// Auto-creation of topics stays off, as on a sensibly run customer cluster.
func newCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	base := []kfake.Opt{kfake.NumBrokers(1), kfake.EnableSASL()}
	for m, u := range testUsers {
		base = append(base, kfake.Superuser(m, u.Username, u.Password))
	}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func openSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	s, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// consume reads n records from the start of cfg's topic with its own client
// and credentials, as the customer's consumer would.
func consume(t *testing.T, cfg Config, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append(connOpts(t, cfg),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)...)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records before the deadline", len(recs), n)
		}
		for _, fe := range fs.Errors() {
			t.Fatalf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
		}
		recs = append(recs, fs.Records()...)
	}
	return recs
}

func testEvents() []Event {
	t0 := time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.FixedZone("CET", 3600))
	return []Event{
		{
			ID: "evt-1", Source: "/fleets/f1/devices/dev-42", Type: "io.flock.device.online",
			Subject: "dev-42", Time: t0, Key: []byte("dev-42"), Data: []byte(`{"online":true}`),
		},
		{
			// No subject: ce_subject must be absent, not empty.
			ID: "evt-2", Source: "/fleets/f1/devices/dev-42", Type: "io.flock.device.offline",
			Time: t0.Add(time.Second), Key: []byte("dev-42"), Data: []byte(`{"online":false}`),
		},
	}
}

func headerMap(t *testing.T, r *kgo.Record) map[string]string {
	t.Helper()
	m := make(map[string]string, len(r.Headers))
	for _, h := range r.Headers {
		if _, dup := m[h.Key]; dup {
			t.Errorf("record %q: header %q appears twice", r.Key, h.Key)
		}
		m[h.Key] = string(h.Value)
	}
	return m
}

func TestSendBinaryMode(t *testing.T) {
	mechs := []string{MechanismPlain, MechanismScramSHA256, MechanismScramSHA512}
	topics := make([]string, len(mechs))
	for i, m := range mechs {
		topics[i] = "events-" + strings.ToLower(m)
	}
	c := newCluster(t, kfake.SeedTopics(3, topics...))

	for i, mech := range mechs {
		t.Run(mech, func(t *testing.T) {
			cfg := Config{Brokers: c.ListenAddrs(), Topic: topics[i], SASL: testUsers[mech]}
			s := openSink(t, cfg)
			if err := s.Ping(t.Context()); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			evs := testEvents()
			if err := s.Send(t.Context(), evs...); err != nil {
				t.Fatalf("Send: %v", err)
			}

			recs := consume(t, cfg, len(evs))
			if len(recs) != len(evs) {
				t.Fatalf("consumed %d records, want %d", len(recs), len(evs))
			}
			// Same key, so same partition, so the order of Send.
			if recs[0].Partition != recs[1].Partition {
				t.Errorf("one key's events went to partitions %d and %d", recs[0].Partition, recs[1].Partition)
			}
			for j, ev := range evs {
				r := recs[j]
				if !bytes.Equal(r.Key, ev.Key) {
					t.Errorf("record %d key = %q, want %q", j, r.Key, ev.Key)
				}
				if !bytes.Equal(r.Value, ev.Data) {
					t.Errorf("record %d value = %q, want %q", j, r.Value, ev.Data)
				}
				want := map[string]string{
					"ce_specversion": "1.0",
					"ce_id":          ev.ID,
					"ce_source":      ev.Source,
					"ce_type":        ev.Type,
					"ce_time":        ev.Time.UTC().Format(time.RFC3339Nano),
					"content-type":   "application/json",
				}
				if ev.Subject != "" {
					want["ce_subject"] = ev.Subject
				}
				got := headerMap(t, r)
				for k, v := range want {
					if got[k] != v {
						t.Errorf("record %d header %s = %q, want %q", j, k, got[k], v)
					}
				}
				for k, v := range got {
					if _, ok := want[k]; !ok {
						t.Errorf("record %d has unexpected header %s = %q", j, k, v)
					}
				}
				if ts, err := time.Parse(time.RFC3339, got["ce_time"]); err != nil || !ts.Equal(ev.Time) {
					t.Errorf("record %d ce_time %q parses to %v, %v; want %v", j, got["ce_time"], ts, err, ev.Time)
				}
			}
		})
	}
}

func TestSendEmptyDataIsNotATombstone(t *testing.T) {
	c := newCluster(t, kfake.SeedTopics(1, "events"))
	cfg := Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: testUsers[MechanismScramSHA256]}
	s := openSink(t, cfg)
	if err := s.Send(t.Context(), Event{ID: "e", Source: "/s", Type: "t", Key: []byte("k")}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	r := consume(t, cfg, 1)[0]
	if r.Value == nil {
		t.Error("value is null (a tombstone), want empty")
	}
	if ct, ok := headerMap(t, r)["content-type"]; ok {
		t.Errorf("content-type %q set for an event without data", ct)
	}
	if _, ok := headerMap(t, r)["ce_time"]; ok {
		t.Error("ce_time set for an event without time")
	}
}

func TestSendWrongPassword(t *testing.T) {
	c := newCluster(t, kfake.SeedTopics(1, "events"))
	for _, mech := range []string{MechanismPlain, MechanismScramSHA256, MechanismScramSHA512} {
		t.Run(mech, func(t *testing.T) {
			sc := testUsers[mech]
			sc.Password = "wrong"
			s := openSink(t, Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: sc})
			start := time.Now()
			err := s.Send(t.Context(), testEvents()...)
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Send took %v to report bad credentials", d)
			}
			if err == nil {
				t.Fatal("Send with a wrong password succeeded")
			}
			if !errors.Is(err, ErrAuthentication) {
				t.Errorf("Send error %q does not wrap ErrAuthentication", err)
			}
			if Retryable(err) {
				t.Errorf("Retryable(%q) = true, want false", err)
			}
			if strings.Contains(err.Error(), "wrong") {
				t.Errorf("error %q leaks the password", err)
			}
			if err := s.Ping(t.Context()); !errors.Is(err, ErrAuthentication) || Retryable(err) {
				t.Errorf("Ping = %v, want a non-retryable authentication error", err)
			}
		})
	}
}

// TestSendAuthenticationFailedResponse answers bad credentials the way Kafka
// does (a SaslAuthenticate response with SASL_AUTHENTICATION_FAILED) rather
// than the way kfake does (closing the connection), for PLAIN, whose password
// the control function can check.
func TestSendAuthenticationFailedResponse(t *testing.T) {
	c := newCluster(t, kfake.SeedTopics(1, "events"))
	user := testUsers[MechanismPlain]
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.SASLAuthenticateRequest)
		if string(req.SASLAuthBytes) == "\x00"+user.Username+"\x00"+user.Password {
			return nil, nil, false // kfake authenticates it
		}
		resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		resp.ErrorMessage = kmsg.StringPtr("Authentication failed: Invalid username or password")
		return resp, nil, true
	})

	bad := user
	bad.Password = "wrong"
	s := openSink(t, Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: bad})
	start := time.Now()
	err := s.Send(t.Context(), testEvents()...)
	if !errors.Is(err, ErrAuthentication) || !errors.Is(err, kerr.SaslAuthenticationFailed) || Retryable(err) {
		t.Fatalf("Send = %v, want a non-retryable ErrAuthentication wrapping SASL_AUTHENTICATION_FAILED", err)
	}
	// The point of pinging first: not the 15s delivery timeout.
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Send took %v to report bad credentials", d)
	}

	// The right password still works through the same control.
	if err := openSink(t, Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: user}).Send(t.Context(), testEvents()...); err != nil {
		t.Fatalf("Send with the right password: %v", err)
	}
}

func TestSendUnknownTopic(t *testing.T) {
	c := newCluster(t, kfake.SeedTopics(1, "events"))
	cfg := Config{Brokers: c.ListenAddrs(), Topic: "no-such-topic", SASL: testUsers[MechanismScramSHA256]}
	s := openSink(t, cfg)
	err := s.Send(t.Context(), testEvents()...)
	if err == nil {
		t.Fatal("Send to a missing topic succeeded")
	}
	if !errors.Is(err, ErrUnknownTopic) {
		t.Errorf("Send error %q does not wrap ErrUnknownTopic", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `"no-such-topic"`) || !strings.Contains(msg, "topic does not exist") {
		t.Errorf("Send error %q does not name the missing topic", msg)
	}
	if Retryable(err) {
		t.Errorf("Retryable(%q) = true, want false", err)
	}

	// The sink must not have created the topic as a side effect.
	cl, err := kgo.NewClient(connOpts(t, cfg)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(cfg.Topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(t.Context(), cl)
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	if len(resp.Topics) != 1 || resp.Topics[0].ErrorCode == 0 {
		t.Errorf("topic %q exists after Send", cfg.Topic)
	}
}

func TestSendTopicNotAuthorized(t *testing.T) {
	c := newCluster(t,
		kfake.SeedTopics(1, "events"),
		kfake.EnableACLs(),
		// A user that may see the topic but not write to it.
		kfake.User(MechanismScramSHA256, "reader", "reader-pass",
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "events", Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationDescribe, Allow: true},
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "events", Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationRead, Allow: true},
		),
	)
	s := openSink(t, Config{Brokers: c.ListenAddrs(), Topic: "events",
		SASL: SASLConfig{Mechanism: MechanismScramSHA256, Username: "reader", Password: "reader-pass"}})
	err := s.Send(t.Context(), testEvents()...)
	if err == nil {
		t.Fatal("Send without write permission succeeded")
	}
	if !errors.Is(err, ErrNotAuthorized) {
		t.Errorf("Send error %q does not wrap ErrNotAuthorized", err)
	}
	if Retryable(err) {
		t.Errorf("Retryable(%q) = true, want false", err)
	}
}

func TestSendTooLarge(t *testing.T) {
	c := newCluster(t, kfake.SeedTopics(1, "events"))
	s := openSink(t, Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: testUsers[MechanismPlain]})
	big := append(append([]byte(`"`), bytes.Repeat([]byte("x"), 2<<20)...), '"')
	err := s.Send(t.Context(), Event{ID: "e", Source: "/s", Type: "t", Data: big})
	if !errors.Is(err, ErrTooLarge) || Retryable(err) {
		t.Fatalf("Send of 2 MiB = %v, want a non-retryable ErrTooLarge", err)
	}
}

func TestSendInvalidEvent(t *testing.T) {
	ok := Event{ID: "e", Source: "/s", Type: "t", Data: []byte(`{}`)}
	tests := []struct {
		name string
		mod  func(*Event)
	}{
		{"no id", func(e *Event) { e.ID = "" }},
		{"no source", func(e *Event) { e.Source = "" }},
		{"no type", func(e *Event) { e.Type = "" }},
		{"data not json", func(e *Event) { e.Data = []byte("{not json") }},
	}
	// No cluster: an invalid event must be refused before any network I/O.
	s := openSink(t, Config{Brokers: []string{"127.0.0.1:1"}, Topic: "events"})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := ok
			tt.mod(&ev)
			err := s.Send(t.Context(), ok, ev)
			if !errors.Is(err, ErrInvalidEvent) || Retryable(err) {
				t.Fatalf("Send = %v, want a non-retryable ErrInvalidEvent", err)
			}
		})
	}
	if err := s.Send(t.Context()); err != nil {
		t.Errorf("Send of no events = %v, want nil", err)
	}
}

func TestSendDeadCluster(t *testing.T) {
	// A port nobody listens on: connections are refused, as while a
	// broker restarts.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cfg := Config{Brokers: []string{addr}, Topic: "events", SASL: testUsers[MechanismPlain]}
	cfg.deliveryTimeout = time.Second
	s := openSink(t, cfg)
	err = s.Send(t.Context(), testEvents()...)
	if err == nil {
		t.Fatal("Send to a dead cluster succeeded")
	}
	if !Retryable(err) {
		t.Errorf("Retryable(%q) = false, want true", err)
	}
	if errors.Is(err, ErrAuthentication) {
		t.Errorf("refused connection reported as an authentication failure: %v", err)
	}
}

func TestSendLeaderUnavailable(t *testing.T) {
	c := newCluster(t, kfake.SeedTopics(1, "events"))
	// Every produce is refused as during a leader election that does not
	// end: the delivery timeout must end Send, and the error be retryable.
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			st.TopicID = rt.TopicID // Produce v13+ names topics by id
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotLeaderForPartition.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	cfg := Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: testUsers[MechanismScramSHA256]}
	cfg.deliveryTimeout = time.Second
	err := openSink(t, cfg).Send(t.Context(), testEvents()...)
	if !errors.Is(err, ErrTimeout) || !Retryable(err) {
		t.Fatalf("Send = %v, want a retryable ErrTimeout", err)
	}
}

func TestSendContextCanceled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := openSink(t, Config{Brokers: []string{addr}, Topic: "events"})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err = s.Send(ctx, testEvents()...)
	if !errors.Is(err, context.Canceled) || !Retryable(err) {
		t.Fatalf("Send with a canceled context = %v, want a retryable context.Canceled", err)
	}
}

// selfSigned returns a server certificate for 127.0.0.1 and its PEM, which
// doubles as the CA a customer would paste into CACertPEM.
func selfSigned(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestSendTLS(t *testing.T) {
	cert, caPEM := selfSigned(t)
	c := newCluster(t, kfake.SeedTopics(1, "events"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	base := Config{Brokers: c.ListenAddrs(), Topic: "events", SASL: testUsers[MechanismScramSHA512], TLS: true}

	t.Run("private CA", func(t *testing.T) {
		cfg := base
		cfg.CACertPEM = caPEM
		if err := openSink(t, cfg).Send(t.Context(), testEvents()[0]); err != nil {
			t.Fatalf("Send: %v", err)
		}
		if r := consume(t, cfg, 1)[0]; string(r.Value) != `{"online":true}` {
			t.Errorf("value = %q", r.Value)
		}
	})
	t.Run("unknown CA", func(t *testing.T) {
		cfg := base
		cfg.deliveryTimeout = 2 * time.Second
		err := openSink(t, cfg).Send(t.Context(), testEvents()[0])
		if !errors.Is(err, ErrTLS) || Retryable(err) {
			t.Fatalf("Send = %v, want a non-retryable ErrTLS", err)
		}
	})
}

// connOpts is what a customer's consumer needs to reach the test cluster.
func connOpts(t *testing.T, cfg Config) []kgo.Opt {
	t.Helper()
	opts, err := cfg.connOpts()
	if err != nil {
		t.Fatalf("connOpts: %v", err)
	}
	return opts
}
