package charttest

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// eventsSet sets every events value to something other than flock-api's
// default.
var eventsSet = []string{
	"events.encryptionKey.existingSecret=flock-events-key", "events.encryptionKey.key=key",
	"events.allowPrivate=true", "events.retrySchedule=10s\\,1m\\,1h", "events.disableAfter=48h",
	"events.retention=336h", "events.timeout=5s", "events.workers=32", "events.perEndpoint=4",
}

// The events-gateway: enabled by default, two replicas on the same image,
// an HTTP Service (probes, /metrics) and a PDB like every worker, no data
// volume; the key reaches the api, events-gateway and all only, the
// delivery settings the same targets, the gateway's concurrency the
// gateway (and all) only.
func TestEventsGateway(t *testing.T) {
	r := mustRender(t, nil, eventsSet...)
	deps := byTarget(t, r)
	d, ok := deps["events-gateway"]
	if !ok {
		t.Fatalf("no events-gateway Deployment; Deployments: %v", sortedKeys(deps))
	}
	if n := *d.Spec.Replicas; n != 2 {
		t.Errorf("events-gateway replicas %d, want 2", n)
	}
	checkDataDir(t, d, "", "")
	if p := d.Spec.Template.Spec.Containers[0].Ports; len(p) != 1 || p[0].Name != "http" {
		t.Errorf("events-gateway ports %+v, want http only", p)
	}
	if s := servicesByName(r)["flock-events-gateway"]; s == nil || s.Labels["flock.io/surface"] != "http" || len(s.Spec.Ports) != 1 {
		t.Errorf("events-gateway Service %+v, want the HTTP one only (probes, /metrics)", s)
	}
	checkPDBs(t, r, deps)

	shared := map[string]string{
		"FLOCK_EVENTS_ALLOW_PRIVATE":  "true",
		"FLOCK_EVENTS_RETRY_SCHEDULE": "10s,1m,1h",
		"FLOCK_EVENTS_DISABLE_AFTER":  "48h",
		"FLOCK_EVENTS_RETENTION":      "336h",
		"FLOCK_EVENTS_TIMEOUT":        "5s",
	}
	gateway := map[string]string{"FLOCK_EVENTS_WORKERS": "32", "FLOCK_EVENTS_PER_ENDPOINT": "4"}
	for target, d := range deps {
		c := d.Spec.Template.Spec.Containers[0]
		checkEventsKeyRef(t, target, c, "flock-events-key", "key")
		for name, v := range shared {
			e, ok := env(c, name)
			switch {
			case slices.Contains([]string{"api", "events-gateway"}, target) && (!ok || e.Value != v):
				t.Errorf("%s: %s = %+v, want %q", target, name, e, v)
			case !slices.Contains([]string{"api", "events-gateway"}, target) && ok:
				t.Errorf("%s: %s set on a target that delivers no events", target, name)
			}
		}
		for name, v := range gateway {
			e, ok := env(c, name)
			switch {
			case target == "events-gateway" && (!ok || e.Value != v):
				t.Errorf("%s: %s = %+v, want %q", target, name, e, v)
			case target != "events-gateway" && ok:
				t.Errorf("%s: %s set on a target that runs no events-gateway", target, name)
			}
		}
	}
	for _, s := range []string{"Secret flock-events-key (key key)", "egress to the internet", "WARNING: events.allowPrivate is true"} {
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt does not mention %q:\n%s", s, r.notes)
		}
	}

	t.Run("all-in-one", func(t *testing.T) {
		r := mustRender(t, allInOneFiles, eventsSet...)
		c := byTarget(t, r)["all"].Spec.Template.Spec.Containers[0]
		checkEventsKeyRef(t, "all", c, "flock-events-key", "key")
		for name, v := range gateway {
			if e, ok := env(c, name); !ok || e.Value != v {
				t.Errorf("all: %s = %+v, want %q", name, e, v)
			}
		}
		for name, v := range shared {
			if e, ok := env(c, name); !ok || e.Value != v {
				t.Errorf("all: %s = %+v, want %q", name, e, v)
			}
		}
	})

	// From a values file, the numbers are YAML numbers.
	t.Run("numbers from a file", func(t *testing.T) {
		r := mustRender(t, []string{valuesFile(t, "events:\n  workers: 128\n  perEndpoint: 16\n")})
		c := byTarget(t, r)["events-gateway"].Spec.Template.Spec.Containers[0]
		for name, v := range map[string]string{"FLOCK_EVENTS_WORKERS": "128", "FLOCK_EVENTS_PER_ENDPOINT": "16"} {
			if e, _ := env(c, name); e.Value != v {
				t.Errorf("%s = %q, want %q", name, e.Value, v)
			}
		}
	})

	// In dev mode flock-api keeps a generated key in PostgreSQL: the chart
	// renders without one, and says so.
	t.Run("dev mode", func(t *testing.T) {
		r := mustRender(t, []string{devValues(t)}, "events.encryptionKey.existingSecret=")
		for target, d := range byTarget(t, r) {
			if _, ok := env(d.Spec.Template.Spec.Containers[0], "FLOCK_EVENTS_ENCRYPTION_KEY"); ok {
				t.Errorf("%s: FLOCK_EVENTS_ENCRYPTION_KEY set although events.encryptionKey.existingSecret is empty", target)
			}
		}
		if !strings.Contains(r.notes, "events.encryptionKey.existingSecret is empty") {
			t.Errorf("NOTES.txt does not say the key is generated:\n%s", r.notes)
		}
	})

	// Without the api, events-gateway or all, nothing needs the key.
	t.Run("neither api nor gateway", func(t *testing.T) {
		r := mustRender(t, nil, append(only("ingester", "scheduler"), "events.encryptionKey.existingSecret=")...)
		if strings.Contains(r.notes, "Events:") {
			t.Errorf("NOTES.txt talks about events without a target that delivers them:\n%s", r.notes)
		}
	})
}

// checkEventsKey: the events key (key name events-encryption-key) reaches
// the api, events-gateway and all pods only.
func checkEventsKey(t *testing.T, target string, c corev1.Container, secret string) {
	t.Helper()
	checkEventsKeyRef(t, target, c, secret, "events-encryption-key")
}

func checkEventsKeyRef(t *testing.T, target string, c corev1.Container, secret, key string) {
	t.Helper()
	if slices.Contains([]string{"api", "events-gateway", "all"}, target) {
		checkSecretEnv(t, target, c, "FLOCK_EVENTS_ENCRYPTION_KEY", secret, key)
	} else if _, ok := env(c, "FLOCK_EVENTS_ENCRYPTION_KEY"); ok {
		t.Errorf("%s: FLOCK_EVENTS_ENCRYPTION_KEY given to a target that neither seals nor opens endpoints' secrets", target)
	}
}

// devValues is a values file running every target in flock-api's dev mode
// (FLOCK_DEV=true through extraEnv, a string as Kubernetes wants it).
func devValues(t *testing.T) string {
	t.Helper()
	return valuesFile(t, "extraEnv:\n  - name: FLOCK_DEV\n    value: \"true\"\n")
}
