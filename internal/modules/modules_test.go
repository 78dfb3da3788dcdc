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

func graph(t *testing.T, mods ...modules.Module) *modules.Manager {
	t.Helper()
	for i := range mods {
		if mods[i].Init == nil {
			mods[i].Init = modules.Group
		}
	}
	m, err := modules.New(mods)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A broken table stops the process before anything starts.
func TestNewRefusesABrokenTable(t *testing.T) {
	g := modules.Group
	for _, tt := range []struct {
		name    string
		table   []modules.Module
		wantErr string
	}{
		{"a module without an init", []modules.Module{{Name: "config", Init: g}, {Name: "nudger", Deps: []string{"config"}}}, "nudger has no Init"},
		{"a name twice", []modules.Module{{Name: "api", Init: g}, {Name: "api", Init: g}}, "api is declared twice"},
		{"an undeclared dependency", []modules.Module{{Name: "api", Deps: []string{"missing"}, Init: g}}, "api depends on missing, which is not declared"},
		{"a cycle", []modules.Module{{Name: "loop-a", Deps: []string{"loop-b"}, Init: g}, {Name: "loop-b", Deps: []string{"loop-a"}, Init: g}}, "cycle: loop-a -> loop-b -> loop-a"},
		{"no name", []modules.Module{{Init: g}}, "without a name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := modules.New(tt.table); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	m := graph(t,
		modules.Module{Name: "config", Hidden: true},
		modules.Module{Name: "db", Deps: []string{"config"}, Hidden: true},
		modules.Module{Name: "server", Deps: []string{"config"}, Hidden: true},
		modules.Module{Name: "api", Deps: []string{"db", "server"}},
		modules.Module{Name: "worker", Deps: []string{"db"}},
		modules.Module{Name: "all", Deps: []string{"api", "worker"}},
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
		{targets: []string{"nope"}, wantErr: `unknown target "nope" (valid: all, api, worker)`},
		{targets: []string{"db"}, wantErr: `unknown target "db"`},
		{targets: nil, wantErr: `unknown target ""`},
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
	m := graph(t,
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
	m := graph(t,
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
	m := graph(t,
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
