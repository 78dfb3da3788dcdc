package fleets

import (
	"encoding/json"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/rollout"
)

// APIWindowOf converts a maintenance window for a response.
func APIWindowOf(w rollout.Window) *api.MaintenanceWindow {
	out := &api.MaintenanceWindow{Cron: w.Cron, DurationSeconds: w.DurationSeconds}
	if w.TimeZone != "" {
		out.TimeZone = &w.TimeZone
	}
	return out
}

// Window converts a maintenance window from the API (nil stays nil).
func Window(w *api.MaintenanceWindow) *rollout.Window {
	if w == nil {
		return nil
	}
	out := &rollout.Window{Cron: w.Cron, DurationSeconds: w.DurationSeconds}
	if w.TimeZone != nil {
		out.TimeZone = *w.TimeZone
	}
	return out
}

// APIWindow converts a stored maintenance window (nil or JSON null: none).
func APIWindow(b []byte) (*api.MaintenanceWindow, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	var w rollout.Window
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("decode maintenance window: %w", err)
	}
	return APIWindowOf(w), nil
}
