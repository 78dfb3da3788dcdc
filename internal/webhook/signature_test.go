package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The test vector published with the Standard Webhooks specification.
const (
	vectorSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTS     = 1614265330
	vectorBody   = `{"test": 2432232314}`
	vectorSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

// specCheck is a receiver's verification written from the specification's
// text, independently of Verify and Sign, so that a bug shared by both
// cannot make the tests pass: every secret must have its own v1 entry.
func specCheck(secrets []string, h http.Header, body []byte) error {
	id, ts := h.Get("Webhook-Id"), h.Get("Webhook-Timestamp")
	entries := strings.Split(h.Get("Webhook-Signature"), " ")
	if len(entries) != len(secrets) {
		return fmt.Errorf("%d signatures for %d secrets: %q", len(entries), len(secrets), h.Get("Webhook-Signature"))
	}
	for _, secret := range secrets {
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		if err != nil {
			return err
		}
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id + "." + ts + "." + string(body)))
		want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
		found := false
		for _, e := range entries {
			found = found || e == want
		}
		if !found {
			return fmt.Errorf("no entry %s for secret %.10s... in %q", want, secret, entries)
		}
	}
	return nil
}

func TestSpecTestVector(t *testing.T) {
	got, err := Sign([]string{vectorSecret}, vectorID, time.Unix(vectorTS, 0), []byte(vectorBody))
	if err != nil {
		t.Fatal(err)
	}
	if got != vectorSig {
		t.Fatalf("Sign = %q, want the spec's %q", got, vectorSig)
	}
	h := http.Header{}
	h.Set("webhook-id", vectorID)
	h.Set("webhook-timestamp", strconv.Itoa(vectorTS))
	h.Set("webhook-signature", vectorSig)
	if err := Verify(vectorSecret, h, []byte(vectorBody), time.Unix(vectorTS+10, 0), 0); err != nil {
		t.Fatalf("Verify(spec vector) = %v", err)
	}
	if err := specCheck([]string{vectorSecret}, h, []byte(vectorBody)); err != nil {
		t.Fatalf("the test's own check rejects the spec vector: %v", err)
	}
}

func mustSecret(t *testing.T) string {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewSecret(t *testing.T) {
	a, b := mustSecret(t), mustSecret(t)
	if a == b {
		t.Fatalf("two secrets are equal: %s", a)
	}
	for _, s := range []string{a, b} {
		enc, ok := strings.CutPrefix(s, "whsec_")
		if !ok {
			t.Fatalf("%q lacks the whsec_ prefix", s)
		}
		key, err := base64.StdEncoding.DecodeString(enc)
		if err != nil || len(key) != 24 {
			t.Fatalf("%q decodes to %d bytes, %v; want 24", s, len(key), err)
		}
	}
}

func TestSignErrors(t *testing.T) {
	good := mustSecret(t)
	for _, tc := range []struct {
		name    string
		secrets []string
		id      string
		want    error
	}{
		{"no secrets", nil, "msg_1", ErrInvalidSecret},
		{"no prefix", []string{strings.TrimPrefix(good, "whsec_")}, "msg_1", ErrInvalidSecret},
		{"not base64", []string{"whsec_!!!!"}, "msg_1", ErrInvalidSecret},
		{"short key", []string{"whsec_" + base64.StdEncoding.EncodeToString([]byte("short"))}, "msg_1", ErrInvalidSecret},
		{"second secret bad", []string{good, "whsec_"}, "msg_1", ErrInvalidSecret},
		{"empty id", []string{good}, "", nil},
		{"id with newline", []string{good}, "msg\r\nX-Evil: 1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Sign(tc.secrets, tc.id, time.Now(), []byte("{}"))
			if err == nil {
				t.Fatal("Sign succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	oldSecret, newSecret, otherSecret := mustSecret(t), mustSecret(t), mustSecret(t)
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"specversion":"1.0","type":"io.flock.device.online"}`)

	signed := func(secrets []string, ts time.Time) http.Header {
		t.Helper()
		sig, err := Sign(secrets, "msg_1", ts, body)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("webhook-id", "msg_1")
		h.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
		h.Set("webhook-signature", sig)
		return h
	}
	with := func(h http.Header, key, value string) http.Header {
		h = h.Clone()
		if value == "" {
			h.Del(key)
		} else {
			h.Set(key, value)
		}
		return h
	}
	one := signed([]string{newSecret}, now)
	rotating := signed([]string{oldSecret, newSecret}, now)

	for _, tc := range []struct {
		name   string
		secret string
		header http.Header
		body   []byte
		want   error // nil: verifies
	}{
		{"good", newSecret, one, body, nil},
		{"wrong secret", otherSecret, one, body, ErrNoMatchingSignature},
		{"tampered body", newSecret, one, []byte(strings.Replace(string(body), "online", "offline", 1)), ErrNoMatchingSignature},
		{"tampered id", newSecret, with(one, "webhook-id", "msg_2"), body, ErrNoMatchingSignature},
		{"tampered timestamp", newSecret, with(one, "webhook-timestamp", strconv.FormatInt(now.Unix()+1, 10)), body, ErrNoMatchingSignature},
		{"stale timestamp", newSecret, signed([]string{newSecret}, now.Add(-6*time.Minute)), body, ErrTimestamp},
		{"future timestamp", newSecret, signed([]string{newSecret}, now.Add(6*time.Minute)), body, ErrTimestamp},
		{"within tolerance", newSecret, signed([]string{newSecret}, now.Add(-4*time.Minute)), body, nil},
		{"timestamp not an integer", newSecret, with(one, "webhook-timestamp", "yesterday"), body, ErrTimestamp},
		{"rotation: old secret", oldSecret, rotating, body, nil},
		{"rotation: new secret", newSecret, rotating, body, nil},
		{"rotation: neither", otherSecret, rotating, body, ErrNoMatchingSignature},
		{"unknown versions ignored", newSecret, with(one, "webhook-signature", "v1a,AAAA v2,"+strings.TrimPrefix(one.Get("webhook-signature"), "v1,")+" junk "+one.Get("webhook-signature")), body, nil},
		{"only unknown versions", newSecret, with(one, "webhook-signature", "v2,"+strings.TrimPrefix(one.Get("webhook-signature"), "v1,")), body, ErrNoMatchingSignature},
		{"missing id", newSecret, with(one, "webhook-id", ""), body, ErrMissingHeader},
		{"missing timestamp", newSecret, with(one, "webhook-timestamp", ""), body, ErrMissingHeader},
		{"missing signature", newSecret, with(one, "webhook-signature", ""), body, ErrMissingHeader},
		{"invalid secret", "not-a-secret", one, body, ErrInvalidSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(tc.secret, tc.header, tc.body, now, 5*time.Minute)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}

	// The test's own implementation must agree with Sign on rotation.
	if err := specCheck([]string{oldSecret, newSecret}, rotating, body); err != nil {
		t.Fatal(err)
	}
}
