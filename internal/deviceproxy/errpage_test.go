package deviceproxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

func TestPrefersJSON(t *testing.T) {
	tests := []struct {
		accept []string
		want   bool
	}{
		{nil, false},
		{[]string{"*/*"}, false},
		{[]string{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, false}, // a browser
		{[]string{"application/json"}, true},
		{[]string{"application/problem+json"}, true},
		{[]string{"application/json, */*;q=0.1"}, true},
		{[]string{"application/json;q=0.5, text/html"}, false},
		{[]string{"text/html;q=0.5, application/json"}, true},
		{[]string{"application/*"}, true},
		{[]string{"application/json;q=0"}, false},
		{[]string{"text/*;q=0.2", "application/json;q=0.3"}, true},
		{[]string{"APPLICATION/JSON"}, true},
		{[]string{"garbage, ;;, /"}, false},
	}
	for _, tc := range tests {
		if got := prefersJSON(tc.accept); got != tc.want {
			t.Errorf("prefersJSON(%q) = %v, want %v", tc.accept, got, tc.want)
		}
	}
}

// The page never shows what the visitor sent, but the request id does
// reach it: escaping must hold even if a caller's id rule were loosened.
func TestPageEscapes(t *testing.T) {
	p := &Proxy{}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r = r.WithContext(reqinfo.With(r.Context(), `<script>alert(1)</script>`))
	w := httptest.NewRecorder()
	p.writeError(w, r, pageNotFound)
	if body := w.Body.String(); strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;") {
		t.Fatalf("request id not escaped:\n%s", body)
	}
}
