package asyncapi_test

import (
	"errors"
	"github.com/flock-io/flock-api/asyncapi"
	"reflect"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v.Kinds(), []string{"command-results", "commands", "events", "logs", "state", "status", "target", "telemetry"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("kinds = %v, want %v", got, want)
	}
	tests := []struct {
		kind, payload string
		wantMalformed bool
		wantProblem   string // "" = valid
	}{
		{kind: "state", payload: `{"seq":3,"os_version":"1.0","services":[{"name":"app","status":"running","download_progress":100}]}`},
		{kind: "state", payload: `{"os_version":"1.0"}`, wantProblem: "seq"},
		{kind: "state", payload: `{"seq":1,"services":[{"name":"app","status":"dancing"}]}`, wantProblem: "/services/0/status"},
		{kind: "state", payload: `{"seq":1,"colour":"red"}`, wantProblem: "colour"},
		{kind: "state", payload: `{"seq":1,"running_release_id":"not-a-uuid"}`, wantProblem: "/running_release_id"},
		{kind: "state", payload: `{"seq":`, wantMalformed: true},
		{kind: "telemetry", payload: `{"samples":[{"ts":"2026-11-27T08:00:00Z","name":"cpu.temperature","value":51.5,"unit":"C"}]}`},
		{kind: "telemetry", payload: `{"samples":[{"ts":"yesterday","name":"cpu","value":1}]}`, wantProblem: "/samples/0/ts"},
		{kind: "telemetry", payload: `{"samples":[]}`, wantProblem: "/samples"},
		{kind: "logs", payload: `{"entries":[{"service":"app","seq":7,"ts":"2026-11-27T08:00:00Z","stream":"stdout","line":"hello"}]}`},
		{kind: "logs", payload: `{"entries":[{"service":"app","seq":7,"ts":"2026-11-27T08:00:00Z","stream":"stdin","line":"x"}]}`, wantProblem: "/entries/0/stream"},
		{kind: "events", payload: `{"id":"0f8d6c1e-3b53-4c11-9e5e-4f1f0c8b9a10","ts":"2026-11-27T08:00:00Z","type":"installed"}`},
		{kind: "events", payload: `{"id":"x","ts":"2026-11-27T08:00:00Z","type":"installed"}`, wantProblem: "/id"},
		{kind: "status", payload: `{"state":"offline","connection_seq":3}`},
		{kind: "status", payload: `{"state":"asleep"}`, wantProblem: "/state"},
		{kind: "command-results", payload: `{"id":"0f8d6c1e-3b53-4c11-9e5e-4f1f0c8b9a10","status":"failed","error":"no such service","ts":"2026-11-27T08:00:00Z"}`},
		{kind: "command-results", payload: `{"id":"0f8d6c1e-3b53-4c11-9e5e-4f1f0c8b9a10","status":"done","ts":"2026-11-27T08:00:00Z"}`, wantProblem: "/status"},
	}
	for _, tt := range tests {
		t.Run(tt.kind+" "+tt.payload, func(t *testing.T) {
			err := v.Validate(tt.kind, []byte(tt.payload))
			if tt.wantProblem == "" && !tt.wantMalformed {
				if err != nil {
					t.Fatalf("valid payload refused: %v", err)
				}
				return
			}
			var pe *asyncapi.PayloadError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want a PayloadError", err)
			}
			if pe.Malformed != tt.wantMalformed || !strings.Contains(err.Error(), tt.wantProblem) {
				t.Fatalf("err = %v (malformed %v), want it to name %q", err, pe.Malformed, tt.wantProblem)
			}
		})
	}
	if err := v.Validate("selfie", []byte(`{}`)); !errors.Is(err, asyncapi.ErrUnknownChannel) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func TestValidateRecord(t *testing.T) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	const base = `"device_id":"0f8d6c1e-3b53-4c11-9e5e-4f1f0c8b9a10","org_id":"1f8d6c1e-3b53-4c11-9e5e-4f1f0c8b9a10","fleet_id":"2f8d6c1e-3b53-4c11-9e5e-4f1f0c8b9a10","received_at":"2026-11-27T08:00:00Z"`
	tests := []struct {
		topic, value string
		ok           bool
	}{
		{"flock.device.telemetry.v1", `{` + base + `,"samples":[{"ts":"2026-11-27T08:00:00Z","name":"cpu","value":1}]}`, true},
		{"flock.device.telemetry.v1", `{` + base + `}`, false},
		{"flock.device.state.v1", `{` + base + `,"state":{"seq":1}}`, true},
		{"flock.device.state.v1", `{` + base + `,"state":{"seq":"one"}}`, false},
		{"flock.device.logs.v1", `{"entries":[]}`, false},
	}
	for _, tt := range tests {
		err := v.ValidateRecord(tt.topic, []byte(tt.value))
		if (err == nil) != tt.ok {
			t.Errorf("%s %s: err = %v, want ok %v", tt.topic, tt.value, err, tt.ok)
		}
	}
	if err := v.ValidateRecord("flock.nothing.v1", []byte(`{}`)); !errors.Is(err, asyncapi.ErrUnknownChannel) {
		t.Errorf("unknown topic: %v", err)
	}
}
