package app_test

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/config"
	"github.com/flock-io/flock-api/internal/modules"
)

func TestGraph(t *testing.T) {
	a, err := app.New(&config.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := a.Manager()
	if got, want := m.Targets(), []string{"all", "api", "builder", "delta", "events-gateway", "ingester", "proxy", "registry-proxy", "scheduler", "tunnel"}; !reflect.DeepEqual(got, want) {
		t.Errorf("targets = %v, want %v", got, want)
	}
	edges := map[string][]string{
		"api":             {"config", "postgres", "metrics", "audit", "http-server", "kv", "kafka", "telemetry-store", "device-tokens", "authn", "registry", "blob", "nudger", "janitor", "commands"},
		"registry-proxy":  {"config", "postgres", "metrics", "http-server", "device-tokens", "authn", "registry"},
		"delta":           {"config", "postgres", "metrics", "http-server", "kafka", "registry", "blob"},
		"builder":         {"config", "postgres", "metrics", "http-server", "kafka", "registry", "blob", "device-tokens", "nudger"},
		"authn":           {"config", "postgres", "http-server", "device-tokens"},
		"registry":        {"config"},
		"blob":            {"config"},
		"ingester":        {"config", "postgres", "metrics", "http-server", "kv", "kafka", "telemetry-store", "mqtt-broker", "relay"},
		"scheduler":       {"config", "postgres", "metrics", "audit", "http-server", "kafka", "nudger"},
		"nudger":          {"config", "postgres", "metrics", "kafka"},
		"janitor":         {"config", "postgres", "telemetry-store"},
		"commands":        {"config", "postgres", "metrics", "kafka"},
		"relay":           {"config", "metrics", "kafka", "mqtt-broker"},
		"mqtt-broker":     {"config", "postgres", "metrics", "device-tokens"},
		"device-tokens":   {"config", "postgres"},
		"telemetry-store": {"config", "postgres"},
		"kv":              {"config", "metrics"},
		"kafka":           {"config", "metrics"},
		"http-server":     {"config", "metrics"},
		"audit":           {"config", "metrics"},
		"postgres":        {"config"},
		"metrics":         {"config"},
		"tunnel":          {"config", "postgres", "metrics", "http-server", "kv"},
		"proxy":           {"config", "postgres", "metrics", "http-server", "kv"},
		"events-gateway":  {"config", "postgres", "metrics", "http-server", "kafka"},
		"all":             {"api", "ingester", "scheduler", "registry-proxy", "builder", "delta", "tunnel", "proxy", "events-gateway"},
	}
	for mod, want := range edges {
		if got := m.Deps(mod); !reflect.DeepEqual(got, want) {
			t.Errorf("deps(%s) = %v, want %v", mod, got, want)
		}
	}
	order, err := m.Resolve(modules.ParseTargets("all"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"config", "postgres", "metrics", "audit", "http-server", "kv", "kafka", "telemetry-store", "device-tokens",
		"authn", "registry", "blob", "nudger", "janitor", "commands", "api", "mqtt-broker", "relay", "ingester", "scheduler", "registry-proxy", "builder", "delta", "tunnel", "proxy", "events-gateway", "all"}; !reflect.DeepEqual(order, want) {
		t.Errorf("all resolves to %v, want %v (the HTTP server must start after the stores it serves)", order, want)
	}
}

func TestMainExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{name: "unknown target", args: []string{"--target=nope"}, wantCode: 2,
			wantErr: `flock-api: invalid --target: unknown target "nope" (valid: all, api, builder, delta, events-gateway, ingester, proxy, registry-proxy, scheduler, tunnel)`},
		{name: "unknown target from env", env: map[string]string{"FLOCK_TARGET": "api,bogus"}, wantCode: 2,
			wantErr: `flock-api: invalid FLOCK_TARGET: unknown target "bogus" (valid: all, api, builder, delta, events-gateway, ingester, proxy, registry-proxy, scheduler, tunnel)`},
		{name: "bad address", env: map[string]string{"FLOCK_HTTP_ADDR": "notaport"}, wantCode: 2,
			wantErr: `flock-api: invalid FLOCK_HTTP_ADDR: "notaport": want host:port or :port`},
		{name: "unknown flag", args: []string{"--nope"}, wantCode: 2},
		{name: "list targets", args: []string{"--list-targets"}, wantCode: 0,
			wantOut: "all\n  needs: api, ingester, scheduler, registry-proxy, builder, delta, tunnel, proxy, events-gateway\napi\n  needs: config, postgres, metrics, audit, http-server, kv, kafka, telemetry-store, device-tokens, authn, registry, blob, nudger, janitor, commands\nbuilder\n  needs: config, postgres, metrics, http-server, kafka, registry, blob, device-tokens, nudger\ndelta\n  needs: config, postgres, metrics, http-server, kafka, registry, blob\nevents-gateway\n  needs: config, postgres, metrics, http-server, kafka\ningester\n  needs: config, postgres, metrics, http-server, kv, kafka, telemetry-store, mqtt-broker, relay\nproxy\n  needs: config, postgres, metrics, http-server, kv\nregistry-proxy\n  needs: config, postgres, metrics, http-server, device-tokens, authn, registry\nscheduler\n  needs: config, postgres, metrics, audit, http-server, kafka, nudger\ntunnel\n  needs: config, postgres, metrics, http-server, kv\n"},
		{name: "print config", args: []string{"--print-config", "--database-url=postgres://u:pw@h/db"}, wantCode: 0,
			wantOut: `"postgres://u:xxxxx@h/db"`},
		{name: "migrate without verb", args: []string{"migrate"}, wantCode: 2},
		{name: "migrate bad verb", args: []string{"migrate", "sideways"}, wantCode: 2, wantErr: `unknown verb "sideways"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := app.Main(context.Background(), tt.args, &stdout, &stderr, func(k string) string { return tt.env[k] })
			if code != tt.wantCode {
				t.Fatalf("exit = %d, want %d; stderr %s", code, tt.wantCode, stderr.String())
			}
			if tt.wantErr != "" {
				if got := strings.TrimSpace(stderr.String()); !strings.Contains(got, tt.wantErr) || strings.Count(got, "\n") > 0 {
					t.Errorf("stderr = %q, want one line containing %q", got, tt.wantErr)
				}
			}
			if tt.wantOut != "" && !strings.Contains(stdout.String(), tt.wantOut) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.wantOut)
			}
			if strings.Contains(stdout.String(), ":pw@") {
				t.Errorf("secret printed: %s", stdout.String())
			}
		})
	}
}
