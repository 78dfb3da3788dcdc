package kafkasink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Kinds of Send failure. A Send error wraps one of them (when recognised)
// and the underlying franz-go error, so both errors.Is(err, ErrAuthentication)
// and errors.Is(err, kerr.SaslAuthenticationFailed) hold.
var (
	ErrAuthentication = errors.New("SASL authentication failed (check mechanism, username and password)")
	ErrNotAuthorized  = errors.New("not authorized (check the user's ACLs on the topic)")
	ErrUnknownTopic   = errors.New("topic does not exist")
	ErrTooLarge       = errors.New("event too large for the cluster")
	ErrRejected       = errors.New("rejected by the cluster")
	ErrTLS            = errors.New("TLS handshake failed")
	ErrTimeout        = errors.New("timed out")
)

// permanent are franz-go errors that a retry cannot fix: the customer must
// change credentials, ACLs, topics or cluster settings first.
var permanent = []struct {
	kind error
	errs []error
}{
	{ErrAuthentication, []error{kerr.SaslAuthenticationFailed, kerr.UnsupportedSaslMechanism, kerr.IllegalSaslState}},
	{ErrNotAuthorized, []error{kerr.TopicAuthorizationFailed, kerr.ClusterAuthorizationFailed, kerr.TransactionalIDAuthorizationFailed}},
	// kgo already re-reads metadata several times (UnknownTopicRetries)
	// before it fails records with these, so by the time Send sees one the
	// topic is missing, not merely new.
	{ErrUnknownTopic, []error{kerr.UnknownTopicOrPartition, kerr.UnknownTopicID, kerr.InvalidTopicException}},
	{ErrTooLarge, []error{kerr.MessageTooLarge, kerr.RecordListTooLarge}},
	{ErrRejected, []error{
		kerr.InvalidRecord, kerr.InvalidTimestamp, kerr.PolicyViolation, kerr.InvalidRequiredAcks,
		kerr.UnsupportedVersion, kerr.UnsupportedForMessageFormat, kerr.UnsupportedCompressionType,
	}},
}

// classify returns the kind of err (nil if unrecognised) and whether a later
// attempt may succeed.
func classify(err error) (kind error, retryable bool) {
	if err == nil {
		return nil, false
	}
	if errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrInvalidEvent) {
		return nil, false
	}
	for _, kind := range []error{ErrAuthentication, ErrNotAuthorized, ErrUnknownTopic, ErrTooLarge, ErrRejected, ErrTLS} {
		if errors.Is(err, kind) { // already classified by a Sink
			return kind, false
		}
	}
	// Checked before timeouts: kgo reports a record that timed out while
	// failing to authenticate as ErrRecordTimeout wrapping the last error.
	for _, p := range permanent {
		for _, e := range p.errs {
			if errors.Is(err, e) {
				return p.kind, false
			}
		}
	}
	if isTLSConfigErr(err) {
		return ErrTLS, false
	}
	if errors.Is(err, kgo.ErrRecordTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return ErrTimeout, true
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return ErrTimeout, true
	}
	// Everything else — refused or reset connections, leader changes,
	// retriable broker errors, a cancelled context, a closed sink — did
	// not fail because of the event or the endpoint's settings. Unknown
	// errors are retried too: redelivering with backoff is better than
	// dropping an event over an error nobody anticipated.
	return nil, true
}

// isTLSConfigErr reports certificate and protocol mismatches, which come
// from settings (wrong CA, wrong host, TLS against a plain-text listener)
// and do not heal by themselves.
func isTLSConfigErr(err error) bool {
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return true
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.HostnameError](err); ok {
		return true
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return true
	}
	return false
}

// Retryable reports whether a failed Send (or Ping, or Open) may succeed if
// tried again later unchanged: yes for network trouble, timeouts and leader
// changes; no for authentication or authorization failures, a missing topic,
// an oversized or invalid event, and invalid configuration.
func Retryable(err error) bool {
	_, r := classify(err)
	return r
}

// errSASLHangup explains an authentication failure seen only as a closed
// connection; see saslWatch.
var errSASLHangup = errors.New("the broker closed the connection during SASL authentication")

func (s *Sink) wrapErr(prefix string, err error) error {
	kind, retryable := classify(err)
	if retryable && s.sasl != nil && s.sasl.hungUp.Load() && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w: %w: %w", prefix, ErrAuthentication, errSASLHangup, err)
	}
	if kind != nil {
		return fmt.Errorf("%s: %w: %w", prefix, kind, err)
	}
	return fmt.Errorf("%s: %w", prefix, err)
}
