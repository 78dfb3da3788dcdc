package app

import (
	"context"

	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/workers/commands"
	"github.com/flock-io/flock-api/workers/janitor"
	"github.com/flock-io/flock-api/workers/nudger"
)

// initNudger starts the worker that tells devices their target changed;
// the API's handlers report committed changes to it.
func (a *App) initNudger(context.Context) (*modules.Service, error) {
	a.nudger = nudger.New(a.pool, a.bus, a.log, a.metrics.Registry)
	return &modules.Service{Run: a.nudger.Run}, nil
}

// initCommands starts the worker that sends device commands, again on
// reconnect, and expires them. It is mounted with the api target, which
// creates the commands and hands it each one after commit; its reconnect
// consumer and expiry pass are shared by however many api replicas run.
func (a *App) initCommands(context.Context) (*modules.Service, error) {
	a.commands = commands.New(a.pool, a.bus, a.log, a.metrics.Registry)
	return &modules.Service{Run: a.commands.Run}, nil
}

// initJanitor forgets day-old idempotency keys, published rollout events
// and telemetry past its retention, and compacts the summary counters.
func (a *App) initJanitor(context.Context) (*modules.Service, error) {
	return &modules.Service{Run: func(ctx context.Context) error {
		return janitor.Run(ctx, a.pool, a.log, janitor.WithTelemetry(a.telemetry, a.cfg.TelemetryRetention))
	}}, nil
}
