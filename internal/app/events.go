package app

import (
	"context"
	"sync"
	"time"

	"github.com/flock-io/flock-api/handlers/eventendpoints"
	"github.com/flock-io/flock-api/internal/config"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/secretbox"
	"github.com/flock-io/flock-api/internal/webhook"
	"github.com/flock-io/flock-api/workers/eventsgw"
)

// eventsState is what the api and events-gateway targets of one process
// share: the box sealing endpoints' secrets and the deliverer.
type eventsState struct {
	once      sync.Once
	box       *secretbox.Box
	err       error
	deliverer *eventdelivery.Deliverer
}

func (a *App) eventsDeliverer(ctx context.Context) (*eventdelivery.Deliverer, error) {
	s := &a.events
	s.once.Do(func() {
		s.box, s.err = eventdelivery.LoadKey(ctx, a.pool, a.cfg.EventsEncryptionKey, a.cfg.Dev)
		s.deliverer = &eventdelivery.Deliverer{Box: s.box, Webhooks: webhook.NewSender(a.webhookPolicy()), Policy: a.webhookPolicy()}
	})
	return s.deliverer, s.err
}

func (a *App) webhookPolicy() webhook.Policy {
	return webhook.Policy{AllowPrivate: a.cfg.EventsAllowPrivate, Timeout: a.cfg.EventsTimeout}
}

// eventEndpointsHandler configures the API's event-delivery operations;
// without an encryption key (outside dev mode) they answer 503.
func (a *App) eventEndpointsHandler(ctx context.Context) *eventendpoints.EventEndpoints {
	d, err := a.eventsDeliverer(ctx)
	if err != nil {
		a.log.Warn("event endpoints unavailable", "error", err)
		return &eventendpoints.EventEndpoints{Policy: a.webhookPolicy(), FeedRecheck: a.cfg.StreamRecheck}
	}
	return &eventendpoints.EventEndpoints{Box: d.Box, Policy: a.webhookPolicy(), Deliverer: d, FeedRecheck: a.cfg.StreamRecheck}
}

// initEventsGateway runs the events-gateway: internal topics in, the
// organisations' endpoints out, through the PostgreSQL outbox.
func (a *App) initEventsGateway(ctx context.Context) (*modules.Service, error) {
	d, err := a.eventsDeliverer(ctx)
	if err != nil {
		return nil, err
	}
	schedule, err := config.ParseSchedule(a.cfg.EventsRetrySchedule)
	if err != nil {
		return nil, err
	}
	g, err := eventsgw.New(eventsgw.Config{Pool: a.pool, Bus: a.bus, Deliverer: d, Schedule: schedule,
		DisableAfter: a.cfg.EventsDisableAfter, Retention: a.cfg.EventsRetention, Workers: a.cfg.EventsWorkers,
		PerEndpoint: a.cfg.EventsPerEndpoint, AttemptTimeout: a.cfg.EventsTimeout + 5*time.Second, Log: a.log, Registerer: a.metrics.Registry})
	if err != nil {
		return nil, err
	}
	return &modules.Service{Run: func(ctx context.Context) error {
		defer d.Close()
		return g.Run(ctx)
	}}, nil
}
