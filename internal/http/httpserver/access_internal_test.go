package httpserver

import (
	"log/slog"
	"testing"
)

func TestAccessLevel(t *testing.T) {
	for _, c := range []struct {
		path   string
		status int
		want   slog.Level
	}{
		{"/healthz", 200, slog.LevelDebug},
		{"/metrics", 200, slog.LevelDebug},
		{"/device/v1/state", 200, slog.LevelDebug},
		{"/device/v1/state", 304, slog.LevelDebug},
		{"/device/v1/token", 200, slog.LevelDebug},
		{"/device/v1/token", 401, slog.LevelInfo},
		{"/device/v1/state", 500, slog.LevelInfo},
		{"/v1/orgs", 200, slog.LevelInfo},
		{"/devices/x", 200, slog.LevelInfo},
	} {
		if got := accessLevel(c.path, c.status); got != c.want {
			t.Errorf("accessLevel(%s, %d) = %v, want %v", c.path, c.status, got, c.want)
		}
	}
}
