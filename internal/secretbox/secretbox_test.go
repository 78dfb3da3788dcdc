package secretbox

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func testKey(fill byte) []byte { return bytes.Repeat([]byte{fill}, KeySize) }

func mustBox(t *testing.T, key []byte) *Box {
	t.Helper()
	b, err := New(key)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

func TestSealOpen(t *testing.T) {
	box := mustBox(t, testKey(1))
	other := mustBox(t, testKey(2))
	secret := []byte("s3cr3t-password")
	aad := []byte("endpoint:7c1f")
	sealed := box.Seal(secret, aad)

	flip := func(i int) []byte {
		c := bytes.Clone(sealed)
		c[i] ^= 0x01
		return c
	}
	badVersion := bytes.Clone(sealed)
	badVersion[0] = 2

	tests := []struct {
		name    string
		box     *Box
		sealed  []byte
		aad     []byte
		want    []byte
		wantErr error
	}{
		{name: "round trip", box: box, sealed: sealed, aad: aad, want: secret},
		{name: "empty plaintext", box: box, sealed: box.Seal(nil, aad), aad: aad, want: nil},
		{name: "nil aad", box: box, sealed: box.Seal(secret, nil), aad: nil, want: secret},
		{name: "wrong aad", box: box, sealed: sealed, aad: []byte("endpoint:9999"), wantErr: ErrDecrypt},
		{name: "missing aad", box: box, sealed: sealed, aad: nil, wantErr: ErrDecrypt},
		{name: "wrong key", box: other, sealed: sealed, aad: aad, wantErr: ErrDecrypt},
		{name: "tampered nonce", box: box, sealed: flip(1), aad: aad, wantErr: ErrDecrypt},
		{name: "tampered ciphertext", box: box, sealed: flip(1 + nonceSize), aad: aad, wantErr: ErrDecrypt},
		{name: "tampered tag", box: box, sealed: flip(len(sealed) - 1), aad: aad, wantErr: ErrDecrypt},
		{name: "truncated by one", box: box, sealed: sealed[:len(sealed)-1], aad: aad, wantErr: ErrDecrypt},
		{name: "truncated below minimum", box: box, sealed: sealed[:1+nonceSize+15], aad: aad, wantErr: ErrMalformed},
		{name: "empty", box: box, sealed: nil, aad: aad, wantErr: ErrMalformed},
		{name: "bad version", box: box, sealed: badVersion, aad: aad, wantErr: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.box.Open(tt.sealed, tt.aad)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Open error = %v, want %v", err, tt.wantErr)
				}
				if got != nil {
					t.Fatalf("Open returned plaintext %q alongside an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("Open = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSealLayout(t *testing.T) {
	box := mustBox(t, testKey(1))
	a := box.Seal([]byte("x"), nil)
	b := box.Seal([]byte("x"), nil)
	if a[0] != version1 {
		t.Fatalf("version byte = %d, want %d", a[0], version1)
	}
	if want := 1 + nonceSize + 1 + 16; len(a) != want {
		t.Fatalf("sealed length = %d, want %d", len(a), want)
	}
	// Equal plaintexts must not give equal ciphertexts, or a reader of the
	// table could tell which endpoints share a password.
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are identical: nonce reused")
	}
}

func TestNewKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 24, 31, 33, 64} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Errorf("New(%d-byte key) succeeded, want error", n)
		}
	}
}

func TestParseKey(t *testing.T) {
	key := make([]byte, KeySize)
	for i := range key {
		key[i] = byte(0xf0 + i) // high bytes so std and URL alphabets differ (+/ vs -_)
	}
	std := base64.StdEncoding.EncodeToString(key)
	rawURL := base64.RawURLEncoding.EncodeToString(key)
	if std == rawURL+"=" {
		t.Fatal("test key does not exercise the alphabet difference")
	}
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{name: "std", in: std},
		{name: "raw url", in: rawURL},
		{name: "trailing newline", in: std + "\n"},
		{name: "empty", in: "", wantErr: true},
		{name: "blank", in: "  \n", wantErr: true},
		{name: "not base64", in: "this is not base64!!", wantErr: true},
		{name: "16 bytes", in: base64.StdEncoding.EncodeToString(key[:16]), wantErr: true},
		{name: "33 bytes", in: base64.StdEncoding.EncodeToString(append(bytes.Clone(key), 0)), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKey(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseKey succeeded, want error")
				}
				if in := strings.TrimSpace(tt.in); in != "" && strings.Contains(err.Error(), in) {
					t.Fatalf("error %q leaks the key text", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey: %v", err)
			}
			if !bytes.Equal(got, key) {
				t.Fatalf("ParseKey = %x, want %x", got, key)
			}
		})
	}
}
