// Package modules is a small module manager in the manner of Loki's: each
// module names its dependencies and has an init that may return a service.
// Targets are the modules a user may ask for; hidden modules are plumbing
// pulled in by them. The graph is resolved once, in dependency order; services
// start in that order and stop in the reverse one, so a module stops only
// after everything that depends on it has stopped.
package modules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
)

// Service is what a module's Init returns. Both fields are optional.
type Service struct {
	// Run blocks until ctx is cancelled and returns nil on a clean stop. A Run
	// that returns while the process is still running stops the process.
	Run func(ctx context.Context) error
	// Close releases what Init acquired; it is called after every Run has
	// returned, in reverse start order.
	Close func()
}

// Module is one node of the graph.
type Module struct {
	Name string
	Deps []string
	// Hidden modules cannot be asked for with --target.
	Hidden bool
	// Init wires the module and may return its service; modules that only
	// group others (all) use Group. Required: a module without one would
	// silently do nothing.
	Init func(ctx context.Context) (*Service, error)
}

// Group is the Init of a module that only groups its dependencies.
func Group(context.Context) (*Service, error) { return nil, nil }

// Manager holds the graph.
type Manager struct {
	modules map[string]Module
	order   []string // as declared, for messages
}

// New checks the whole table at once and returns its manager. It refuses a
// module without an Init, a name declared twice, a dependency on a module
// the table does not declare, and a cycle, so a process with a broken graph
// does not start (and the app's test finds it first).
func New(table []Module) (*Manager, error) {
	m := &Manager{modules: make(map[string]Module, len(table))}
	for _, mod := range table {
		switch {
		case mod.Name == "":
			return nil, errors.New("modules: a module without a name")
		case mod.Init == nil:
			return nil, fmt.Errorf("modules: %s has no Init (use modules.Group for a module that only groups others)", mod.Name)
		}
		if _, dup := m.modules[mod.Name]; dup {
			return nil, fmt.Errorf("modules: %s is declared twice", mod.Name)
		}
		m.modules[mod.Name] = mod
		m.order = append(m.order, mod.Name)
	}
	for _, name := range m.order {
		for _, d := range m.modules[name].Deps {
			if _, ok := m.modules[d]; !ok {
				return nil, fmt.Errorf("modules: %s depends on %s, which is not declared", name, d)
			}
		}
	}
	// Resolving every module finds any cycle.
	for _, name := range m.order {
		if _, err := m.resolve([]string{name}); err != nil {
			return nil, fmt.Errorf("modules: %w", err)
		}
	}
	return m, nil
}

// Hidden reports whether name is a hidden module.
func (m *Manager) Hidden(name string) bool { return m.modules[name].Hidden }

// Targets returns the visible module names, sorted.
func (m *Manager) Targets() []string {
	var out []string
	for name, mod := range m.modules {
		if !mod.Hidden {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Deps returns a module's direct dependencies.
func (m *Manager) Deps(name string) []string { return m.modules[name].Deps }

// UnknownTargetError names a target that is not registered or is hidden.
type UnknownTargetError struct {
	Name  string
	Valid []string
}

func (e *UnknownTargetError) Error() string {
	return fmt.Sprintf("unknown target %q (valid: %s)", e.Name, strings.Join(e.Valid, ", "))
}

// ParseTargets splits a comma list, dropping blanks and repeats.
func ParseTargets(s string) []string {
	var out []string
	seen := map[string]bool{}
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t != "" && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// Resolve returns the modules needed to run targets, each once, every module
// after all of its dependencies. It rejects unknown and hidden targets,
// dependencies on unregistered modules, and cycles.
func (m *Manager) Resolve(targets []string) ([]string, error) {
	if len(targets) == 0 {
		return nil, &UnknownTargetError{Name: "", Valid: m.Targets()}
	}
	for _, t := range targets {
		mod, ok := m.modules[t]
		if !ok || mod.Hidden {
			return nil, &UnknownTargetError{Name: t, Valid: m.Targets()}
		}
	}
	return m.resolve(targets)
}

// resolve orders names and their dependencies, any module allowed.
func (m *Manager) resolve(targets []string) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(path, name), " -> "))
		}
		mod, ok := m.modules[name]
		if !ok {
			return fmt.Errorf("module %q depends on unregistered module %q", path[len(path)-1], name)
		}
		state[name] = visiting
		for _, d := range mod.Deps {
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, name)
		return nil
	}
	for _, t := range targets {
		if err := visit(t, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Running is the set of initialised modules of one process.
type Running struct {
	log      *slog.Logger
	names    []string
	services []*Service
}

// Init calls each module's Init in order. On failure it closes what was
// already initialised and returns an error naming the module.
func (m *Manager) Init(ctx context.Context, order []string, log *slog.Logger) (*Running, error) {
	r := &Running{log: log}
	for _, name := range order {
		svc, err := m.modules[name].Init(ctx)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if svc == nil {
			continue
		}
		r.names = append(r.names, name)
		r.services = append(r.services, svc)
	}
	return r, nil
}

// Run starts every service and blocks until ctx is cancelled or one of them
// stops. Then it calls beforeStop (to flip readiness), stops the services in
// reverse order, each after the ones started later have returned, closes
// them, and returns the first error.
func (r *Running) Run(ctx context.Context, beforeStop func()) error {
	type result struct {
		idx int
		err error
	}
	n := len(r.services)
	cancels := make([]context.CancelFunc, n)
	dones := make([]chan error, n)
	stopped := make(chan result, n)
	var wg sync.WaitGroup
	for i, svc := range r.services {
		dones[i] = make(chan error, 1)
		if svc.Run == nil {
			dones[i] <- nil
			continue
		}
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancels[i] = cancel
		wg.Go(func() {
			err := svc.Run(sctx)
			dones[i] <- err
			stopped <- result{i, err}
		})
	}

	var first error
	select {
	case <-ctx.Done():
		r.log.Info("shutting down", "cause", context.Cause(ctx).Error())
	case res := <-stopped:
		// Its result also sits in dones[res.idx] for the ordered wait below.
		if res.err == nil {
			first = fmt.Errorf("module %s stopped unexpectedly", r.names[res.idx])
		} else {
			first = fmt.Errorf("%s: %w", r.names[res.idx], res.err)
		}
		r.log.Error("module stopped, shutting down", "module", r.names[res.idx], "error", first.Error())
	}
	if beforeStop != nil {
		beforeStop()
	}
	for i := n - 1; i >= 0; i-- {
		if cancels[i] != nil {
			cancels[i]()
		}
		if err := <-dones[i]; err != nil && first == nil {
			first = fmt.Errorf("%s: %w", r.names[i], err)
		}
		r.log.Debug("module stopped", "module", r.names[i])
	}
	wg.Wait()
	r.close()
	return first
}

func (r *Running) close() {
	for i := len(r.services) - 1; i >= 0; i-- {
		if c := r.services[i].Close; c != nil {
			c()
		}
	}
}
