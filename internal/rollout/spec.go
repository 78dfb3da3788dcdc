package rollout

import (
	"fmt"
	"math"
	"time"
)

// Spec is a rollout's settings (stored as JSON in rollouts.spec).
type Spec struct {
	// RatePerMinute bounds how many devices are newly targeted per minute;
	// 0 for no bound.
	RatePerMinute float64 `json:"rate_per_minute,omitempty"`
	// Ramp raises the rate as devices succeed (AWS IoT Jobs'
	// exponentialRate): the rate is multiplied by Factor each time
	// another EverySucceeded devices have succeeded, up to MaxPerMinute.
	Ramp *Ramp `json:"ramp,omitempty"`
	// Window, when set, is when devices may be newly targeted; it overrides
	// the fleet's.
	Window *Window `json:"maintenance_window,omitempty"`
	// SettleSeconds: how long a device must run the release healthy to
	// count as succeeded (and going offline within it is a failure).
	SettleSeconds int `json:"settle_seconds"`
	// RollbackOnAbort: an abort puts every touched device back on its
	// previous release.
	RollbackOnAbort bool `json:"rollback_on_abort"`
}

// Ramp is an exponential rate ramp.
type Ramp struct {
	Factor         float64 `json:"increment_factor"`
	EverySucceeded int     `json:"every_succeeded"`
	MaxPerMinute   float64 `json:"max_per_minute,omitempty"`
}

// GroupSpec is one group's settings (rollout_groups.spec).
type GroupSpec struct {
	Name string `json:"name"`
	// Exactly one of Percent (of the selected devices) and Count, except
	// for the last group, which takes every device the others did not when
	// both are absent.
	Percent *float64 `json:"percent,omitempty"`
	Count   *int     `json:"count,omitempty"`
	// Tags, when set, limit the group to devices carrying all of them.
	Tags map[string]string `json:"tags,omitempty"`
	// SuccessThreshold: the share (0-100) of the group's devices that must
	// succeed before the next group starts.
	SuccessThreshold float64 `json:"success_threshold"`
	// ErrorThreshold, when set, pauses or aborts the rollout when too many
	// of the group's devices fail.
	ErrorThreshold *ErrorThreshold `json:"error_threshold,omitempty"`
	// DeviceTimeoutSeconds bounds each device's update from the moment it
	// is targeted.
	DeviceTimeoutSeconds int `json:"device_timeout_seconds"`
	// SoakSeconds: how long to wait after the success threshold is met
	// before the next group starts.
	SoakSeconds int `json:"soak_seconds,omitempty"`
	// RequiresApproval: the next group waits for an approve.
	RequiresApproval bool `json:"requires_approval,omitempty"`
}

// ErrorThreshold is AWS IoT Jobs' abort criterion: when at least MinSample
// of the group's devices have finished and more than Percent of them ended
// in one of FailureTypes, Action happens.
type ErrorThreshold struct {
	Percent      float64  `json:"percent"`
	MinSample    int      `json:"min_sample"`
	FailureTypes []string `json:"failure_types,omitempty"` // default all: failed, timed_out, unreached
	Action       string   `json:"action"`                  // pause or abort
}

// Error threshold actions.
const (
	ThresholdPause = "pause"
	ThresholdAbort = "abort"
)

// Defaults.
const (
	DefaultSettle        = 60 * time.Second
	DefaultDeviceTimeout = time.Hour
)

// FieldError is a setting that cannot be: the API turns it into a 400
// naming the field (a JSON pointer into the request body).
type FieldError struct {
	Field  string
	Detail string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// FieldErrors are every setting that cannot be.
type FieldErrors []*FieldError

func (es FieldErrors) Error() string {
	if len(es) == 0 {
		return "no errors"
	}
	msg := es[0].Error()
	if len(es) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(es)-1)
	}
	return msg
}

func pct(v float64) bool { return !math.IsNaN(v) && v >= 0 && v <= 100 }

// Check validates a rollout's settings and groups against the number of
// devices selected; the returned error is FieldErrors.
func Check(s Spec, groups []GroupSpec, selected int) error {
	var errs FieldErrors
	add := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	if s.RatePerMinute < 0 || math.IsNaN(s.RatePerMinute) {
		add("/rate_per_minute", "must be 0 (no limit) or positive")
	}
	if s.Ramp != nil {
		if s.RatePerMinute <= 0 {
			add("/ramp", "needs a rate_per_minute to start from")
		}
		if s.Ramp.Factor <= 1 || s.Ramp.Factor > 5 {
			add("/ramp/increment_factor", "must be above 1 and at most 5")
		}
		if s.Ramp.EverySucceeded < 1 {
			add("/ramp/every_succeeded", "must be at least 1")
		}
		if s.Ramp.MaxPerMinute != 0 && s.Ramp.MaxPerMinute < s.RatePerMinute {
			add("/ramp/max_per_minute", "must not be below rate_per_minute")
		}
	}
	if s.Window != nil {
		if err := s.Window.Check(); err != nil {
			add("/maintenance_window"+err.Field, "%s", err.Detail)
		}
	}
	if s.SettleSeconds < 0 {
		add("/settle_seconds", "must not be negative")
	}
	if len(groups) == 0 {
		add("/groups", "a rollout needs at least one group")
	}
	var share float64
	count := 0
	for i, g := range groups {
		f := fmt.Sprintf("/groups/%d", i)
		last := i == len(groups)-1
		switch {
		case g.Percent != nil && g.Count != nil:
			add(f, "give percent or count, not both")
		case g.Percent == nil && g.Count == nil && !last:
			add(f, "give percent or count (only the last group may leave both out, to take the rest)")
		case g.Percent != nil && (!pct(*g.Percent) || *g.Percent == 0):
			add(f+"/percent", "must be above 0 and at most 100")
		case g.Count != nil && *g.Count < 1:
			add(f+"/count", "must be at least 1")
		}
		if last && len(g.Tags) > 0 && len(groups) > 1 {
			// Plan hands the last group every device the others left; a tag
			// filter there would leave devices out of the rollout, to be
			// moved unwatched when the fleet takes the release at the end.
			add(f+"/tags", "the last group takes every device the others leave; it cannot have tags")
		}
		if g.Percent != nil {
			share += *g.Percent
		}
		if g.Count != nil {
			count += *g.Count
		}
		if !pct(g.SuccessThreshold) {
			add(f+"/success_threshold", "must be between 0 and 100")
		}
		if t := g.ErrorThreshold; t != nil {
			if !pct(t.Percent) {
				add(f+"/error_threshold/percent", "must be between 0 and 100")
			}
			if t.MinSample < 1 {
				add(f+"/error_threshold/min_sample", "must be at least 1")
			}
			if t.Action != ThresholdPause && t.Action != ThresholdAbort {
				add(f+"/error_threshold/action", "must be pause or abort")
			}
			for j, ft := range t.FailureTypes {
				if ft != FailureFailed && ft != FailureTimedOut && ft != FailureUnreached {
					add(fmt.Sprintf("%s/error_threshold/failure_types/%d", f, j), "must be failed, timed_out or unreached")
				}
			}
		}
		if g.DeviceTimeoutSeconds < 0 {
			add(f+"/device_timeout_seconds", "must not be negative")
		}
		if g.SoakSeconds < 0 {
			add(f+"/soak_seconds", "must not be negative")
		}
	}
	if share > 100.0001 {
		add("/groups", "the groups' percentages add up to %.4g%%, more than the fleet", share)
	}
	if need := count + int(math.Ceil(share/100*float64(selected)-1e-9)); count > 0 && need > selected {
		add("/groups", "the groups ask for %d devices; %d are selected", need, selected)
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// timeout is the group's device timeout, or the default.
func (g GroupSpec) timeout() time.Duration {
	if g.DeviceTimeoutSeconds > 0 {
		return time.Duration(g.DeviceTimeoutSeconds) * time.Second
	}
	return DefaultDeviceTimeout
}

// Timeout is how long a device of the group may take from being targeted.
func (g GroupSpec) Timeout() time.Duration { return g.timeout() }

// Settle is the rollout's settle time (the API fills in DefaultSettle when
// a request leaves it out).
func (s Spec) Settle() time.Duration { return time.Duration(s.SettleSeconds) * time.Second }
