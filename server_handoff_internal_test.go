package tether

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// parkedSession returns a session of a Handler (not served) whose client
// has acknowledged the first acked of the sent messages, and whose serve
// has read read of the client's.
func parkedSession(t testing.TB, sent []string, acked int, read uint64) *Session {
	t.Helper()
	h := NewHandler(func(context.Context, *Session) {})
	t.Cleanup(func() { _ = h.Close() })
	s := newSession(h, context.Background(), window{64 << 10, 128}, false)
	t.Cleanup(func() { s.end(websocket.StatusNormalClosure, "", errSessionDone) })
	s.markUsed()
	for i, p := range sent {
		typ := websocket.MessageText
		if i%2 == 1 {
			typ = websocket.MessageBinary
		}
		_, ok := s.seq.add(typ, []byte(p))
		require.True(t, ok)
	}
	s.seq.acked(uint64(acked))
	s.seq.recv, s.seq.taken = read, read
	return s
}

func TestParkedRoundTrip(t *testing.T) {
	s := parkedSession(t, []string{"one", "two", "", "four"}, 1, 7)
	b, err := encodeParked(s, DefaultHandoffLimit)
	require.NoError(t, err)
	ps, err := decodeParked(b, s.id, DefaultHandoffLimit)
	require.NoError(t, err)
	require.Equal(t, s.secret, ps.secret)
	require.Equal(t, s.win, ps.win)
	require.True(t, ps.used)
	require.Equal(t, uint64(7), ps.taken)
	require.Equal(t, uint64(1), ps.peerAck)

	h := NewHandler(func(context.Context, *Session) {})
	defer h.Close()
	n := initSession(h, context.Background(), ps.win, false, ps.id, ps.secret)
	defer n.end(websocket.StatusNormalClosure, "", errSessionDone)
	n.restore(ps)
	require.Equal(t, uint64(4), n.seq.nextSeq)
	require.Equal(t, uint64(7), n.seq.recv)
	require.Equal(t, uint64(7), n.seq.taken)
	require.Equal(t, s.seq.replayLen, n.seq.replayLen, "the window is charged as before")
	got := n.seq.unacked(1)
	require.Len(t, got, 3)
	for i, want := range []struct {
		seq    uint64
		binary bool
		p      string
	}{{2, true, "two"}, {3, false, ""}, {4, true, "four"}} {
		require.Equal(t, want.seq, got[i].Seq)
		require.Equal(t, want.binary, got[i].Binary)
		require.Equal(t, want.p, string(got[i].Payload))
	}
	again, err := encodeParked(n, DefaultHandoffLimit)
	require.NoError(t, err)
	require.Equal(t, b, again, "the state survives a second handoff unchanged")
}

func TestParkedLimit(t *testing.T) {
	s := parkedSession(t, []string{string(make([]byte, 4090))}, 0, 0)
	_, err := encodeParked(s, 4096)
	require.ErrorIs(t, err, errTooLargeToPark)
	b, err := encodeParked(s, 8192)
	require.NoError(t, err)
	_, err = decodeParked(b, s.id, 4096)
	require.ErrorIs(t, err, errBadParked, "the reader keeps to its own limit")
}

func TestParkedRefused(t *testing.T) {
	s := parkedSession(t, []string{"a", "b"}, 0, 3)
	good, err := encodeParked(s, DefaultHandoffLimit)
	require.NoError(t, err)
	var other [16]byte
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for name, b := range map[string][]byte{
		"empty":         nil,
		"version":       mutate(func(b []byte) []byte { b[0] = 2; return b }),
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte(nil), good...), 0),
		"zero window":   mutate(func(b []byte) []byte { b[33] = 0; return b }),
		"flags":         mutate(func(b []byte) []byte { b[33+3+1] = 0x80; return b }),
		"invalid UTF-8": mutate(func(b []byte) []byte { b[len(b)-4] = 0xff; return b }), // "a" is text
		"huge count":    mutate(func(b []byte) []byte { return append(b[:33+3+1+1+1+1], 0xff, 0xff, 0x03) }),
	} {
		_, err := decodeParked(b, s.id, DefaultHandoffLimit)
		require.ErrorIs(t, err, errBadParked, name)
	}
	_, err = decodeParked(good, other, DefaultHandoffLimit)
	require.ErrorIs(t, err, errBadParked, "another session's state")
}

// FuzzDecodeParked: no input panics or allocates beyond what it justifies,
// and what decodes encodes back to a state that decodes the same.
func FuzzDecodeParked(f *testing.F) {
	s := parkedSession(f, []string{"hello", "", "world"}, 1, 2)
	good, _ := encodeParked(s, DefaultHandoffLimit)
	f.Add(good)
	f.Add([]byte{parkedVersion})
	f.Add(append(append([]byte{parkedVersion}, s.id[:]...), make([]byte, 40)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		id := s.id
		if len(b) >= 17 {
			copy(id[:], b[1:17])
		}
		ps, err := decodeParked(b, id, 1<<16)
		if err != nil {
			require.ErrorIs(t, err, errBadParked)
			return
		}
		h := NewHandler(func(context.Context, *Session) {})
		defer h.Close()
		n := initSession(h, context.Background(), ps.win, false, ps.id, ps.secret)
		defer n.end(websocket.StatusNormalClosure, "", errSessionDone)
		n.restore(ps)
		again, err := encodeParked(n, 1<<20)
		require.NoError(t, err)
		ps2, err := decodeParked(again, id, 1<<20)
		require.NoError(t, err)
		require.Equal(t, ps.taken, ps2.taken)
		require.Equal(t, ps.peerAck, ps2.peerAck)
		require.Equal(t, len(ps.msgs), len(ps2.msgs))
		for i := range ps.msgs {
			require.True(t, bytes.Equal(ps.msgs[i].p, ps2.msgs[i].p))
		}
	})
}

func TestNote(t *testing.T) {
	var secret, other [16]byte
	secret[0], other[0] = 1, 2
	note := encodeNote(secret, 4001, "bye")
	code, reason, ok := decodeNote(note, secret)
	require.True(t, ok)
	require.Equal(t, websocket.StatusCode(4001), code)
	require.Equal(t, "bye", reason)
	require.False(t, bytes.Contains(note, secret[:]), "the secret itself is not in the directory")
	_, _, ok = decodeNote(note, other)
	require.False(t, ok, "told only to the session's holder")
	for _, bad := range [][]byte{nil, note[:10], append([]byte{9}, note[1:]...), encodeNote(secret, 999, "")} {
		_, _, ok := decodeNote(bad, secret)
		require.False(t, ok)
	}
}

// The Handler's own 503 and 429 say "try again": they are no sign that
// the path blocks WebSocket, and do not move a client to long polling.
func TestHandlerRetryIsNotBlocked(t *testing.T) {
	for _, tc := range []struct {
		status  int
		handler bool
		blocks  bool
	}{
		{http.StatusServiceUnavailable, true, false},
		{http.StatusTooManyRequests, true, false},
		{http.StatusServiceUnavailable, false, true},
		{http.StatusBadGateway, true, true},
	} {
		err := &HandshakeError{StatusCode: tc.status, handler: tc.handler}
		require.Equal(t, tc.blocks, blocksWebSocket(err), "%d handler=%v", tc.status, tc.handler)
	}
}

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(10, 5)
	now := time.Unix(1000, 0)
	n := 0
	for range 100 {
		if b.take(now) {
			n++
		}
	}
	require.Equal(t, 5, n, "the burst")
	require.False(t, b.take(now.Add(50*time.Millisecond)))
	require.True(t, b.take(now.Add(150*time.Millisecond)), "refilled at the rate")
}

// A forward whose owner cannot be reached answers 503 with a short
// Retry-After, marked as the Handler's, and forgets the route.
func TestForwardUnreachable(t *testing.T) {
	h := NewHandler(func(context.Context, *Session) {}, WithCluster(&nopCluster{}))
	defer h.Close()
	var id [16]byte
	id[0] = 7
	h.cl.routes.put(id, route{url: "http://127.0.0.1:1/ws"}, time.Now(), time.Minute)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/ws?tether=poll", nil)
	h.cl.fwd.forward(rec, req, id, "http://127.0.0.1:1/ws")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, retryAfterSeconds, rec.Header().Get("Retry-After"))
	require.Equal(t, Subprotocol, rec.Header().Get(headerProtocol))
	_, ok := h.cl.routes.get(id, time.Now())
	require.False(t, ok)
}

// nopCluster is a directory that knows nothing and is always there.
type nopCluster struct{}

func (*nopCluster) ID() string                   { return "nop" }
func (*nopCluster) RenewInterval() time.Duration { return time.Hour }
func (*nopCluster) Claim(context.Context, SessionID) (Lease, error) {
	return Lease{}, ErrClusterUnavailable
}
func (*nopCluster) Lookup(context.Context, SessionID) (Owner, error) { return Owner{}, nil }
func (*nopCluster) Renew(context.Context, []Lease) ([]SessionID, error) {
	return nil, nil
}
func (*nopCluster) Release(context.Context, Lease, []byte, time.Duration) error { return nil }
func (*nopCluster) Park(context.Context, Lease, []byte, time.Duration) error    { return nil }
func (*nopCluster) TakeParked(context.Context, SessionID) (Lease, []byte, error) {
	return Lease{}, nil, ErrNotParked
}
func (*nopCluster) Leave(context.Context) error { return errors.New("nop") }

// countingNop is nopCluster counting its lookups, and saying every session
// is unknown.
type countingNop struct {
	nopCluster
	lookups atomic.Int64
}

func (c *countingNop) Lookup(context.Context, SessionID) (Owner, error) {
	c.lookups.Add(1)
	return Owner{Status: OwnerUnknown}, nil
}

// Requests for made-up session ids cost at most the lookup rate: beyond
// it, they are answered "try again" without asking the directory.
func TestLookupRateLimit(t *testing.T) {
	dir := &countingNop{}
	h := NewHandler(func(context.Context, *Session) {}, WithCluster(dir))
	defer h.Close()
	h.cl.lookups = newTokenBucket(1, 10) // one a second, ten at once
	codes := map[int]int{}
	for i := range 100 {
		var id [16]byte
		id[0], id[1] = byte(i), 1
		req := httptest.NewRequest(http.MethodGet, "/ws?tether=poll&ack=0&sid="+hex.EncodeToString(id[:]), nil)
		req.Header.Set(headerSecret, hex.EncodeToString(id[:]))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		codes[rec.Code]++
	}
	require.LessOrEqual(t, dir.lookups.Load(), int64(11), "lookups within the limit")
	require.GreaterOrEqual(t, codes[http.StatusServiceUnavailable], 89, "%v", codes)
	require.Equal(t, 100, codes[http.StatusServiceUnavailable]+codes[http.StatusNotFound], "%v", codes)
}
