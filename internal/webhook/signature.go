package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	// SecretPrefix marks a Standard Webhooks secret, so that a secret pasted
	// in the wrong place is recognisable as one.
	SecretPrefix = "whsec_"

	// DefaultTolerance is how far a receiver should accept webhook-timestamp
	// from its own clock: long enough for clock skew and slow networks, short
	// enough that a captured request is soon useless.
	DefaultTolerance = 5 * time.Minute

	// The spec recommends keys of 24 to 64 bytes: shorter keys are guessable,
	// and there is no benefit past SHA-256's block size.
	minKeyBytes = 24
	maxKeyBytes = 64
)

var (
	// ErrInvalidSecret is returned for a secret that is not "whsec_" followed
	// by the base64 of 24 to 64 bytes.
	ErrInvalidSecret = errors.New("invalid webhook secret")
	// ErrMissingHeader is returned by Verify when a webhook-* header is absent.
	ErrMissingHeader = errors.New("missing webhook header")
	// ErrTimestamp is returned by Verify for a webhook-timestamp that is not
	// an integer or is outside the tolerance.
	ErrTimestamp = errors.New("webhook timestamp rejected")
	// ErrNoMatchingSignature is returned by Verify when no v1 signature
	// matches the secret: the wrong secret, or a tampered message.
	ErrNoMatchingSignature = errors.New("no matching webhook signature")
)

// NewSecret returns a fresh "whsec_..." secret (24 random bytes).
func NewSecret() (string, error) {
	key := make([]byte, minKeyBytes)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("webhook: generate secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// parseSecret returns the HMAC key of a "whsec_..." secret.
func parseSecret(secret string) ([]byte, error) {
	enc, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: does not start with %q", ErrInvalidSecret, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		// The decoder's error carries an offset into the secret, never the
		// secret itself, so it is safe to pass on.
		return nil, fmt.Errorf("%w: not base64 after %q: %w", ErrInvalidSecret, SecretPrefix, err)
	}
	if len(key) < minKeyBytes || len(key) > maxKeyBytes {
		return nil, fmt.Errorf("%w: key is %d bytes, want %d to %d", ErrInvalidSecret, len(key), minKeyBytes, maxKeyBytes)
	}
	return key, nil
}

// mac computes HMAC-SHA256 over "<id>.<timestamp>.<body>" without copying
// the body into a joined buffer, since bodies can be large.
func mac(key []byte, id, ts string, body []byte) []byte {
	var h hash.Hash = hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Sign returns the webhook-signature header value for body signed with every
// secret (v1,... separated by spaces).
func Sign(secrets []string, id string, ts time.Time, body []byte) (string, error) {
	if len(secrets) == 0 {
		return "", fmt.Errorf("webhook: sign: %w: no secrets", ErrInvalidSecret)
	}
	// The id is part of the signed content and a header value; one the
	// receiver cannot read back unambiguously would never verify.
	if id == "" || strings.ContainsAny(id, " \t\r\n") {
		return "", fmt.Errorf("webhook: sign: message id %q is empty or contains whitespace", id)
	}
	tsText := strconv.FormatInt(ts.Unix(), 10)
	sigs := make([]string, 0, len(secrets))
	for i, s := range secrets {
		key, err := parseSecret(s)
		if err != nil {
			return "", fmt.Errorf("webhook: sign: secret %d of %d: %w", i+1, len(secrets), err)
		}
		sigs = append(sigs, "v1,"+base64.StdEncoding.EncodeToString(mac(key, id, tsText, body)))
	}
	return strings.Join(sigs, " "), nil
}

// Verify checks a received message the way a receiver should: one of the v1
// signatures in webhook-signature matches secret, and webhook-timestamp is
// within tolerance of now in either direction (DefaultTolerance when
// tolerance is not positive). It is the reference for customers' receivers.
func Verify(secret string, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	key, err := parseSecret(secret)
	if err != nil {
		return fmt.Errorf("webhook: verify: %w", err)
	}
	id := header.Get("webhook-id")
	tsText := header.Get("webhook-timestamp")
	// A proxy may have split a long header into several fields; all of them
	// carry candidate signatures.
	sigs := strings.Join(header.Values("webhook-signature"), " ")
	for _, h := range [...]struct{ name, value string }{{"webhook-id", id}, {"webhook-timestamp", tsText}, {"webhook-signature", sigs}} {
		if strings.TrimSpace(h.value) == "" {
			return fmt.Errorf("webhook: verify: %w: %s", ErrMissingHeader, h.name)
		}
	}

	secs, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook: verify: %w: %q is not unix seconds", ErrTimestamp, tsText)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	sent := time.Unix(secs, 0)
	if age := now.Sub(sent); age > tolerance {
		return fmt.Errorf("webhook: verify: %w: signed %s ago, tolerance %s", ErrTimestamp, age.Truncate(time.Second), tolerance)
	} else if -age > tolerance {
		return fmt.Errorf("webhook: verify: %w: signed %s in the future, tolerance %s", ErrTimestamp, (-age).Truncate(time.Second), tolerance)
	}

	// The timestamp is signed as the header text, not as a re-formatted
	// integer, so that the receiver computes exactly what the sender did.
	want := mac(key, id, tsText, body)
	for _, entry := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue // other schemes (v1a...) are for receivers that know them
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			continue
		}
		if hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("webhook: verify: %w", ErrNoMatchingSignature)
}
