package tether

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether/internal/frame"
)

// A polling request holds its session's TTL off only for as long as a
// request may last: one that never ends cannot keep the session for ever.
func TestPollRequestCannotHoldTTL(t *testing.T) {
	t.Parallel()
	h := NewHandler(func(ctx context.Context, s *Session) { <-ctx.Done() },
		WithPollLimits(0, 0, 100*time.Millisecond), WithSessionTTL(100*time.Millisecond))
	defer h.Close()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/?tether=open", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	fs, err := frame.DecodeBatch(rec.Body.Bytes(), 1, 1<<10)
	require.NoError(t, err)
	h.mu.Lock()
	s := h.sessions[fs[0].Session]
	h.mu.Unlock()
	require.NotNil(t, s)
	s.linkMu.Lock()
	p := s.poll
	s.linkMu.Unlock()

	start := time.Now()
	p.begin() // a request that hangs: it never finishes
	deadline := time.Now().Add(5 * time.Second)
	for h.Sessions() != 0 {
		require.True(t, time.Now().Before(deadline), "a hung request kept the session")
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	require.GreaterOrEqual(t, took, h.maxRequestTime(), "held off while the request could still be going")
	t.Logf("expired %v after the request began", took)
}

// Tombstones expire oldest first, without a scan, and are not found once
// expired or with the wrong secret; at most max are kept.
func TestTombstoneQueue(t *testing.T) {
	t.Parallel()
	ts := newTombstones()
	now := time.Now()
	id := func(i byte) [16]byte { return [16]byte{i} }
	secret := [16]byte{9}
	for i := range byte(10) {
		ts.add(id(i), tombstone{secret: secret, code: 1000, until: now.Add(time.Duration(i) * time.Second)}, 8)
	}
	require.Equal(t, 8, ts.len(), "at most max kept: the oldest dropped")
	_, ok := ts.find(id(1), secret, now)
	require.False(t, ok, "dropped")
	_, ok = ts.find(id(5), secret, now)
	require.True(t, ok)
	_, ok = ts.find(id(5), [16]byte{8}, now)
	require.False(t, ok, "wrong secret")
	_, ok = ts.find(id(5), secret, now.Add(5*time.Second))
	require.False(t, ok, "expired")

	ts.expire(now.Add(5 * time.Second))
	require.Equal(t, 4, ts.len(), "6, 7, 8 and 9 left")
	_, ok = ts.find(id(6), secret, now.Add(5*time.Second))
	require.True(t, ok)
	ts.expire(now.Add(time.Hour))
	require.Zero(t, ts.len())
	require.Zero(t, len(ts.order), "the queue is emptied, not just skipped")

	// Many more than the queue's compaction point, in waves.
	for wave := range 5 {
		base := now.Add(time.Duration(wave) * time.Minute)
		for i := range 1000 {
			ts.add([16]byte{byte(wave), byte(i), byte(i >> 8)}, tombstone{until: base.Add(time.Duration(i) * time.Millisecond)}, 10000)
		}
		ts.expire(base.Add(500 * time.Millisecond))
		require.LessOrEqual(t, len(ts.order)-ts.head, 500)
		require.Equal(t, len(ts.order)-ts.head, ts.len())
	}
}
