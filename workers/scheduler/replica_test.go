package scheduler

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/nudger"
	st "github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

// The test binary runs as a scheduler replica, to be killed, when these
// are set.
const (
	replicaEnv        = "FLOCK_SCHEDULER_TEST_REPLICA"
	replicaDBEnv      = "FLOCK_SCHEDULER_TEST_DATABASE_URL"
	replicaBrokersEnv = "FLOCK_SCHEDULER_TEST_BROKERS"
)

func TestMain(m *testing.M) {
	if group := os.Getenv(replicaEnv); group != "" {
		os.Exit(runReplica(group))
	}
	os.Exit(m.Run())
}

// runReplica is a scheduler replica in a process of its own: it says
// "ready" on stdout once its consumer is in the group and runs until it
// is killed (or told to stop).
func runReplica(group string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "replica:", err); return 1 }
	pool, err := postgres.Open(ctx, os.Getenv(replicaDBEnv))
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	b, err := bus.Open(ctx, bus.Config{Brokers: strings.Split(os.Getenv(replicaBrokersEnv), ","), Log: quiet})
	if err != nil {
		return fail(err)
	}
	defer b.Close()
	n := nudger.New(pool, b, quiet, nil)
	s, err := New(Config{Group: group, SessionTimeout: 6 * time.Second, Log: quiet}, Deps{Pool: pool, Bus: b, Nudge: n, Audit: audit.NewRecorder(nil)})
	if err != nil {
		return fail(err)
	}
	done := make(chan error, 2)
	go func() { done <- n.Run(ctx) }()
	go func() { done <- s.Run(ctx) }()
	for s.Ready(ctx) != nil {
		select {
		case err := <-done:
			return fail(fmt.Errorf("stopped before joining: %v", err))
		case <-time.After(10 * time.Millisecond):
		}
	}
	fmt.Println("ready")
	if err := <-done; err != nil {
		return fail(err)
	}
	<-done
	return 0
}

// Two replicas share a rollout's reports; one is killed (SIGKILL, nothing
// drained or committed on the way out) while reports flow. The other takes
// over its partitions, every report is applied exactly once (each device
// ends as its reports say, a stale disconnect redelivered after the report
// would have failed it), and every group event is published once.
func TestTwoReplicasAndAKill(t *testing.T) {
	const n = 300
	h := newHarness(t, n, nil)
	half := 50.0
	// Devices settle for two seconds: a stale disconnect applied after
	// their report would fail them meanwhile.
	id := h.start(st.Rollout{Spec: rollout.Spec{SettleSeconds: 2}, Groups: []rollout.GroupSpec{{Percent: &half, SuccessThreshold: 100, DeviceTimeoutSeconds: 3600},
		{SuccessThreshold: 100, DeviceTimeoutSeconds: 3600}}})
	published := consumeRolloutEvents(t, h.bus)

	// Replica A, in a process of its own.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), replicaEnv+"="+h.group, replicaDBEnv+"="+dbURL(t, h), replicaBrokersEnv+"="+strings.Join(h.bus.Brokers(), ","))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var killOnce sync.Once
	kill := func() { killOnce.Do(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) }
	t.Cleanup(kill)
	ready := make(chan struct{})
	go func() { // ends when the process does (its stdout closes)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(testutil.Wait):
		t.Fatal("replica A did not join the group")
	}

	// Replica B, here, with the real clock.
	b, err := New(Config{Group: h.group, Log: quiet, SessionTimeout: 6 * time.Second},
		Deps{Pool: h.pool, Bus: h.bus, Audit: audit.NewRecorder(nil)})
	if err != nil {
		t.Fatal(err)
	}
	h.run("replica b", b.Run)
	members := groupMembers(t, h)
	testutil.Eventually(t, "both replicas holding partitions", func() error {
		if m := members(); len(m) != 2 || m[0] == 0 || m[1] == 0 {
			return fmt.Errorf("members' partitions %v", m)
		}
		return nil
	})

	// The replicas' timers target group 0.
	group := func(idx int32, state string) []uuid.UUID {
		var out []uuid.UUID
		for dev, r := range h.devices(id) {
			if r.GroupIdx == idx && r.State == state {
				out = append(out, dev)
			}
		}
		return out
	}
	testutil.Eventually(t, "group 0 targeted", func() error {
		if got := len(group(0, rollout.DeviceTargeted)); got != n/2 {
			return fmt.Errorf("%d targeted", got)
		}
		return nil
	})
	reportedAt := map[uuid.UUID]time.Time{}
	var mu sync.Mutex
	send := func(devices []uuid.UUID) error {
		for i := 0; i < len(devices); i += 5 {
			var recs []bus.Record
			for _, d := range devices[i:min(i+5, len(devices))] {
				now := time.Now().UTC()
				mu.Lock()
				reportedAt[d] = now
				mu.Unlock()
				recs = append(recs, st.Disconnect(h.f, d, 1, now.Add(-time.Minute)),
					st.Event(h.f, d, events.UpdateEventTypeInstallStarted, h.f.New, now.Add(-time.Second)),
					st.Report(h.f, d, 7, h.f.New, now, st.Running("app")),
					st.Disconnect(h.f, d, 1, now.Add(-time.Minute)))
			}
			if err := h.bus.Publish(h.ctx, recs...); err != nil {
				return err
			}
		}
		return nil
	}
	sent := make(chan error, 1)
	first := group(0, rollout.DeviceTargeted)
	go func() { sent <- send(first) }()
	testutil.Eventually(t, "reports flowing", func() error {
		if got := len(group(0, rollout.DeviceSucceeded)); got < 30 {
			return fmt.Errorf("%d succeeded", got)
		}
		return nil
	})
	kill()
	killed := time.Now()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "replica B holding every partition", func() error {
		if m := members(); len(m) != 1 || m[0] != 3*6 {
			return fmt.Errorf("members' partitions %v", m)
		}
		return nil
	})
	t.Logf("partitions taken over %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	testutil.Eventually(t, "group 1 targeted", func() error {
		if got := len(group(1, rollout.DeviceTargeted)); got != n/2 {
			return fmt.Errorf("%d targeted", got)
		}
		return nil
	})
	if err := send(group(1, rollout.DeviceTargeted)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the rollout finished", func() error {
		if s := h.rollout(id).State; s != rollout.Finished {
			return fmt.Errorf("rollout %s", s)
		}
		return nil
	})
	for dev, r := range h.devices(id) {
		if r.State != rollout.DeviceSucceeded || r.LastSeq != 7 || r.TargetedAt == nil || r.StateAt.Before(reportedAt[dev]) {
			t.Errorf("device %s: %s (%q) last_seq %d, want succeeded at seq 7 after its report", dev, r.State, r.Reason, r.LastSeq)
		}
	}
	want := []string{"group_succeeded@0", "group_started@1", "group_succeeded@1", "group_completed@1", "finished@1"}
	got := published.wait(t, id, len(want))
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events published %v, want each once: %v", got, want)
	}
}

func dbURL(t *testing.T, h *harness) string {
	var name string
	if err := h.pool.QueryRow(h.ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	u := pgtest.AdminURL()
	i := strings.LastIndex(u, "/")
	j := strings.IndexByte(u[i:], '?')
	if j < 0 {
		return u[:i+1] + name
	}
	return u[:i+1] + name + u[i+j:]
}

// groupMembers returns a function listing how many partitions each member
// of the scheduler's group holds.
func groupMembers(t *testing.T, h *harness) func() []int {
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.bus.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	adm := kadm.NewClient(cl)
	return func() []int {
		gs, err := adm.DescribeGroups(h.ctx, h.group)
		if err != nil {
			return nil
		}
		var out []int
		for _, m := range gs[h.group].Members {
			c, ok := m.Assigned.AsConsumer()
			if !ok {
				continue
			}
			n := 0
			for _, tp := range c.Topics {
				n += len(tp.Partitions)
			}
			out = append(out, n)
		}
		return out
	}
}

// eventLog collects flock.rollout.events.v1, keeping one copy per event id
// (the outbox may publish an event again after a crash, with its id).
type eventLog struct {
	mu   sync.Mutex
	seen map[string]bool
	by   map[uuid.UUID][]string
}

func consumeRolloutEvents(t *testing.T, b *bus.Bus) *eventLog {
	l := &eventLog{seen: map[string]bool{}, by: map[uuid.UUID][]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(ctx, "events-"+uuid.NewString(), []string{bus.TopicRolloutEvents}, func(_ context.Context, recs []bus.Record) error {
			l.mu.Lock()
			defer l.mu.Unlock()
			for _, r := range recs {
				var ev rollout.Event
				if err := json.Unmarshal(r.Value, &ev); err != nil {
					return err
				}
				if l.seen[ev.ID.String()] {
					continue
				}
				l.seen[ev.ID.String()] = true
				if ev.Actor != Actor || ev.Group == nil {
					continue // the start, written by rolloutstore.Start for the test
				}
				l.by[ev.RolloutID] = append(l.by[ev.RolloutID], fmt.Sprintf("%s@%d", ev.Event, *ev.Group))
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("rollout events consumer: %v", err)
		}
	})
	return l
}

// wait returns the rollout's events once at least n have arrived.
func (l *eventLog) wait(t *testing.T, id uuid.UUID, n int) []string {
	t.Helper()
	var got []string
	testutil.Eventually(t, fmt.Sprintf("%d rollout events", n), func() error {
		l.mu.Lock()
		got = append([]string(nil), l.by[id]...)
		l.mu.Unlock()
		if len(got) < n {
			return fmt.Errorf("%v", got)
		}
		return nil
	})
	return got
}
