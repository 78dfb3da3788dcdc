package builds

import (
	"strings"
	"testing"
	"time"
)

func TestFormatParseRoundTrip(t *testing.T) {
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	tests := []struct {
		name string
		line Line
		want string // Format's output
	}{
		{"platform, no arch", Line{TS: ts, Service: PlatformService, Text: "build queued"},
			"2024-05-06T07:08:09.123456789Z flock | build queued\n"},
		{"with arch", Line{TS: ts, Service: "web", Arch: "arm64", Text: "STEP 1/3: FROM alpine"},
			"2024-05-06T07:08:09.123456789Z web/arm64 | STEP 1/3: FROM alpine\n"},
		{"text with bars", Line{TS: ts, Service: "web", Arch: "amd64", Text: "a | b | c"},
			"2024-05-06T07:08:09.123456789Z web/amd64 | a | b | c\n"},
		{"text starting with a bar", Line{TS: ts, Service: "web", Text: " | x"},
			"2024-05-06T07:08:09.123456789Z web |  | x\n"},
		{"text with slashes", Line{TS: ts, Service: "api", Arch: "arm", Text: "/usr/local/bin/app -> a/b/c"},
			"2024-05-06T07:08:09.123456789Z api/arm | /usr/local/bin/app -> a/b/c\n"},
		{"unicode", Line{TS: ts, Service: "web", Arch: "riscv64", Text: "héllo wörld ✓ 构建 🚀"},
			"2024-05-06T07:08:09.123456789Z web/riscv64 | héllo wörld ✓ 构建 🚀\n"},
		{"empty text", Line{TS: ts, Service: PlatformService},
			"2024-05-06T07:08:09.123456789Z flock | \n"},
		{"whole second", Line{TS: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), Service: "db", Text: "ok"},
			"2024-01-02T03:04:05Z db | ok\n"},
		{"other zone becomes UTC", Line{TS: time.Date(2024, 1, 2, 5, 4, 5, 500, time.FixedZone("X", 2*3600)), Service: "db", Text: "tz"},
			"2024-01-02T03:04:05.0000005Z db | tz\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Format(tt.line)
			if s != tt.want {
				t.Fatalf("Format = %q, want %q", s, tt.want)
			}
			got, err := Parse(strings.TrimSuffix(s, "\n"), 42)
			if err != nil {
				t.Fatalf("Parse(%q): %v", s, err)
			}
			if got.Seq != 42 || !got.TS.Equal(tt.line.TS) || got.Service != tt.line.Service ||
				got.Arch != tt.line.Arch || got.Text != tt.line.Text {
				t.Fatalf("Parse(Format(%+v)) = %+v", tt.line, got)
			}
			if Format(got) != s {
				t.Fatalf("Format(Parse(s)) = %q, want %q", Format(got), s)
			}
		})
	}
}

func TestParseRefusesGarbage(t *testing.T) {
	for _, s := range []string{
		"",
		"garbage",
		"not-a-time web | text",
		"2024-05-06 web | text",                     // date only
		"2024-05-06T07:08:09Z",                      // no space, no separator
		"2024-05-06T07:08:09Z web/amd64 text",       // no separator
		"2024-05-06T07:08:09Z web|text",             // separator without spaces
		"2024-13-06T07:08:09Z web | month 13",       // bad month
		" 2024-05-06T07:08:09Z web | leading space", // empty time
	} {
		if l, err := Parse(s, 7); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", s, l)
		} else if !strings.Contains(err.Error(), "line 7") {
			t.Errorf("Parse(%q) error %q does not name the line", s, err)
		}
	}
}

func TestMasker(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		in      string
		want    string
	}{
		{"one secret", []string{"s3cr3t-token"}, "login with s3cr3t-token ok", "login with *** ok"},
		{"every occurrence", []string{"hunter2!"}, "hunter2!hunter2! and hunter2!", "****** and ***"},
		{"several secrets", []string{"alpha-key", "beta-key"}, "a=alpha-key b=beta-key", "a=*** b=***"},
		{"no secret in text", []string{"s3cr3t-token"}, "nothing to hide", "nothing to hide"},
		{"exactly 4 bytes masked", []string{"abcd"}, "xabcdx", "x***x"},
		{"short secrets left out", []string{"", "a", "ab", "abc"}, "a ab abc", "a ab abc"},
		{"short left out, long kept", []string{"abc", "abcdef"}, "abc abcdef", "abc ***"},
		{"unicode secret", []string{"пароль"}, "пароль=пароль", "***=***"},
		{"3-byte unicode is 1 rune but 3 bytes: left out", []string{"构"}, "构建", "构建"},
		{"4 bytes in 2 runes masked", []string{"éé"}, "xééx", "x***x"},
		{"empty text", []string{"s3cr3t"}, "", ""},
		{"no secrets", nil, "s3cr3t", "s3cr3t"},
		// Overlapping secrets: no byte of either may show.
		{"shorter secret a prefix of a longer, short first", []string{"abcd", "abcd1234efgh"}, "x=abcd1234efgh", "x=***"},
		{"shorter secret a prefix of a longer, long first", []string{"abcd1234efgh", "abcd"}, "x=abcd1234efgh", "x=***"},
		{"shorter secret a suffix of a longer", []string{"efgh", "abcd1234efgh"}, "x=abcd1234efgh", "x=***"},
		{"shorter secret inside a longer", []string{"1234", "abcd1234efgh"}, "x=abcd1234efgh y=1234", "x=*** y=***"},
		{"secrets overlapping partly", []string{"abcdef", "cdefgh"}, "x=abcdefgh", "x=***"},
		{"secrets overlapping partly, other order", []string{"cdefgh", "abcdef"}, "x=abcdefgh", "x=***"},
		{"secret overlapping itself", []string{"abab"}, "x=ababab", "x=***"},
		{"two stretches around plain text", []string{"abcdef", "cdefgh", "s3cr3t"}, "abcdefgh-s3cr3t", "***-***"},
		{"same secret twice", []string{"s3cr3t", "s3cr3t"}, "s3cr3t", "***"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewMasker(tt.secrets...).Mask(tt.in); got != tt.want {
				t.Fatalf("NewMasker(%q).Mask(%q) = %q, want %q", tt.secrets, tt.in, got, tt.want)
			}
		})
	}
}

func TestMaskerNil(t *testing.T) {
	var m *Masker
	if got := m.Mask("s3cr3t | text"); got != "s3cr3t | text" {
		t.Fatalf("nil Masker changed the text: %q", got)
	}
	if got := (&Masker{}).Mask("s3cr3t"); got != "s3cr3t" {
		t.Fatalf("zero Masker changed the text: %q", got)
	}
}
