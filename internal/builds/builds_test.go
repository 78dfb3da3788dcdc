package builds

import (
	"testing"

	"github.com/flock-io/flock-api/gen/db"
)

func TestCanBuild(t *testing.T) {
	tests := []struct {
		name     string
		archs    []string
		arch     string
		needsRun bool
		want     bool
	}{
		{"runs nothing: any builder", []string{"amd64"}, "arm64", false, true},
		{"runs nothing: builder with no archs", nil, "arm64", false, true},
		{"runs: native", []string{"amd64"}, "amd64", true, true},
		{"runs: emulated", []string{"amd64", "arm64", "arm"}, "arm", true, true},
		{"runs: foreign", []string{"amd64", "arm64"}, "riscv64", true, false},
		{"runs: builder with no archs", nil, "amd64", true, false},
		{"runs: empty list", []string{}, "amd64", true, false},
		{"runs: names compared exactly", []string{"AMD64", "arm64/v8"}, "amd64", true, false},
		{"runs: prefix is no match", []string{"arm"}, "arm64", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := db.BuildImage{Service: "web", Architecture: tt.arch, NeedsRun: tt.needsRun}
			if got := CanBuild(tt.archs, img); got != tt.want {
				t.Fatalf("CanBuild(%q, %s needs_run=%v) = %v, want %v", tt.archs, tt.arch, tt.needsRun, got, tt.want)
			}
		})
	}
}

func TestCanAnyBuild(t *testing.T) {
	amd := db.Builder{Holder: "a", Architectures: []string{"amd64"}}
	arm := db.Builder{Holder: "b", Architectures: []string{"arm64", "arm"}}
	tests := []struct {
		name     string
		builders []db.Builder
		arch     string
		needsRun bool
		want     bool
	}{
		{"no builders, runs nothing", nil, "amd64", false, false},
		{"no builders, runs", nil, "amd64", true, false},
		{"one builder, runs nothing", []db.Builder{amd}, "arm64", false, true},
		{"one builder, native", []db.Builder{amd}, "amd64", true, true},
		{"one builder, foreign", []db.Builder{amd}, "arm64", true, false},
		{"second builder can", []db.Builder{amd, arm}, "arm", true, true},
		{"none can", []db.Builder{amd, arm}, "riscv64", true, false},
		{"builder with no archs, runs nothing", []db.Builder{{Holder: "c"}}, "riscv64", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := db.BuildImage{Service: "web", Architecture: tt.arch, NeedsRun: tt.needsRun}
			if got := CanAnyBuild(tt.builders, img); got != tt.want {
				t.Fatalf("CanAnyBuild = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEndedAndKeys(t *testing.T) {
	for s, want := range map[string]bool{StatusQueued: false, StatusRunning: false, StatusSucceeded: true,
		StatusFailed: true, StatusCancelled: true, "": false} {
		if Ended(s) != want {
			t.Errorf("Ended(%q) = %v", s, !want)
		}
	}
	if got := SourceKey("b1"); got != "builds/b1/source.tar" {
		t.Errorf("SourceKey = %q", got)
	}
	if got := LogKey("b1"); got != "builds/b1/log.txt.gz" {
		t.Errorf("LogKey = %q", got)
	}
}
