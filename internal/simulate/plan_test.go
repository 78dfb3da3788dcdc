package simulate

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/gen/events"
)

// describe writes a plan as lines a reader can check: "E <type> <service>
// [<progress>]" for an event, "S <release> <service>:<status>[/<progress>][+locked] ..."
// for the state after it.
func describe(steps []step, names map[uuid.UUID]string) []string {
	var out []string
	for _, st := range steps {
		for _, e := range st.events {
			out = append(out, describeEvent(e))
		}
		out = append(out, describeView(st.view, names))
	}
	return out
}

func describeEvent(e UpdateStep) string {
	name, _ := e.Type.Value().(string)
	line := "E " + name + " " + e.Service
	if strings.HasPrefix(name, "download") {
		line += fmt.Sprintf(" %d", e.Progress)
	}
	return line
}

func describeView(v view, names map[uuid.UUID]string) string {
	var b strings.Builder
	b.WriteString("S " + names[v.release])
	if len(v.services) == 0 {
		b.WriteString(" -")
	}
	for _, s := range v.services {
		st, _ := statusOf(s).Value().(string)
		fmt.Fprintf(&b, " %s:%s", s.Name, st)
		if s.DownloadProgress > 0 {
			fmt.Fprintf(&b, "/%d", s.DownloadProgress)
		}
		if s.UpdateLocked {
			b.WriteString("+locked")
		}
	}
	return b.String()
}

func running(release uuid.UUID, names ...string) view {
	v := view{release: release}
	for _, n := range names {
		v.services = append(v.services, events.ServiceStatus{Name: n, Status: ptr(events.ServiceStateRunning)})
	}
	return v
}

// TestPlan holds the steps of an update for each strategy, and what locks,
// failures, new and dropped services do to them.
func TestPlan(t *testing.T) {
	r0, r1 := uuid.New(), uuid.New()
	names := map[uuid.UUID]string{uuid.Nil: "none", r0: "R0", r1: "R1"}
	svc := func(name string, s client.UpdateStrategy) targetService {
		return targetService{name: name, strategy: s}
	}
	for _, c := range []struct {
		name string
		in   planInput
		want []string
	}{
		{
			name: "download-then-kill: the old runs while the new downloads",
			in:   planInput{from: running(r0, "app"), services: []targetService{svc("app", client.DownloadThenKill)}},
			want: []string{
				"E download_started app 0", "S R0 app:running",
				"E download_progress app 50", "S R0 app:running/50",
				"E download_finished app 100", "S R0 app:running/100",
				"S R0 app:stopped",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "kill-then-download: the old stops first",
			in:   planInput{from: running(r0, "app"), services: []targetService{svc("app", client.KillThenDownload)}},
			want: []string{
				"S R0 app:stopped",
				"E download_started app 0", "S R0 app:downloading",
				"E download_progress app 50", "S R0 app:downloading/50",
				"E download_finished app 100", "S R0 app:downloading/100",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "delete-then-download: stopped, then container and image gone",
			in:   planInput{from: running(r0, "app"), services: []targetService{svc("app", client.DeleteThenDownload)}},
			want: []string{
				"S R0 app:stopped",
				"S R0 -",
				"E download_started app 0", "S R0 app:downloading",
				"E download_progress app 50", "S R0 app:downloading/50",
				"E download_finished app 100", "S R0 app:downloading/100",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "hand-over: never stopped",
			in:   planInput{from: running(r0, "app"), services: []targetService{svc("app", client.HandOver)}},
			want: []string{
				"E download_started app 0", "S R0 app:running",
				"E download_progress app 50", "S R0 app:running/50",
				"E download_finished app 100", "S R0 app:running/100",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "first install: nothing to stop, nothing to lock",
			in:   planInput{lock: true, services: []targetService{svc("app", client.KillThenDownload)}},
			want: []string{
				"E download_started app 0", "S none app:downloading",
				"E download_progress app 50", "S none app:downloading/50",
				"E download_finished app 100", "S none app:downloading/100",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "a lock holds the first service on the old release first",
			in:   planInput{lock: true, from: running(r0, "app", "db"), services: []targetService{svc("app", client.HandOver)}},
			want: []string{
				"S R0 app:running+locked db:running",
				"E download_started app 0", "S R0 app:running db:running",
				"E download_progress app 50", "S R0 app:running/50 db:running",
				"E download_finished app 100", "S R0 app:running/100 db:running",
				// db is not in the new release: it stops before install.
				"S R0 app:running/100 db:stopped",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "a failed service holds no lock",
			in: planInput{lock: true, from: view{release: r0, services: []events.ServiceStatus{{Name: "app", Status: ptr(events.ServiceStateFailed)}}},
				services: []targetService{svc("app", client.DownloadThenKill)}},
			want: []string{
				"E download_started app 0", "S R0 app:downloading",
				"E download_progress app 50", "S R0 app:downloading/50",
				"E download_finished app 100", "S R0 app:downloading/100",
				"E install_started app", "S R1 app:installing",
				"E installed app", "S R1 app:running",
			},
		},
		{
			name: "failure: the first service fails to start, the others run",
			in: planInput{fail: true, from: running(r0, "app", "db"),
				services: []targetService{svc("app", client.KillThenDownload), svc("db", client.DownloadThenKill), svc("web", client.HandOver)}},
			want: []string{
				"S R0 app:stopped db:running",
				"E download_started app 0", "E download_started db 0", "E download_started web 0",
				"S R0 app:downloading db:running web:downloading",
				"E download_progress app 50", "E download_progress db 50", "E download_progress web 50",
				"S R0 app:downloading/50 db:running/50 web:downloading/50",
				"E download_finished app 100", "E download_finished db 100", "E download_finished web 100",
				"S R0 app:downloading/100 db:running/100 web:downloading/100",
				"S R0 app:downloading/100 db:stopped web:downloading/100",
				"E install_started app", "E install_started db", "E install_started web",
				"S R1 app:installing db:installing web:installing",
				"E installed db", "E installed web", "E failed app",
				"S R1 app:failed db:running web:running",
			},
		},
		{
			name: "a release without services",
			in:   planInput{from: running(r0, "app")},
			want: []string{"S R0 app:stopped", "S R1 -"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.in.release, c.in.attempt = r1, 1
			from := c.in.from.clone()
			steps := plan(c.in)
			if got := describe(steps, names); !slices.Equal(got, c.want) {
				t.Errorf("steps:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(c.want, "\n\t"))
			}
			if describeView(c.in.from, names) != describeView(from, names) {
				t.Errorf("plan changed the view it started from: %s", describeView(c.in.from, names))
			}
			for _, st := range steps {
				for _, e := range st.events {
					if e.Release != r1 || e.Attempt != 1 {
						t.Errorf("event %+v is not of release R1, attempt 1", e)
					}
					if e.Type == events.UpdateEventTypeFailed && e.Error == "" {
						t.Errorf("failed event %+v says nothing of what failed", e)
					}
				}
			}
		})
	}
}

func TestTargetServicesDefaultStrategy(t *testing.T) {
	got := targetServices([]client.TargetService{{Name: "a"}, {Name: "b", UpdateStrategy: "bogus"}, {Name: "c", UpdateStrategy: client.HandOver}})
	want := []targetService{{"a", client.DownloadThenKill}, {"b", client.DownloadThenKill}, {"c", client.HandOver}}
	if !slices.Equal(got, want) {
		t.Errorf("targetServices = %+v, want %+v", got, want)
	}
}
