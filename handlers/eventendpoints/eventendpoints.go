// Package eventendpoints serves the organisation's event subscriptions:
// the catalogue of types, endpoints (webhooks and Kafka clusters) with
// their secrets, the delivery log, replays, test sends, and the WebSocket
// feed of the organisation's CloudEvents.
package eventendpoints

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/secretbox"
	"github.com/flock-io/flock-api/internal/webhook"
)

// EventEndpoints implements the event-delivery operations.
type EventEndpoints struct {
	Pool *pgxpool.Pool
	// Box seals endpoints' secrets; nil answers 503 events_unavailable
	// (no FLOCK_EVENTS_ENCRYPTION_KEY outside dev mode).
	Box *secretbox.Box
	// Policy checks webhook URLs (SSRF); Deliverer makes test sends.
	Policy    webhook.Policy
	Deliverer *eventdelivery.Deliverer
	// FeedPoll is how often the feed looks for new events (default 250ms);
	// FeedRecheck how often an open feed asks whether its caller may still
	// read the organisation (default 30s, as the live streams).
	FeedPoll, FeedRecheck time.Duration
}

func (h *EventEndpoints) box() (*secretbox.Box, error) {
	if h.Box == nil {
		return nil, problem.Errorf(http.StatusServiceUnavailable, "events_unavailable",
			"event endpoints need FLOCK_EVENTS_ENCRYPTION_KEY, which this deployment does not set")
	}
	return h.Box, nil
}

// EventTypeList serves the catalogue.
func (h *EventEndpoints) EventTypeList(ctx context.Context, _ api.EventTypeListRequestObject) (api.EventTypeListResponseObject, error) {
	c, err := eventdelivery.Catalog()
	if err != nil {
		return nil, err
	}
	var out api.EventTypeList
	b, _ := json.Marshal(c)
	if err := json.Unmarshal([]byte(`{"items":`+string(b)+`}`), &out); err != nil {
		return nil, err
	}
	return api.EventTypeList200JSONResponse(out), nil
}

// convert shows an endpoint (never its secrets; secret is the plaintext
// to show once, or "").
func convert(e db.EventEndpoint, secret string) api.EventEndpoint {
	out := api.EventEndpoint{Id: e.ID, OrgId: e.OrgID, Name: e.Name, Kind: api.EventEndpointKind(e.Kind), Types: e.Types,
		Enabled: e.Enabled, DisabledAt: e.DisabledAt, FailingSince: e.FailingSince, CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt}
	if out.Types == nil {
		out.Types = []string{}
	}
	if e.Url != "" {
		out.Url = &e.Url
	}
	if e.DisabledReason != "" {
		out.DisabledReason = &e.DisabledReason
	}
	if e.FleetID.Valid {
		out.FleetId = &e.FleetID.UUID
	}
	if secret != "" {
		out.Secret = &secret
	}
	if e.PreviousExpiresAt != nil && e.PreviousExpiresAt.After(time.Now()) {
		out.PreviousExpiresAt = e.PreviousExpiresAt
	}
	if len(e.Kafka) > 0 {
		var ks eventdelivery.KafkaSettings
		if json.Unmarshal(e.Kafka, &ks) == nil {
			mech := ks.SASLMechanism
			if mech == "" {
				mech = "none"
			}
			out.Kafka = &struct {
				Brokers       *[]string `json:"brokers,omitempty"`
				SaslMechanism *string   `json:"sasl_mechanism,omitempty"`
				Tls           *bool     `json:"tls,omitempty"`
				Topic         *string   `json:"topic,omitempty"`
				Username      *string   `json:"username,omitempty"`
			}{Brokers: &ks.Brokers, SaslMechanism: &mech, Tls: &ks.TLS, Topic: &ks.Topic, Username: &ks.Username}
		}
	}
	return out
}

// checkTypes refuses types the catalogue lacks.
func checkTypes(types *[]string) ([]string, error) {
	if types == nil {
		return []string{}, nil
	}
	out := slices.Clone(*types)
	slices.Sort(out)
	out = slices.Compact(out)
	for _, t := range out {
		if !eventdelivery.Known(t) {
			return nil, problem.Invalid("body", "/types", fmt.Sprintf("%s is not an event type (GET /v1/event-types lists them)", t))
		}
	}
	return out, nil
}

// fleetOf checks a fleet filter names a fleet of org.
func fleetOf(ctx context.Context, q *db.Queries, org uuid.UUID, id *uuid.UUID) (uuid.NullUUID, error) {
	if id == nil {
		return uuid.NullUUID{}, nil
	}
	f, err := q.FleetGet(ctx, *id)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && f.OrgID != org) {
		return uuid.NullUUID{}, problem.Invalid("body", "/fleet_id", fmt.Sprintf("fleet %s is not a fleet of this organisation", *id))
	}
	if err != nil {
		return uuid.NullUUID{}, fmt.Errorf("load fleet %s: %w", *id, err)
	}
	return uuid.NullUUID{UUID: f.ID, Valid: true}, nil
}

// checkBrokers applies the webhook URL rules to a Kafka endpoint's
// brokers (public addresses only unless allowed); each connection is
// checked again when it is made.
func (h *EventEndpoints) checkBrokers(ctx context.Context, brokers []string) error {
	for _, b := range brokers {
		if err := h.Policy.CheckURL(ctx, "https://"+b); err != nil {
			return problem.Invalid("body", "/kafka/brokers", fmt.Sprintf("broker %s: %v", b, err))
		}
	}
	return nil
}

// kafkaSettings checks a Kafka sink's settings; the password comes back
// apart, to be sealed.
func kafkaSettings(k *api.KafkaSink) (eventdelivery.KafkaSettings, string, error) {
	ks := eventdelivery.KafkaSettings{Brokers: k.Brokers, Topic: k.Topic}
	if k.SaslMechanism != nil && *k.SaslMechanism != "none" {
		ks.SASLMechanism = string(*k.SaslMechanism)
	}
	if k.Username != nil {
		ks.Username = *k.Username
	}
	if k.Tls != nil {
		ks.TLS = *k.Tls
	}
	pw := ""
	if k.Password != nil {
		pw = *k.Password
	}
	if err := ks.Config(pw).Validate(); err != nil {
		return ks, "", problem.Invalid("body", "/kafka", err.Error())
	}
	return ks, pw, nil
}

// EventEndpointCreate subscribes a webhook or a Kafka cluster.
func (h *EventEndpoints) EventEndpointCreate(ctx context.Context, req api.EventEndpointCreateRequestObject) (api.EventEndpointCreateResponseObject, error) {
	box, err := h.box()
	if err != nil {
		return nil, err
	}
	acc := auth.AccessFrom(ctx)
	acc.SetOrg(req.OrgId)
	q := postgres.Queries(ctx, h.Pool)
	b := req.Body
	id, _ := uuid.NewV7()
	p := db.EventEndpointCreateParams{ID: id, OrgID: req.OrgId, Name: strings.TrimSpace(b.Name), Kind: string(b.Kind), Enabled: true}
	if b.Enabled != nil {
		p.Enabled = *b.Enabled
	}
	if p.Types, err = checkTypes(b.Types); err != nil {
		return nil, err
	}
	if p.FleetID, err = fleetOf(ctx, q, req.OrgId, b.FleetId); err != nil {
		return nil, err
	}
	secret := ""
	switch b.Kind {
	case api.EventEndpointCreateKindWebhook:
		if b.Url == nil || b.Kafka != nil {
			return nil, problem.Invalid("body", "/url", "a webhook endpoint needs url (and no kafka)")
		}
		if err := h.Policy.CheckURL(ctx, *b.Url); err != nil {
			return nil, problem.Invalid("body", "/url", err.Error())
		}
		p.Url = *b.Url
		if secret, err = webhook.NewSecret(); err != nil {
			return nil, err
		}
		p.Secret = eventdelivery.Seal(box, id, "secret", secret)
	case api.EventEndpointCreateKindKafka:
		if b.Kafka == nil || b.Url != nil {
			return nil, problem.Invalid("body", "/kafka", "a kafka endpoint needs kafka (and no url)")
		}
		ks, pw, err := kafkaSettings(b.Kafka)
		if err != nil {
			return nil, err
		}
		if err := h.checkBrokers(ctx, ks.Brokers); err != nil {
			return nil, err
		}
		p.Kafka, _ = json.Marshal(ks)
		p.KafkaPassword = eventdelivery.Seal(box, id, "kafka_password", pw)
	}
	e, err := q.EventEndpointCreate(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("create event endpoint: %w", err)
	}
	acc.SetTarget(e.ID.String())
	return api.EventEndpointCreate201JSONResponse(convert(e, secret)), nil
}

// EventEndpointList pages through the organisation's endpoints.
func (h *EventEndpoints) EventEndpointList(ctx context.Context, req api.EventEndpointListRequestObject) (api.EventEndpointListResponseObject, error) {
	afterT, afterID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).EventEndpointList(ctx, db.EventEndpointListParams{OrgID: req.OrgId, AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list event endpoints of %s: %w", req.OrgId, err)
	}
	items, next, err := pagination.Page(rows, limit, func(e db.EventEndpoint) (time.Time, uuid.UUID) { return e.CreatedAt, e.ID },
		func(e db.EventEndpoint) (api.EventEndpoint, error) { return convert(e, ""), nil })
	if err != nil {
		return nil, err
	}
	return api.EventEndpointList200JSONResponse(api.EventEndpointPage{Items: items, NextCursor: next}), nil
}

// EventEndpointGet shows one endpoint.
func (h *EventEndpoints) EventEndpointGet(ctx context.Context, req api.EventEndpointGetRequestObject) (api.EventEndpointGetResponseObject, error) {
	e, err := db.New(h.Pool).EventEndpointGet(ctx, req.EndpointId)
	if err != nil {
		return nil, fmt.Errorf("load event endpoint %s: %w", req.EndpointId, err)
	}
	return api.EventEndpointGet200JSONResponse(convert(e, "")), nil
}

// EventEndpointUpdate changes an endpoint; enabling one clears its
// failure record.
func (h *EventEndpoints) EventEndpointUpdate(ctx context.Context, req api.EventEndpointUpdateRequestObject) (api.EventEndpointUpdateResponseObject, error) {
	box, err := h.box()
	if err != nil {
		return nil, err
	}
	q := postgres.Queries(ctx, h.Pool)
	e, err := q.EventEndpointForUpdate(ctx, req.EndpointId)
	if err != nil {
		return nil, fmt.Errorf("load event endpoint %s: %w", req.EndpointId, err)
	}
	b := req.Body
	p := updateOf(e)
	if b.Name != nil {
		p.Name = strings.TrimSpace(*b.Name)
	}
	if b.Types != nil {
		if p.Types, err = checkTypes(b.Types); err != nil {
			return nil, err
		}
	}
	if b.FleetId.IsSpecified() {
		if b.FleetId.IsNull() {
			p.FleetID = uuid.NullUUID{}
		} else {
			id := b.FleetId.MustGet()
			if p.FleetID, err = fleetOf(ctx, q, e.OrgID, &id); err != nil {
				return nil, err
			}
		}
	}
	if b.Url != nil {
		if e.Kind != "webhook" {
			return nil, problem.Invalid("body", "/url", "a kafka endpoint has no url")
		}
		if err := h.Policy.CheckURL(ctx, *b.Url); err != nil {
			return nil, problem.Invalid("body", "/url", err.Error())
		}
		p.Url = *b.Url
	}
	if b.Kafka != nil {
		if e.Kind != "kafka" {
			return nil, problem.Invalid("body", "/kafka", "a webhook endpoint has no kafka settings")
		}
		ks, pw, err := kafkaSettings(b.Kafka)
		if err != nil {
			return nil, err
		}
		if err := h.checkBrokers(ctx, ks.Brokers); err != nil {
			return nil, err
		}
		p.Kafka, _ = json.Marshal(ks)
		if b.Kafka.Password != nil {
			p.KafkaPassword = eventdelivery.Seal(box, e.ID, "kafka_password", pw)
		}
	}
	if b.Enabled != nil {
		p.Enabled = *b.Enabled
		if *b.Enabled && !e.Enabled {
			p.DisabledReason, p.DisabledAt, p.FailingSince = "", nil, nil
		}
	}
	e, err = q.EventEndpointUpdate(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("update event endpoint %s: %w", req.EndpointId, err)
	}
	return api.EventEndpointUpdate200JSONResponse(convert(e, "")), nil
}

// updateOf is an update that changes nothing, for the caller to change.
func updateOf(e db.EventEndpoint) db.EventEndpointUpdateParams {
	return db.EventEndpointUpdateParams{ID: e.ID, Name: e.Name, Url: e.Url, Kafka: e.Kafka, KafkaPassword: e.KafkaPassword, Types: e.Types,
		FleetID: e.FleetID, Enabled: e.Enabled, DisabledReason: e.DisabledReason, DisabledAt: e.DisabledAt, FailingSince: e.FailingSince,
		Secret: e.Secret, PreviousSecret: e.PreviousSecret, PreviousExpiresAt: e.PreviousExpiresAt}
}

// EventEndpointDelete deletes an endpoint with its outbox and log.
func (h *EventEndpoints) EventEndpointDelete(ctx context.Context, req api.EventEndpointDeleteRequestObject) (api.EventEndpointDeleteResponseObject, error) {
	if _, err := postgres.Queries(ctx, h.Pool).EventEndpointDelete(ctx, req.EndpointId); err != nil {
		return nil, fmt.Errorf("delete event endpoint %s: %w", req.EndpointId, err)
	}
	return api.EventEndpointDelete204Response{}, nil
}

// EventEndpointRotateSecret makes a new signing secret; the old one signs
// too for the overlap.
func (h *EventEndpoints) EventEndpointRotateSecret(ctx context.Context, req api.EventEndpointRotateSecretRequestObject) (api.EventEndpointRotateSecretResponseObject, error) {
	box, err := h.box()
	if err != nil {
		return nil, err
	}
	q := postgres.Queries(ctx, h.Pool)
	e, err := q.EventEndpointForUpdate(ctx, req.EndpointId)
	if err != nil {
		return nil, fmt.Errorf("load event endpoint %s: %w", req.EndpointId, err)
	}
	if e.Kind != "webhook" {
		return nil, problem.Errorf(http.StatusConflict, "not_webhook", "only webhook endpoints have a signing secret")
	}
	overlap := 24 * time.Hour
	if req.Body != nil && req.Body.OverlapSeconds != nil {
		overlap = time.Duration(*req.Body.OverlapSeconds) * time.Second
	}
	secret, err := webhook.NewSecret()
	if err != nil {
		return nil, err
	}
	expires := time.Now().Add(overlap)
	p := updateOf(e)
	p.Secret, p.PreviousSecret, p.PreviousExpiresAt = eventdelivery.Seal(box, e.ID, "secret", secret), e.Secret, &expires
	e, err = q.EventEndpointUpdate(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("rotate the secret of %s: %w", req.EndpointId, err)
	}
	return api.EventEndpointRotateSecret200JSONResponse(convert(e, secret)), nil
}

// EventEndpointTest sends a test event now and answers with the attempt.
func (h *EventEndpoints) EventEndpointTest(ctx context.Context, req api.EventEndpointTestRequestObject) (api.EventEndpointTestResponseObject, error) {
	if _, err := h.box(); err != nil {
		return nil, err
	}
	q := db.New(h.Pool)
	e, err := q.EventEndpointGet(ctx, req.EndpointId)
	if err != nil {
		return nil, fmt.Errorf("load event endpoint %s: %w", req.EndpointId, err)
	}
	now := time.Now()
	ev := eventdelivery.TestEvent(e, now)
	var d db.EventDelivery
	var stored db.OrgEvent
	// The event goes to this endpoint alone: no fan-out.
	err = postgres.InTx(ctx, h.Pool, func(q *db.Queries) error {
		seq, err := q.OrgEventInsert(ctx, db.OrgEventInsertParams{ID: ev.ID, OrgID: ev.OrgID, Type: ev.Type, Source: ev.Source,
			Subject: ev.Subject, Time: ev.Time, Data: ev.Data})
		if err != nil {
			return err
		}
		id, _ := uuid.NewV7()
		d, err = q.DeliveryInsertLeased(ctx, db.DeliveryInsertLeasedParams{ID: id, EndpointID: e.ID, EventSeq: seq, Holder: "test-send"})
		if err != nil {
			return err
		}
		evs, err := q.OrgEventsBySeq(ctx, []int64{seq})
		if err != nil || len(evs) != 1 {
			return fmt.Errorf("read the test event back: %w", err)
		}
		stored = evs[0]
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue a test event for %s: %w", e.ID, err)
	}
	res := h.Deliverer.Deliver(ctx, e, stored, now)
	status := "succeeded"
	if res.Err != nil {
		status = "failed"
	}
	var attemptID uuid.UUID
	err = postgres.InTx(context.WithoutCancel(ctx), h.Pool, func(q *db.Queries) error {
		var err error
		if attemptID, err = eventdelivery.RecordAttempt(ctx, q, d, res); err != nil {
			return err
		}
		_, err = q.DeliveryDone(ctx, db.DeliveryDoneParams{ID: d.ID, Holder: "test-send", Status: status, NextAttemptAt: now,
			LastStatus: res.StatusCode(), LastError: res.ErrorText()})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record the test attempt of %s: %w", e.ID, err)
	}
	out := api.DeliveryAttempt{DeliveryId: d.ID, EventId: ev.ID, EventType: ev.Type, At: now, DurationMs: int(res.Duration.Milliseconds()),
		Succeeded: res.Err == nil, Response: ptr(string(res.Response))}
	out.Id = attemptID
	if res.Status != 0 {
		out.StatusCode = &res.Status
	}
	if res.Err != nil {
		out.Error = ptr(res.Err.Error())
	}
	ds := api.DeliveryAttemptDeliveryStatus(status)
	out.DeliveryStatus = &ds
	return api.EventEndpointTest200JSONResponse(out), nil
}

func ptr[T any](v T) *T { return &v }

// EventDeliveryAttemptList pages through an endpoint's delivery log.
func (h *EventEndpoints) EventDeliveryAttemptList(ctx context.Context, req api.EventDeliveryAttemptListRequestObject) (api.EventDeliveryAttemptListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).AttemptList(ctx, db.AttemptListParams{EndpointID: req.EndpointId, BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list attempts of %s: %w", req.EndpointId, err)
	}
	items, next, err := pagination.Page(rows, limit, func(a db.AttemptListRow) (time.Time, uuid.UUID) { return a.At, a.ID },
		func(a db.AttemptListRow) (api.DeliveryAttempt, error) {
			out := api.DeliveryAttempt{Id: a.ID, DeliveryId: a.DeliveryID, EventId: a.EventID, EventType: a.EventType, At: a.At,
				DurationMs: int(a.DurationMs), Succeeded: a.Succeeded}
			if a.StatusCode != nil {
				c := int(*a.StatusCode)
				out.StatusCode = &c
			}
			if a.Response != "" {
				out.Response = ptr(a.Response)
			}
			if a.Error != "" {
				out.Error = ptr(a.Error)
			}
			ds := api.DeliveryAttemptDeliveryStatus(a.DeliveryStatus)
			out.DeliveryStatus = &ds
			return out, nil
		})
	if err != nil {
		return nil, err
	}
	return api.EventDeliveryAttemptList200JSONResponse(api.DeliveryAttemptPage{Items: items, NextCursor: next}), nil
}

// EventEndpointReplay queues one delivery, or every event since a time,
// again.
func (h *EventEndpoints) EventEndpointReplay(ctx context.Context, req api.EventEndpointReplayRequestObject) (api.EventEndpointReplayResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	var n int64
	var err error
	switch b := req.Body; {
	case b.DeliveryId != nil:
		n, err = q.DeliveryReplay(ctx, db.DeliveryReplayParams{ID: *b.DeliveryId, EndpointID: req.EndpointId})
		if err == nil && n == 0 {
			return nil, problem.Errorf(http.StatusNotFound, "not_found", "no delivery %s to this endpoint", *b.DeliveryId)
		}
	case b.Since != nil:
		n, err = q.EndpointReplaySince(ctx, db.EndpointReplaySinceParams{EndpointID: req.EndpointId, Since: *b.Since})
	}
	if err != nil {
		return nil, fmt.Errorf("replay to %s: %w", req.EndpointId, err)
	}
	return api.EventEndpointReplay202JSONResponse(api.ReplayResult{Queued: int(n)}), nil
}
