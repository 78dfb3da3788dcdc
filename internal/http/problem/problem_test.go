package problem_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

func TestWriteMapsErrors(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
		wantDetail string
	}{
		{"problem error", problem.Errorf(http.StatusConflict, "name_taken", "fleet %q exists", "a"), 409, "name_taken", `fleet "a" exists`},
		{"wrapped problem error", fmt.Errorf("create fleet: %w", problem.New(400, "bad", "no")), 400, "bad", "no"},
		{"not found sentinel", fmt.Errorf("load fleet 7: %w", problem.ErrNotFound), 404, "not_found", "load fleet 7: not found"},
		{"conflict sentinel", fmt.Errorf("add member: %w", problem.ErrConflict), 409, "conflict", "add member: conflict"},
		{"timeout", fmt.Errorf("query: %w", context.DeadlineExceeded), 503, "unavailable", "the request timed out"},
		{"anything else hides its text", errors.New("pq: password=hunter2"), 500, "internal_error", "quote the request id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/v1/fleets/7", nil)
			req = req.WithContext(reqinfo.With(req.Context(), "req-1"))
			rec := httptest.NewRecorder()
			problem.Write(rec, req, tt.err)
			if rec.Code != tt.wantStatus || rec.Header().Get("Content-Type") != problem.ContentType {
				t.Fatalf("status %d type %q", rec.Code, rec.Header().Get("Content-Type"))
			}
			var p problem.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.Code != tt.wantCode || p.Status != tt.wantStatus || !strings.Contains(p.Detail, tt.wantDetail) ||
				p.RequestID != "req-1" || p.Instance != "/v1/fleets/7" || p.Title == "" {
				t.Errorf("problem = %+v", p)
			}
			if strings.Contains(rec.Body.String(), "hunter2") {
				t.Error("internal error text leaked")
			}
		})
	}
}
