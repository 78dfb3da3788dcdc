package kv_test

import (
	"testing"

	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/kv/kvtest"
)

func newMemory(t testing.TB) kv.Store {
	m := kv.NewMemory()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close memory store: %v", err)
		}
	})
	return m
}

func TestMemory(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.Store { return newMemory(t) })
}
