package tether_test

import (
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// statsEventually waits until the Handler's stats satisfy ok.
func statsEventually(t *testing.T, h *tether.Handler, what string, ok func(tether.HandlerStats) bool) tether.HandlerStats {
	t.Helper()
	var st tether.HandlerStats
	eventually(t, 10*time.Second, func() bool { st = h.Stats(); return ok(st) }, what)
	return st
}

// A session's life in the Handler's stats: opened on WebSocket, resumed
// after a drop, moved to polling, away, lost after its TTL, and a client
// that comes back after that is counted as an unknown resume.
func TestHandlerStatsSessions(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho, tether.WithSessionTTL(300*time.Millisecond))
	h := ss.h
	require.Equal(t, tether.HandlerStats{}, h.Stats())

	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr()+"/", tether.WithFallback(""), tether.WithProbeBackoff(fastProbes), ev.option())
	st := statsEventually(t, h, "one session on WebSocket", func(st tether.HandlerStats) bool { return st.OnWebSocket == 1 })
	require.Equal(t, 1, st.Sessions)
	require.EqualValues(t, 1, st.SessionsOpened)
	require.Zero(t, st.Resumes)

	// A drop: the client resumes its session on a new link.
	p.Reset()
	ev.next(t, tether.Reconnecting, 5*time.Second)
	ev.next(t, tether.Connected, 5*time.Second)
	st = statsEventually(t, h, "a resume", func(st tether.HandlerStats) bool { return st.Resumes >= 1 && st.OnWebSocket == 1 })
	require.EqualValues(t, 1, st.SessionsOpened, "a resume opens no session")

	// The path starts blocking WebSocket: the session moves to polling.
	ss.setBlock(true)
	p.Reset()
	eventually(t, 10*time.Second, func() bool { return c.Transport() == tether.Polling }, "fallback to polling")
	st = statsEventually(t, h, "the session on polling", func(st tether.HandlerStats) bool { return st.OnPolling == 1 })
	require.Equal(t, 0, st.OnWebSocket)
	require.Equal(t, 1, st.Sessions)

	// The client goes away for longer than the TTL: the session is lost.
	require.NoError(t, p.Refuse(true))
	p.Reset()
	statsEventually(t, h, "the session lost", func(st tether.HandlerStats) bool { return st.SessionsLost == 1 })
	st = h.Stats()
	require.Equal(t, 0, st.Sessions)

	// It comes back and asks for the session the Handler no longer has.
	ss.setBlock(false)
	require.NoError(t, p.Refuse(false))
	st = statsEventually(t, h, "an unknown resume", func(st tether.HandlerStats) bool { return st.ResumesUnknown >= 1 && st.Sessions == 1 })
	require.EqualValues(t, 2, st.SessionsOpened, "the client got a new session")
	require.Zero(t, st.PlainClients)
}

// A client away, between links, is counted as Away while its session waits.
func TestHandlerStatsAway(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	dial(t, "ws://"+p.Addr()+"/")
	statsEventually(t, ss.h, "on WebSocket", func(st tether.HandlerStats) bool { return st.OnWebSocket == 1 })
	require.NoError(t, p.Refuse(true))
	p.Reset()
	st := statsEventually(t, ss.h, "away", func(st tether.HandlerStats) bool { return st.Away == 1 })
	require.Equal(t, 1, st.Sessions)
	require.Zero(t, st.SessionsLost)
}

// Plain WebSocket clients are counted apart from sessions.
func TestHandlerStatsPlain(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	ctx := ctxT(t, 10*time.Second)
	ws, _, err := websocket.Dial(ctx, ss.URL(), nil)
	require.NoError(t, err)
	// Registered after the server's cleanup, so run before it: the
	// Handler's Close waits for plain clients, which it does not close.
	t.Cleanup(func() { _ = ws.CloseNow() })
	require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte("hi")))
	_, _, err = ws.Read(ctx)
	require.NoError(t, err)
	st := ss.h.Stats()
	require.Equal(t, 1, st.PlainClients)
	require.EqualValues(t, 1, st.PlainServed)
	require.Zero(t, st.Sessions)
	require.Zero(t, st.SessionsOpened)

	require.NoError(t, ws.Close(websocket.StatusNormalClosure, ""))
	st = statsEventually(t, ss.h, "the plain client gone", func(st tether.HandlerStats) bool { return st.PlainClients == 0 })
	require.EqualValues(t, 1, st.PlainServed)
}
