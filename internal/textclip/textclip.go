// Package textclip cuts text to a byte budget without breaking it: what it
// returns is valid UTF-8 without NULs (text PostgreSQL stores, a WebSocket
// close reason may carry) and never longer than asked.
package textclip

import (
	"math"
	"strings"
	"unicode/utf8"
)

// Clip is s made valid (invalid bytes become U+FFFD, NULs are dropped) and
// cut at a rune boundary to at most n bytes.
func Clip(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if len(s) <= n {
		return s
	}
	n = max(n, 0)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Ellipsis is Clip with "..." in place of what is cut.
func Ellipsis(s string, n int) string {
	if full := Clip(s, math.MaxInt); len(full) <= n {
		return full
	}
	return Clip(s, n-3) + "..."
}
