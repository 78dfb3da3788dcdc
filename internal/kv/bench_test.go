package kv_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/kv"
)

// A reported-state document of roughly the size devices send.
var benchValue = make([]byte, 512)

func benchStores() []struct {
	name string
	new  func(b *testing.B) kv.Store
} {
	return []struct {
		name string
		new  func(b *testing.B) kv.Store
	}{
		{"memory", func(b *testing.B) kv.Store { return newMemory(b) }},
		{"redis", func(b *testing.B) kv.Store { return newRedis(b, redisURL()) }},
	}
}

// benchPrefix keeps benchmark keys apart from other runs and lets cleanup
// delete exactly them.
func benchPrefix(b *testing.B, s kv.Store, keys *[]string) string {
	p := make([]byte, 8)
	_, _ = rand.Read(p)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, k := range *keys {
			if err := s.Delete(ctx, k); err != nil {
				b.Errorf("cleanup: %v", err)
				return
			}
		}
	})
	return "kvbench:" + hex.EncodeToString(p) + ":"
}

// BenchmarkSetIfNewer is the ingester's write: each goroutine stands for a
// device with its own key and a rising connection sequence, so every call
// stores.
func BenchmarkSetIfNewer(b *testing.B) {
	for _, st := range benchStores() {
		b.Run(st.name, func(b *testing.B) {
			s := st.new(b)
			var keys []string
			prefix := benchPrefix(b, s, &keys)
			var next atomic.Int64
			// Goroutine keys are known only inside RunParallel; reserve
			// enough names for cleanup up front.
			for i := range 4096 {
				keys = append(keys, fmt.Sprintf("%sdev%d", prefix, i))
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				key := keys[int(next.Add(1)-1)%len(keys)]
				var seq uint64
				for pb.Next() {
					seq++
					if _, err := s.SetIfNewer(ctx, key, seq, benchValue, time.Hour); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkGet reads from a populated keyspace, as the API does when it
// shows a fleet's devices.
func BenchmarkGet(b *testing.B) {
	const population = 1024
	for _, st := range benchStores() {
		b.Run(st.name, func(b *testing.B) {
			s := st.new(b)
			var keys []string
			prefix := benchPrefix(b, s, &keys)
			ctx := context.Background()
			for i := range population {
				k := fmt.Sprintf("%sdev%d", prefix, i)
				keys = append(keys, k)
				if _, err := s.SetIfNewer(ctx, k, 1, benchValue, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(next.Add(1)) * 97
				for pb.Next() {
					i++
					if _, err := s.Get(ctx, keys[i%population]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
