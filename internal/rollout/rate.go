package rollout

import (
	"math"
	"time"
)

// MaxTargetBatch bounds how many devices one step targets at once, rate
// or not, so a step's transaction and its nudges stay small.
const MaxTargetBatch = 1000

// Rate is how many devices per minute may be newly targeted once
// succeeded devices have succeeded: the spec's rate, raised by its ramp
// (multiplied by Factor for every EverySucceeded successes, up to
// MaxPerMinute). 0 means no limit.
func Rate(s Spec, succeeded int) float64 {
	r := s.RatePerMinute
	if r <= 0 || s.Ramp == nil || s.Ramp.EverySucceeded < 1 {
		return r
	}
	r *= math.Pow(s.Ramp.Factor, float64(succeeded/s.Ramp.EverySucceeded))
	if m := s.Ramp.MaxPerMinute; m > 0 && r > m {
		r = m
	}
	return r
}

// Bucket is the rate limiter's state: tokens available at At.
type Bucket struct {
	Tokens float64
	At     time.Time
}

// Take refills the bucket for the time since At at perMinute (holding at
// most a tenth of a minute's worth, and never less than one token, so
// targeting is spread over the minute rather than bursting) and takes up
// to want whole tokens; it returns how many it took and the bucket after.
// perMinute 0 takes want, up to MaxTargetBatch.
func (b Bucket) Take(perMinute float64, want int, now time.Time) (int, Bucket) {
	want = min(want, MaxTargetBatch)
	if perMinute <= 0 {
		return want, Bucket{At: now}
	}
	burst := math.Max(1, perMinute/10)
	tokens := b.Tokens
	if !b.At.IsZero() && now.After(b.At) {
		tokens += now.Sub(b.At).Minutes() * perMinute
	} else if b.At.IsZero() {
		tokens = 1 // the first device goes at once
	}
	tokens = math.Min(tokens, burst)
	n := min(want, int(math.Floor(tokens)))
	return n, Bucket{Tokens: tokens - float64(n), At: now}
}
