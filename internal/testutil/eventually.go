// Package testutil holds what the tests of every package share; its
// subpackages hold the heavier fixtures (a migrated database, the running
// server).
package testutil

import (
	"errors"
	"testing"
	"time"
)

// Wait is how long Eventually waits before it fails the test. It is
// generous: tests run under -race, many packages at once, on two cores, and
// a condition that holds is seen at once however long Wait is.
const Wait = 30 * time.Second

var errNotYet = errors.New("condition not met")

// Eventually calls check until it returns nil, and fails t with what and
// check's last error when Wait passes first. It calls t.Fatalf, so it must
// run on the test's goroutine. To prove that something did NOT happen,
// do not wait and then look: make something that must come after it happen
// and wait for that instead.
func Eventually(t testing.TB, what string, check func() error) {
	t.Helper()
	EventuallyWithin(t, Wait, what, check)
}

// EventuallyWithin is Eventually for conditions that stand behind real work
// whose length the test does not control (an image build runs buildah,
// several at once under load), with its own bound.
func EventuallyWithin(t testing.TB, within time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %v", within, what, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// Until adapts a boolean condition to Eventually.
func Until(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}
}
