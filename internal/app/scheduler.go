package app

import (
	"context"

	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/workers/scheduler"
)

// initScheduler runs the rollout scheduler: it applies device reports from
// Kafka and steps active rollouts, nudging the devices it targets through
// the nudger. /readyz waits for its consumer to join the group.
func (a *App) initScheduler(context.Context) (*modules.Service, error) {
	s, err := scheduler.New(scheduler.Config{Log: a.log, Metrics: a.metrics.Registry},
		scheduler.Deps{Pool: a.pool, Bus: a.bus, Nudge: a.nudger, Audit: a.audit})
	if err != nil {
		return nil, err
	}
	a.ready.Add("scheduler", s.Ready)
	return &modules.Service{Run: s.Run}, nil
}
