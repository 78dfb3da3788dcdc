package handlers_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	"github.com/flock-io/flock-api/workers/nudger"
	"github.com/flock-io/flock-api/workers/nudger/nudgertest"
)

// spy passes notifications on and counts them, so a test knows for certain
// that a failed write notified nothing (the guard runs after-commit
// functions before the response is written).
type spy struct {
	next  nudger.Notifier
	mu    sync.Mutex
	calls int
}

func (s *spy) FleetChanged(id uuid.UUID) { s.count(); s.next.FleetChanged(id) }
func (s *spy) DevicesChanged(ids ...uuid.UUID) {
	s.count()
	s.next.DevicesChanged(ids...)
}
func (s *spy) count() { s.mu.Lock(); s.calls++; s.mu.Unlock() }
func (s *spy) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

type nudgeEnv struct {
	srv *apptest.Server
	reg *prometheus.Registry
	spy *spy
	c   *nudgertest.Consumer
}

// startNudgeServer serves the API as the api target does (startLiveServer),
// with the handlers given a nudge Service on a real (embedded kfake) bus,
// and consumes the nudges from that bus.
func startNudgeServer(t *testing.T) *nudgeEnv {
	t.Helper()
	env := &nudgeEnv{reg: prometheus.NewRegistry()}
	live := startLiveServer(t, liveOptions{deps: func(e *liveEnv, d *handlers.Deps) {
		ctx := context.Background()
		log := slog.New(slog.DiscardHandler)
		b, err := bus.Open(ctx, bus.Config{Log: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		svc := nudger.New(e.pool, b, log, env.reg)
		runCtx, stop := context.WithCancel(ctx)
		stopped := make(chan error, 1)
		go func() { stopped <- svc.Run(runCtx) }()
		t.Cleanup(func() {
			stop()
			if err := <-stopped; err != nil {
				t.Errorf("nudge service: %v", err)
			}
		})
		env.spy = &spy{next: svc}
		env.c = nudgertest.Consume(t, b)
		d.Nudge = env.spy
	}})
	env.srv = live.srv
	return env
}

// settle waits until every change reported so far has been nudged and
// every nudge consumed: nothing pending, no pass running, and as many
// records consumed as published. A change's report happens before its
// request returns (an after-commit hook), so no later nudge can come from
// what the test did before.
func (e *nudgeEnv) settle(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, "nudges to settle", func() error {
		// Pending first, then the pass: a pass sets its gauge before it
		// takes the pending changes.
		pending := promtest.Sum(t, e.reg, "flock_nudge_pending_fleets") + promtest.Sum(t, e.reg, "flock_nudge_pending_devices")
		running := promtest.Sum(t, e.reg, "flock_nudge_pass_running")
		pub, consumed := promtest.Sum(t, e.reg, "flock_nudges_published_total"), float64(e.c.Total(t))
		if pending != 0 || running != 0 || consumed != pub {
			return fmt.Errorf("%v pending, pass running %v, %v of %v published consumed", pending, running, consumed, pub)
		}
		return nil
	})
}

// stateVersion is what GET /device/v1/state returns the device now; its
// ETag must be the version.
func stateVersion(t *testing.T, srv *apptest.Server, token string) string {
	t.Helper()
	status, hdr, body := call(t, srv, "GET", "/device/v1/state", token, nil)
	if status != 200 {
		t.Fatalf("GET /device/v1/state = %d %v", status, body)
	}
	v, _ := body["version"].(string)
	if hdr.Get("ETag") != `"`+v+`"` {
		t.Fatalf("ETag %s, version %s", hdr.Get("ETag"), v)
	}
	// A device holding the version a nudge carried sends it as an ETag
	// (quoted, as both documents say) and learns nothing changed; the bare
	// version is accepted too.
	for _, inm := range []string{`"` + v + `"`, v, `W/"` + v + `"`, `"other", "` + v + `"`} {
		req, err := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/device/v1/state", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("If-None-Match", inm)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified {
			t.Fatalf("If-None-Match %s with version %s = %d, want 304", inm, v, resp.StatusCode)
		}
	}
	return v
}

// Every change to a device's target state, and only such a change, once
// committed, publishes a nudge per affected device whose version is what the
// state endpoint then serves that device.
func TestTargetNudges(t *testing.T) {
	env := startNudgeServer(t)
	srv := env.srv
	w := newWorld(t, srv).withFleet(t) // fleet A tracks its latest release, R1
	owner := w.owner
	fleetA := w.fleet
	r1 := w.release
	r2 := must(t, srv, 201, "POST", "/v1/fleets/"+fleetA+"/releases", owner, w.releaseBody(fleetA, "final"))["id"].(string)

	// B: another device of A. P: a pinned fleet with a device. C: another
	// tracking fleet to move devices to.
	register := func(fleet, provKey string) *fakeDevice {
		d := newDevice(t)
		must(t, srv, 201, "POST", "/device/v1/register", "", d.registration(provKey))
		return d
	}
	devA := w.device
	devB := register(fleetA, w.provKey)
	newFleet := func(name string) (fleet, release, provKey string) {
		fleet = must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/fleets", owner, map[string]any{"name": name, "architecture": "amd64"})["id"].(string)
		release = must(t, srv, 201, "POST", "/v1/fleets/"+fleet+"/releases", owner, w.releaseBody(fleet, "final"))["id"].(string)
		provKey = must(t, srv, 201, "POST", "/v1/fleets/"+fleet+"/provisioning-keys", owner, map[string]any{"name": "k"})["secret"].(string)
		return fleet, release, provKey
	}
	fleetP, releaseP, keyP := newFleet("pinned")
	must(t, srv, 200, "PATCH", "/v1/fleets/"+fleetP, owner, map[string]any{"pinned_release_id": releaseP})
	devP := register(fleetP, keyP)
	fleetC, _, keyC := newFleet("cameras")
	must(t, srv, 201, "POST", "/v1/fleets/"+fleetC+"/variables", owner, map[string]any{"name": "ROOM", "value": "lab"})
	devC := register(fleetC, keyC)

	all := map[string]*fakeDevice{"A": devA, "B": devB, "P": devP, "C": devC}
	tokens := map[string]string{}
	for name, d := range all {
		tokens[name] = d.token(t, srv)
	}
	env.settle(t)
	for _, d := range all {
		env.c.Drain(t, d.id) // what the set-up caused
	}

	var fleetVar, deviceVar, draft string
	big := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		name string
		do   func(t *testing.T)
		// nudged are the devices whose target changes; every other
		// device must get no nudger.
		nudged []string
	}{
		{"draft release: nothing", func(t *testing.T) {
			draft = must(t, srv, 201, "POST", "/v1/fleets/"+fleetA+"/releases", owner, w.releaseBody(fleetA, "draft"))["id"].(string)
		}, nil},
		{"draft becomes final on a tracking fleet", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/releases/"+draft, owner, map[string]any{"status": "final"})
		}, []string{"A", "B"}},
		{"new final release on a tracking fleet", func(t *testing.T) {
			must(t, srv, 201, "POST", "/v1/fleets/"+fleetA+"/releases", owner, w.releaseBody(fleetA, "final"))
		}, []string{"A", "B"}},
		{"new final release on a pinned fleet: nothing", func(t *testing.T) {
			must(t, srv, 201, "POST", "/v1/fleets/"+fleetP+"/releases", owner, w.releaseBody(fleetP, "final"))
		}, nil},
		{"release retagged: nothing", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/releases/"+r2, owner, map[string]any{"tags": map[string]any{"qa": "passed"}})
		}, nil},
		{"fleet pinned", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/fleets/"+fleetA, owner, map[string]any{"pinned_release_id": r1})
		}, []string{"A", "B"}},
		{"fleet renamed: nothing", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/fleets/"+fleetA, owner, map[string]any{"name": "sensors-2"})
		}, nil},
		{"fleet unpinned", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/fleets/"+fleetA, owner, map[string]any{"pinned_release_id": nil})
		}, []string{"A", "B"}},
		{"device pinned", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/devices/"+devA.id.String(), owner, map[string]any{"pinned_release_id": r1})
		}, []string{"A"}},
		{"device renamed: nothing", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/devices/"+devA.id.String(), owner, map[string]any{"name": "renamed"})
		}, nil},
		{"device unpinned", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/devices/"+devA.id.String(), owner, map[string]any{"pinned_release_id": nil})
		}, []string{"A"}},
		{"fleet variable created", func(t *testing.T) {
			fleetVar = must(t, srv, 201, "POST", "/v1/fleets/"+fleetA+"/variables", owner, map[string]any{"name": "MODE", "value": "fast"})["id"].(string)
		}, []string{"A", "B"}},
		{"fleet variable updated", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/fleets/"+fleetA+"/variables/"+fleetVar, owner, map[string]any{"value": "slow"})
		}, []string{"A", "B"}},
		{"fleet variable deleted", func(t *testing.T) {
			must(t, srv, 204, "DELETE", "/v1/fleets/"+fleetA+"/variables/"+fleetVar, owner, nil)
		}, []string{"A", "B"}},
		{"fleet service variable created", func(t *testing.T) {
			must(t, srv, 201, "POST", "/v1/fleets/"+fleetA+"/variables", owner, map[string]any{"name": "PORT", "value": "81", "service": "app"})
		}, []string{"A", "B"}},
		{"device variable created", func(t *testing.T) {
			deviceVar = must(t, srv, 201, "POST", "/v1/devices/"+devB.id.String()+"/variables", owner, map[string]any{"name": "MODE", "value": "b"})["id"].(string)
		}, []string{"B"}},
		{"device variable updated", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/devices/"+devB.id.String()+"/variables/"+deviceVar, owner, map[string]any{"value": "bb"})
		}, []string{"B"}},
		{"device variable deleted", func(t *testing.T) {
			must(t, srv, 204, "DELETE", "/v1/devices/"+devB.id.String()+"/variables/"+deviceVar, owner, nil)
		}, []string{"B"}},
		{"device service variable created", func(t *testing.T) {
			must(t, srv, 201, "POST", "/v1/devices/"+devB.id.String()+"/variables", owner, map[string]any{"name": "PORT", "value": "82", "service": "app"})
		}, []string{"B"}},
		{"device moved", func(t *testing.T) {
			must(t, srv, 200, "PATCH", "/v1/devices/"+devB.id.String(), owner, map[string]any{"fleet_id": fleetC})
		}, []string{"B"}},
		{"move rolled back after moving variables: nothing", func(t *testing.T) {
			// The handler moves A's variables, then refuses the pin (a
			// release of the old fleet): the transaction rolls back.
			must(t, srv, 400, "PATCH", "/v1/devices/"+devA.id.String(), owner, map[string]any{"fleet_id": fleetC, "pinned_release_id": r1})
		}, nil},
		{"variable written then refused as too large: nothing", func(t *testing.T) {
			must(t, srv, 413, "POST", "/v1/fleets/"+fleetA+"/variables", owner, map[string]any{"name": "BIG", "value": big})
		}, nil},
		{"write refused for role: nothing", func(t *testing.T) {
			must(t, srv, 403, "PATCH", "/v1/fleets/"+fleetA, w.viewer, map[string]any{"pinned_release_id": r1})
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]string{}
			for name := range all {
				before[name] = stateVersion(t, srv, tokens[name])
			}
			calls := env.spy.Calls()
			tc.do(t)
			if len(tc.nudged) == 0 && env.spy.Calls() != calls {
				t.Fatalf("%d notifications for a change that leaves every target as it was", env.spy.Calls()-calls)
			}
			for _, name := range tc.nudged {
				got := env.c.Next(t, all[name].id, 20*time.Second)
				now := stateVersion(t, srv, tokens[name])
				if got != now {
					t.Fatalf("device %s: nudge version %s, GET /device/v1/state version %s", name, got, now)
				}
				if now == before[name] {
					t.Fatalf("device %s: nudged, but its version stayed %s", name, now)
				}
			}
			env.settle(t)
			for name, d := range all {
				if extra := env.c.Drain(t, d.id); len(extra) > 0 {
					t.Errorf("device %s: unexpected nudges %v", name, extra)
				}
				if !contains(tc.nudged, name) {
					if now := stateVersion(t, srv, tokens[name]); now != before[name] {
						t.Errorf("device %s: version changed %s -> %s without a nudge", name, before[name], now)
					}
				}
			}
		})
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
