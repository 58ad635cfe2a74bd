package tether_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// These tests are about applications that write and seldom or never read: a
// publisher, a telemetry client. Control frames must keep flowing for them,
// and the heartbeat must keep judging their links.

// A client that never reads sees the server's close at once: a permanent
// 1008 ends the Conn within a round trip, though messages sit unread.
func TestWriteOnlyClientSeesServerClose(t *testing.T) {
	t.Parallel()
	closed := make(chan time.Time, 1)
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		for _, m := range []string{"welcome", "news 1", "news 2"} {
			if c.Write(ctx, websocket.MessageText, []byte(m)) != nil {
				return
			}
		}
		for range 3 {
			if _, _, err := c.Read(ctx); err != nil {
				return
			}
		}
		closed <- time.Now()
		_ = c.Close(websocket.StatusPolicyViolation, "go away")
	})
	ev := newEvents()
	c := dial(t, s.URL(), ev.option())
	ctx := ctxT(t, 20*time.Second)
	for i := range 3 {
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))))
	}
	sc := ev.next(t, tether.Closed, 10*time.Second)
	took := sc.At.Sub(<-closed)
	require.Equal(t, websocket.StatusPolicyViolation, websocket.CloseStatus(sc.Cause), "cause: %v", sc.Cause)
	require.Less(t, took, time.Second, "the close frame waited behind the unread greeting")
	require.Error(t, c.Write(ctx, websocket.MessageText, []byte("after")))
	require.Equal(t, int64(1), s.accepted.Load())
}

// The publisher: 200 messages written every 10 ms, never a Read,
// through a clean 1001 restart of the server. The restart is seen at once
// and the writes go to the next link; only what was in flight in that round
// trip may be lost.
func TestWriteOnlyClientRidesThroughRestart(t *testing.T) {
	t.Parallel()
	const n = 200
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
		got  atomic.Int64
	)
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		for _, m := range []string{"welcome", "news"} {
			if c.Write(ctx, websocket.MessageText, []byte(m)) != nil {
				return
			}
		}
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			seen[string(p)] = true
			mu.Unlock()
			if got.Add(1) == n/4 {
				_ = c.Close(websocket.StatusGoingAway, "restarting")
				return
			}
		}
	})
	ev := newEvents()
	c := dial(t, s.URL(), ev.option())
	ctx := ctxT(t, 30*time.Second)
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for i := range n {
		<-tk.C
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))))
	}
	sc := ev.next(t, tether.Reconnecting, 5*time.Second)
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(sc.Cause), "cause: %v", sc.Cause)
	eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[strconv.Itoa(n-1)]
	}, "the last message at the server")
	mu.Lock()
	lost := 0
	for i := range n {
		if !seen[strconv.Itoa(i)] {
			lost++
		}
	}
	mu.Unlock()
	require.LessOrEqual(t, lost, 3, "messages lost across the restart")
	require.Equal(t, int64(2), s.accepted.Load())
}

// A link goes silent (blackholed) while a message the application has not
// read waits: the heartbeat still judges it, and replaces it.
func TestHeartbeatJudgesLinkWithUnreadMessage(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		for _, m := range []string{"unread", "unread too"} {
			if c.Write(ctx, websocket.MessageText, []byte(m)) != nil {
				return
			}
		}
		echo(ctx, c)
	})
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), tether.WithHeartbeat(50*time.Millisecond, 100*time.Millisecond), ev.option())
	// The greeting has arrived once a ping has been answered after it.
	eventually(t, 10*time.Second, func() bool { return c.Stats().PingsAnswered >= 2 }, "pings answered")
	p.Blackhole(true)
	sc := ev.next(t, tether.Reconnecting, 10*time.Second)
	require.ErrorIs(t, sc.Cause, tether.ErrHeartbeatTimeout)
	p.Blackhole(false)
	ev.next(t, tether.Connected, 10*time.Second)
	_, got, err := c.Read(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	require.Equal(t, "unread", string(got))
}

// CloseRead: the messages of a server that talks a lot are read and dropped,
// on every link, so that a client that only writes sees every close at once;
// its ctx ends only when the Conn ends for good.
func TestCloseReadRidesThroughReconnects(t *testing.T) {
	t.Parallel()
	const chatter = 3000 // far more than the read-ahead bound
	var links atomic.Int64
	done := make(chan time.Time, 1)
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		n := links.Add(1)
		for i := range chatter {
			if c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))) != nil {
				return
			}
		}
		if _, _, err := c.Read(ctx); err != nil {
			return
		}
		if n == 1 {
			_ = c.Close(websocket.StatusGoingAway, "restarting")
			return
		}
		done <- time.Now()
		_ = c.Close(websocket.StatusPolicyViolation, "enough")
	})
	ev := newEvents()
	c := dial(t, s.URL(), ev.option())
	rctx := c.CloseRead(context.Background())
	require.Equal(t, rctx, c.CloseRead(context.Background()), "CloseRead returns the first ctx")
	_, _, err := c.Read(ctxT(t, time.Second))
	require.Error(t, err, "Read fails after CloseRead")

	ctx := ctxT(t, 20*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("one")))
	sc := ev.next(t, tether.Reconnecting, 10*time.Second)
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(sc.Cause))
	ev.next(t, tether.Connected, 10*time.Second)
	require.NoError(t, rctx.Err(), "the ctx lives through a reconnect")

	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("two")))
	sc = ev.next(t, tether.Closed, 10*time.Second)
	require.Equal(t, websocket.StatusPolicyViolation, websocket.CloseStatus(sc.Cause))
	require.Less(t, sc.At.Sub(<-done), time.Second)
	select {
	case <-rctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the CloseRead ctx did not end with the Conn")
	}
}
