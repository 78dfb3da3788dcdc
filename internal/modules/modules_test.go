package modules_test

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/testutil"
)

func graph(mods ...modules.Module) *modules.Manager {
	m := modules.New()
	for _, mod := range mods {
		m.Register(mod)
	}
	return m
}

func TestResolve(t *testing.T) {
	m := graph(
		modules.Module{Name: "config", Hidden: true},
		modules.Module{Name: "db", Deps: []string{"config"}, Hidden: true},
		modules.Module{Name: "server", Deps: []string{"config"}, Hidden: true},
		modules.Module{Name: "api", Deps: []string{"db", "server"}},
		modules.Module{Name: "worker", Deps: []string{"db"}},
		modules.Module{Name: "all", Deps: []string{"api", "worker"}},
		modules.Module{Name: "loop-a", Deps: []string{"loop-b"}},
		modules.Module{Name: "loop-b", Deps: []string{"loop-a"}},
		modules.Module{Name: "broken", Deps: []string{"missing"}},
	)
	tests := []struct {
		targets []string
		want    []string
		wantErr string
	}{
		{targets: []string{"api"}, want: []string{"config", "db", "server", "api"}},
		{targets: []string{"worker"}, want: []string{"config", "db", "worker"}},
		{targets: []string{"worker", "api"}, want: []string{"config", "db", "worker", "server", "api"}},
		{targets: []string{"all"}, want: []string{"config", "db", "server", "api", "worker", "all"}},
		{targets: []string{"nope"}, wantErr: `unknown target "nope" (valid: all, api, broken, loop-a, loop-b, worker)`},
		{targets: []string{"db"}, wantErr: `unknown target "db"`},
		{targets: nil, wantErr: `unknown target ""`},
		{targets: []string{"loop-a"}, wantErr: "cycle: loop-a -> loop-b -> loop-a"},
		{targets: []string{"broken"}, wantErr: `"broken" depends on unregistered module "missing"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.targets, ","), func(t *testing.T) {
			got, err := m.Resolve(tt.targets)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseTargets(t *testing.T) {
	got := modules.ParseTargets(" api, ingester,,api ")
	if want := []string{"api", "ingester"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// recorder notes the order of lifecycle events across modules.
type recorder struct {
	mu      sync.Mutex
	events  []string
	running atomic.Int32 // services whose Run has started
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func service(rec *recorder, name string, fail error) func(context.Context) (*modules.Service, error) {
	return func(context.Context) (*modules.Service, error) {
		rec.add("init " + name)
		return &modules.Service{
			Run: func(ctx context.Context) error {
				if fail != nil {
					return fail
				}
				rec.running.Add(1)
				<-ctx.Done()
				rec.add("stop " + name)
				return nil
			},
			Close: func() { rec.add("close " + name) },
		}, nil
	}
}

func TestRunStopsInReverseOrder(t *testing.T) {
	rec := &recorder{}
	m := graph(
		modules.Module{Name: "store", Hidden: true, Init: service(rec, "store", nil)},
		modules.Module{Name: "server", Deps: []string{"store"}, Hidden: true, Init: service(rec, "server", nil)},
		modules.Module{Name: "worker", Deps: []string{"server"}, Init: service(rec, "worker", nil)},
	)
	order, err := m.Resolve([]string{"worker"})
	if err != nil {
		t.Fatal(err)
	}
	running, err := m.Init(context.Background(), order, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	drained := false
	go func() { done <- running.Run(ctx, func() { drained = true; rec.add("drain") }) }()
	testutil.Eventually(t, "every service running", testutil.Until(func() bool { return rec.running.Load() == 3 }))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil on a clean stop", err)
	}
	want := []string{"init store", "init server", "init worker", "drain",
		"stop worker", "stop server", "stop store", "close worker", "close server", "close store"}
	if got := rec.get(); !reflect.DeepEqual(got, want) || !drained {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func TestRunStopsWhenAModuleFails(t *testing.T) {
	rec := &recorder{}
	boom := errors.New("boom")
	m := graph(
		modules.Module{Name: "store", Hidden: true, Init: service(rec, "store", nil)},
		modules.Module{Name: "worker", Deps: []string{"store"}, Init: service(rec, "worker", boom)},
	)
	order, _ := m.Resolve([]string{"worker"})
	running, err := m.Init(context.Background(), order, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	err = running.Run(context.Background(), nil)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "worker") {
		t.Fatalf("Run = %v, want boom naming worker", err)
	}
	if got := rec.get(); got[len(got)-1] != "close store" {
		t.Fatalf("events = %v, want the store closed last", got)
	}
}

func TestInitFailureClosesWhatStarted(t *testing.T) {
	rec := &recorder{}
	m := graph(
		modules.Module{Name: "store", Hidden: true, Init: service(rec, "store", nil)},
		modules.Module{Name: "api", Deps: []string{"store"}, Init: func(context.Context) (*modules.Service, error) {
			return nil, errors.New("no port")
		}},
	)
	order, _ := m.Resolve([]string{"api"})
	_, err := m.Init(context.Background(), order, slog.New(slog.DiscardHandler))
	if err == nil || err.Error() != "api: no port" {
		t.Fatalf("Init = %v, want 'api: no port'", err)
	}
	if got, want := rec.get(), []string{"init store", "close store"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}
