package tether_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// Field report 1: the server is busy for a long time, sends nothing and
// answers no pong. With timeout 0 pings keep going out but the link lives.
func TestHeartbeatNoTimeoutSurvivesBusyServer(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		// Long work: no reads, no writes, no pongs.
		select {
		case <-release:
		case <-ctx.Done():
			return
		}
		_ = c.Write(ctx, websocket.MessageText, []byte("720 images loaded"))
		echo(ctx, c)
	})
	s.noPong.Store(true)
	ev := newEvents()
	c := dial(t, s.URL(), tether.WithHeartbeat(20*time.Millisecond, 0), ev.option())

	// Many intervals pass without a pong: pings keep going out.
	eventually(t, 10*time.Second, func() bool { return c.Stats().PingsSent >= 25 }, "25 pings sent")
	st := c.Stats()
	require.Zero(t, st.PingsAnswered)
	require.Zero(t, st.Reconnects)
	require.Equal(t, int64(1), s.accepted.Load(), "the link was never replaced")
	require.Equal(t, tether.Connected, c.State())

	close(release)
	_, p, err := c.Read(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	require.Equal(t, "720 images loaded", string(p))
	for _, sc := range ev.list() {
		require.NotEqual(t, tether.Reconnecting, sc.To, "no reconnect expected: %+v", sc)
	}
}

// The same silent server with a ping timeout: the Conn gives up on the link
// and reconnects, with ErrHeartbeatTimeout as the cause.
func TestHeartbeatTimeoutReplacesLink(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	s.noPong.Store(true)
	ev := newEvents()
	c := dial(t, s.URL(), tether.WithHeartbeat(20*time.Millisecond, 60*time.Millisecond), ev.option())

	sc := ev.next(t, tether.Reconnecting, 10*time.Second)
	require.ErrorIs(t, sc.Cause, tether.ErrHeartbeatTimeout)
	ev.next(t, tether.Connected, 10*time.Second)
	eventually(t, 5*time.Second, func() bool { return s.accepted.Load() >= 2 }, "a second link at the server")
	require.GreaterOrEqual(t, c.Stats().PingsFailed, uint64(1))

	// Once pongs come back, the link stays and pings are answered.
	s.noPong.Store(false)
	eventually(t, 10*time.Second, func() bool { return c.Stats().PingsAnswered >= 3 }, "answered pings")
}

// Inbound traffic is proof of life: a link that keeps receiving is not
// pinged, so a server that never answers pongs but talks does not lose it.
func TestHeartbeatTrafficIsProofOfLife(t *testing.T) {
	t.Parallel()
	stop := make(chan struct{})
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tk.C:
				if c.Write(ctx, websocket.MessageText, []byte("tick")) != nil {
					return
				}
			}
		}
	})
	s.noPong.Store(true)
	c := dial(t, s.URL(), tether.WithHeartbeat(100*time.Millisecond, 100*time.Millisecond))
	ctx := ctxT(t, 10*time.Second)
	for range 200 { // about 1 s: ten heartbeat intervals
		_, _, err := c.Read(ctx)
		require.NoError(t, err)
	}
	close(stop)
	st := c.Stats()
	require.Zero(t, st.Reconnects)
	// A quiet spell of an interval (a stalled machine) may send one ping;
	// pinging regardless of traffic would send ten.
	require.LessOrEqual(t, st.PingsSent, uint64(2), "pings went out on a link that kept receiving")
	require.Equal(t, int64(1), s.accepted.Load())
}

// A blackholed link (socket open, bytes dropped) is found by the heartbeat
// and replaced once the path works again.
func TestHeartbeatFindsBlackhole(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	p := proxied(t, s)
	ev := newEvents()
	interval, timeout := 50*time.Millisecond, 100*time.Millisecond
	c := dial(t, "ws://"+p.Addr(), tether.WithHeartbeat(interval, timeout),
		tether.WithHandshakeTimeout(time.Second), ev.option())
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("before")))
	_, _, err := c.Read(ctx)
	require.NoError(t, err)

	p.Blackhole(true)
	start := time.Now()
	sc := ev.next(t, tether.Reconnecting, 10*time.Second)
	found := time.Since(start)
	require.ErrorIs(t, sc.Cause, tether.ErrHeartbeatTimeout)
	t.Logf("blackhole found after %v (interval+timeout = %v)", found, interval+timeout)

	p.Blackhole(false)
	ev.next(t, tether.Connected, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("after")))
	_, msg, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "after", string(msg))
}

// Ping measures a round trip on the live link.
func TestPingRecordsRTT(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL(), tether.WithHeartbeat(0, 0))
	ctx := ctxT(t, 5*time.Second)
	for range 3 {
		require.NoError(t, c.Ping(ctx))
	}
	st := c.Stats()
	require.Positive(t, st.RTTLast)
	require.LessOrEqual(t, st.RTTMin, st.RTTMean)
	require.LessOrEqual(t, st.RTTMean, st.RTTMax)
	require.Zero(t, st.PingsSent, "interval 0 sends no heartbeat pings")

	// A Ping whose pong never comes ends with its ctx, and the link stays.
	s.noPong.Store(true)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	err := c.Ping(pctx)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	s.noPong.Store(false)
	require.NoError(t, c.Ping(ctx))
	require.Equal(t, int64(1), s.accepted.Load())
}
