package rollout

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

// Window is a maintenance window: it opens at every time Cron names (five
// fields, minute to weekday, in TimeZone) and stays open DurationSeconds.
// Devices are newly targeted only while a window is open.
type Window struct {
	Cron            string `json:"cron"`
	DurationSeconds int    `json:"duration_seconds"`
	TimeZone        string `json:"time_zone,omitempty"` // IANA name; default UTC
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Check says what is wrong with w, naming the field.
func (w Window) Check() *FieldError {
	if _, err := cronParser.Parse(w.Cron); err != nil {
		return &FieldError{Field: "/cron", Detail: fmt.Sprintf("not a cron expression (minute hour day month weekday): %v", err)}
	}
	if w.DurationSeconds < 60 || w.DurationSeconds > 7*24*3600 {
		return &FieldError{Field: "/duration_seconds", Detail: "must be between 60 (a minute) and 604800 (a week)"}
	}
	if _, err := time.LoadLocation(w.zone()); err != nil {
		return &FieldError{Field: "/time_zone", Detail: fmt.Sprintf("unknown time zone %q", w.TimeZone)}
	}
	return nil
}

func (w Window) zone() string {
	if w.TimeZone == "" {
		return "UTC"
	}
	return w.TimeZone
}

// Open reports whether the window is open at now, and when it next opens
// (or, when open, when it closes). A window that does not parse is closed:
// Check refuses such windows before they are stored.
func (w Window) Open(now time.Time) (open bool, next time.Time) {
	sched, err := cronParser.Parse(w.Cron)
	if err != nil {
		return false, time.Time{}
	}
	loc, err := time.LoadLocation(w.zone())
	if err != nil {
		return false, time.Time{}
	}
	length := time.Duration(w.DurationSeconds) * time.Second
	local := now.In(loc)
	// The window is open when its latest opening at or before now is less
	// than its length ago. Openings are whole minutes; look from just
	// before now-length.
	var latest time.Time
	for t := sched.Next(local.Add(-length - time.Second)); !t.After(local); t = sched.Next(t) {
		latest = t
	}
	if !latest.IsZero() && local.Before(latest.Add(length)) {
		return true, latest.Add(length)
	}
	return false, sched.Next(local)
}
