package auth

import (
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/auth/oidcverify"
)

func TestTokenCacheNeverOutlivesTheToken(t *testing.T) {
	c := newTokenCache[oidcverify.Claims]()
	c.put(sha256Key("live"), &oidcverify.Claims{Subject: "a"}, time.Now().Add(time.Hour))
	c.put(sha256Key("dead"), &oidcverify.Claims{Subject: "b"}, time.Now().Add(-time.Second))
	if cl, ok := c.get(sha256Key("live")); !ok || cl.Subject != "a" {
		t.Fatalf("live token not cached: %v %v", cl, ok)
	}
	if _, ok := c.get(sha256Key("dead")); ok {
		t.Fatal("an expired token was served from the cache")
	}
	if _, ok := c.get(sha256Key("never-seen")); ok {
		t.Fatal("cache hit for an unknown token")
	}
	if e := c.m[sha256Key("live")]; e.until.After(time.Now().Add(tokenCacheTTL)) {
		t.Fatalf("cached until %v, beyond the TTL", e.until)
	}
}

func TestTokenCacheIsBounded(t *testing.T) {
	c := newTokenCache[oidcverify.Claims]()
	exp := time.Now().Add(time.Hour)
	for i := range tokenCacheSize + 50 {
		c.put(sha256Key(string(rune(i))+"-token"), &oidcverify.Claims{}, exp)
	}
	if len(c.m) > tokenCacheSize {
		t.Fatalf("cache holds %d tokens, bound is %d", len(c.m), tokenCacheSize)
	}
}

func TestAPIKeyFormat(t *testing.T) {
	id := [16]byte{1, 2, 3}
	secret, prefix, hash, err := NewAPIKeySecret(id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseAPIKey(secret)
	if err != nil || got != id {
		t.Fatalf("parse(%q) = %v, %v", secret, got, err)
	}
	if !secretMatches(secret, hash) || secretMatches(secret+"x", hash) || len(prefix) != 12 {
		t.Fatal("hash or prefix wrong")
	}
	for _, bad := range []string{"flk_", "flk_abc_def", "nope", "flk_" + "zz" + secret[6:]} {
		if _, err := parseAPIKey(bad); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
}
