package textclip_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/flock-io/flock-api/internal/textclip"
)

func TestClip(t *testing.T) {
	tests := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{"short", "abc", 10, "abc"},
		{"exact", "abcde", 5, "abcde"},
		{"cut", "abcdef", 4, "abcd"},
		{"zero", "abc", 0, ""},
		{"negative", "abc", -1, ""},
		{"cut inside a rune", "ab€cd", 4, "ab"}, // € is 3 bytes at 2..4
		{"cut after a rune", "ab€cd", 5, "ab€"},
		{"cut inside a 4-byte rune", "a😀", 3, "a"},
		{"invalid byte replaced", "a\xffb", 10, "a\uFFFDb"},
		{"replacement counts in the budget", "a\xffb", 3, "a"},
		{"NUL dropped", "a\x00b", 10, "ab"},
		{"empty", "", 3, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := textclip.Clip(tt.in, tt.n)
			if got != tt.want {
				t.Errorf("Clip(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
			}
			if !utf8.ValidString(got) || len(got) > max(tt.n, 0) || strings.Contains(got, "\x00") {
				t.Errorf("Clip(%q, %d) = %q: invalid or too long", tt.in, tt.n, got)
			}
		})
	}
}

func TestEllipsis(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short enough", 20, "short enough"},
		{"exactly twelve", 14, "exactly twelve"},
		{"much too long a reason", 10, "much to..."},
		{"€€€€€", 10, "€€..."},
	}
	for _, tt := range tests {
		got := textclip.Ellipsis(tt.in, tt.n)
		if got != tt.want || len(got) > tt.n || !utf8.ValidString(got) {
			t.Errorf("Ellipsis(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
