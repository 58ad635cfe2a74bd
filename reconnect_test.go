package tether_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// Field report 2: the network resets the connection. The Conn notices,
// reconnects with backoff, and keeps working, again and again.
func TestResetRecovers(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), tether.WithHeartbeat(time.Second, time.Second), ev.option())
	ctx := ctxT(t, 20*time.Second)

	for i := range 5 {
		msg := []byte("msg " + strconv.Itoa(i))
		require.NoError(t, c.Write(ctx, websocket.MessageText, msg))
		_, got, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, msg, got)

		p.Reset()
		ev.next(t, tether.Reconnecting, 10*time.Second)
		ev.next(t, tether.Connected, 10*time.Second)
	}
	st := c.Stats()
	require.Equal(t, uint64(5), st.Reconnects)
	require.Equal(t, int64(6), p.Accepted())

	var states []string
	for _, sc := range ev.list() {
		states = append(states, sc.From.String()+">"+sc.To.String())
	}
	want := []string{"connecting>connected"}
	for range 5 {
		want = append(want, "connected>reconnecting", "reconnecting>connected")
	}
	require.Equal(t, want, states)
}

// A refused TCP connect (server down) is retried until the server is back;
// the refusals are counted.
func TestRefusedIsRetried(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())

	require.NoError(t, p.Refuse(true))
	p.Reset()
	ev.next(t, tether.Reconnecting, 10*time.Second)
	eventually(t, 10*time.Second, func() bool { return c.Stats().HandshakeFailures.Refused >= 3 }, "3 refused attempts")
	require.Equal(t, tether.Reconnecting, c.State())

	require.NoError(t, p.Refuse(false))
	ev.next(t, tether.Connected, 10*time.Second)
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("back")))
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "back", string(got))
}

// linkTracker is an http.Transport dialer that sees, from the client's side,
// every connection a Conn opens: how many are open at once, and whether
// anything still reads an old one when the next is dialed. A read that
// fails because its connection was closed returns only after exitDelay, as
// a goroutine slow to wind down would.
type linkTracker struct {
	exitDelay time.Duration
	dialer    net.Dialer

	mu         sync.Mutex
	open, most int
	conns      []*trackedConn
	stillRead  []int // for each dial, how many older connections were being read
}

type trackedConn struct {
	net.Conn
	lt      *linkTracker
	closed  atomic.Bool
	readers atomic.Int32
	once    sync.Once
}

func (lt *linkTracker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	lt.mu.Lock()
	busy := 0
	for _, c := range lt.conns {
		if c.readers.Load() > 0 {
			busy++
		}
	}
	lt.stillRead = append(lt.stillRead, busy)
	lt.mu.Unlock()
	nc, err := lt.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &trackedConn{Conn: nc, lt: lt}
	lt.mu.Lock()
	lt.open++
	lt.most = max(lt.most, lt.open)
	lt.conns = append(lt.conns, c)
	lt.mu.Unlock()
	return c, nil
}

func (c *trackedConn) Read(p []byte) (int, error) {
	c.readers.Add(1)
	defer c.readers.Add(-1)
	n, err := c.Conn.Read(p)
	if err != nil && c.closed.Load() {
		time.Sleep(c.lt.exitDelay)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.lt.mu.Lock()
		c.lt.open--
		c.lt.mu.Unlock()
	})
	return c.Conn.Close()
}

// Field report 4: at most one link per Conn at any instant, the old one
// closed, and everything that read it returned, before the next is dialed;
// the conn id on every handshake; no goroutine growth across reconnects.
// The links are replaced by the heartbeat (the server stops answering
// pings), so nothing but the Conn closes the old one.
func TestOneLinkAtATime(t *testing.T) {
	// Not parallel: it counts the process's goroutines.
	s := newTestServer(t, nil)
	lt := &linkTracker{exitDelay: 300 * time.Millisecond}
	tr := &http.Transport{DialContext: lt.dial}
	t.Cleanup(tr.CloseIdleConnections)
	ev := newEvents()
	c := dial(t, s.URL(), tether.WithHeartbeat(20*time.Millisecond, 100*time.Millisecond), ev.option(),
		tether.WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}))
	ctx := ctxT(t, 30*time.Second)

	roundTrip := func(i int) {
		msg := []byte(strconv.Itoa(i))
		require.NoError(t, c.Write(ctx, websocket.MessageText, msg))
		_, got, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, msg, got)
	}
	roundTrip(0)
	base := runtime.NumGoroutine()
	for i := 1; i <= 5; i++ {
		s.noPong.Store(true)
		sc := ev.next(t, tether.Reconnecting, 10*time.Second)
		require.ErrorIs(t, sc.Cause, tether.ErrHeartbeatTimeout)
		s.noPong.Store(false)
		ev.next(t, tether.Connected, 10*time.Second)
		roundTrip(i)
	}
	lt.mu.Lock()
	require.Equal(t, 1, lt.most, "two links of one Conn were open at once")
	require.Len(t, lt.stillRead, 6)
	for i, n := range lt.stillRead {
		require.Zero(t, n, "dial %d: an old link was still being read", i+1)
	}
	lt.mu.Unlock()
	// The old links' goroutines are gone: the count comes back to where it
	// was with one link (give the server side time to wind down too). One
	// more is allowed: since base was counted, the reader may have handed
	// the link to its background reader; a goroutine left per link would
	// show five.
	eventually(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= base+1 }, "no goroutine growth")

	s.mu.Lock()
	defer s.mu.Unlock()
	require.Len(t, s.headers, 6)
	for _, h := range s.headers {
		require.Equal(t, c.ID(), h.Get(tether.ConnIDHeader))
	}
}

// recorder is a server handler that records every message it reads.
type recorder struct {
	mu   sync.Mutex
	msgs []string
	ch   chan string
}

func newRecorder() *recorder { return &recorder{ch: make(chan string, 4096)} }

func (r *recorder) handle(ctx context.Context, c *websocket.Conn) {
	for {
		_, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.msgs = append(r.msgs, string(p))
		r.mu.Unlock()
		r.ch <- string(p)
	}
}

func (r *recorder) waitFor(t *testing.T, n int, d time.Duration) []string {
	t.Helper()
	eventually(t, d, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.msgs) >= n
	}, fmt.Sprintf("%d messages at the server", n))
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// outage cuts the Conn off: new connects are refused and the link is reset.
func outage(t *testing.T, p interface {
	Refuse(bool) error
	Reset()
}, ev *events) {
	t.Helper()
	require.NoError(t, p.Refuse(true))
	p.Reset()
	ev.next(t, tether.Reconnecting, 10*time.Second)
}

// Writes made during an outage are queued and arrive in order, after the
// OnConnect hook's own messages.
func TestWritesDuringOutageArriveInOrder(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	s := newTestServer(t, rec.handle)
	p := proxied(t, s)
	ev := newEvents()
	var connects atomic.Int64
	c := dial(t, "ws://"+p.Addr(), ev.option(), tether.WithOnConnect(func(ctx context.Context, c *tether.Conn) error {
		n := connects.Add(1)
		return c.Write(ctx, websocket.MessageText, []byte("hello "+strconv.FormatInt(n, 10)))
	}))
	ctx := ctxT(t, 20*time.Second)
	rec.waitFor(t, 1, 5*time.Second)

	outage(t, p, ev)
	for i := range 100 {
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))))
	}
	require.Equal(t, 100, c.Stats().QueueDepth)
	require.NoError(t, p.Refuse(false))
	ev.next(t, tether.Connected, 10*time.Second)
	for i := 100; i < 110; i++ {
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))))
	}

	got := rec.waitFor(t, 112, 10*time.Second)
	want := []string{"hello 1", "hello 2"}
	for i := range 110 {
		want = append(want, strconv.Itoa(i))
	}
	require.Equal(t, want, got)
	require.Zero(t, c.Stats().QueueDepth)
}

// A full queue follows its policy.
func TestQueuePolicies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		policy tether.QueuePolicy
		want   []string // what the server gets after the outage
	}{
		{"block", tether.QueueBlock, []string{"a0000", "b0000"}},
		{"failfast", tether.QueueFailFast, []string{"a0000", "b0000"}},
		{"dropoldest", tether.QueueDropOldest, []string{"b0000", "c0000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder()
			s := newTestServer(t, rec.handle)
			p := proxied(t, s)
			ev := newEvents()
			c := dial(t, "ws://"+p.Addr(), ev.option(), tether.WithSendQueue(10), tether.WithQueuePolicy(tc.policy))
			outage(t, p, ev)

			ctx := ctxT(t, 10*time.Second)
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("a0000")))
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("b0000")))
			err := c.Write(ctx, websocket.MessageText, []byte("elevenbytes"))
			require.ErrorIs(t, err, tether.ErrMessageTooLarge)

			short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			err = c.Write(short, websocket.MessageText, []byte("c0000"))
			switch tc.policy {
			case tether.QueueBlock:
				require.ErrorIs(t, err, context.DeadlineExceeded)
			case tether.QueueFailFast:
				require.ErrorIs(t, err, tether.ErrQueueFull)
			case tether.QueueDropOldest:
				require.NoError(t, err)
				require.Equal(t, uint64(1), c.Stats().QueueDropped)
			}
			require.NoError(t, p.Refuse(false))
			ev.next(t, tether.Connected, 10*time.Second)
			require.Equal(t, tc.want, rec.waitFor(t, 2, 10*time.Second))
		})
	}
}

// A blocked Write goes on as soon as the link is back.
func TestBlockedWriteResumesOnReconnect(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	s := newTestServer(t, rec.handle)
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option(), tether.WithSendQueue(5))
	outage(t, p, ev)
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("first")))
	done := make(chan error, 1)
	go func() { done <- c.Write(ctx, websocket.MessageText, []byte("later")) }()
	require.NoError(t, p.Refuse(false))
	require.NoError(t, <-done)
	require.Equal(t, []string{"first", "later"}, rec.waitFor(t, 2, 10*time.Second))
}

// A caller's short ctx bounds the call, never the link: no reconnect storm.
func TestCallerContextDoesNotKillLink(t *testing.T) {
	t.Parallel()
	send := make(chan struct{})
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		select {
		case <-send:
		case <-ctx.Done():
			return
		}
		_ = c.Write(ctx, websocket.MessageText, []byte("late"))
		echo(ctx, c)
	})
	c := dial(t, s.URL())
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, _, err := c.Read(ctx)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
	}
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		err := c.Write(ctx, websocket.MessageText, []byte("x"))
		cancel()
		if err != nil {
			require.ErrorIs(t, err, context.DeadlineExceeded)
		}
	}
	close(send)
	_, got, err := c.Read(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	require.Equal(t, "late", string(got))
	require.Equal(t, int64(1), s.accepted.Load())
	require.Zero(t, c.Stats().Reconnects)
}

// A message that arrives after a Read gave up is kept for the next Read.
func TestReadCancelKeepsMessage(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := c.Read(ctx)
		errc <- err
	}()
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	wctx := ctxT(t, 5*time.Second)
	for i := range 10 {
		require.NoError(t, c.Write(wctx, websocket.MessageText, []byte(strconv.Itoa(i))))
	}
	for i := range 10 {
		_, got, err := c.Read(wctx)
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(i), string(got))
	}
}

// Close codes from the server: 1000 ends the conversation and Read returns
// it; 1012 is retried; 4000-4999 are permanent.
func TestServerCloseCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code  websocket.StatusCode
		retry bool
	}{
		{websocket.StatusNormalClosure, false},
		{websocket.StatusServiceRestart, true},
		{websocket.StatusGoingAway, true},
		{websocket.StatusPolicyViolation, false},
		{4001, false},
	} {
		t.Run(strconv.Itoa(int(tc.code)), func(t *testing.T) {
			t.Parallel()
			var n atomic.Int64
			s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
				if n.Add(1) == 1 {
					_ = c.Close(tc.code, "bye")
					return
				}
				echo(ctx, c)
			})
			ev := newEvents()
			c := dial(t, s.URL(), ev.option())
			ctx := ctxT(t, 10*time.Second)
			if tc.retry {
				ev.next(t, tether.Reconnecting, 10*time.Second)
				ev.next(t, tether.Connected, 10*time.Second)
				require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("again")))
				_, got, err := c.Read(ctx)
				require.NoError(t, err)
				require.Equal(t, "again", string(got))
				return
			}
			_, _, err := c.Read(ctx)
			require.Error(t, err)
			require.Equal(t, tc.code, websocket.CloseStatus(err))
			var ce websocket.CloseError
			require.True(t, errors.As(err, &ce))
			sc := ev.next(t, tether.Closed, 5*time.Second)
			require.Equal(t, tc.code, websocket.CloseStatus(sc.Cause))
			require.Equal(t, tether.Closed, c.State())
			require.Error(t, c.Write(ctx, websocket.MessageText, []byte("x")))
			require.Equal(t, int64(1), s.accepted.Load())
		})
	}
}

// Close returns promptly while the Conn is reconnecting, and during a
// handshake that hangs.
func TestCloseWhileReconnecting(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option(), tether.WithBackoff(constBackoff(time.Hour)))
	outage(t, p, ev)
	closeWithin(t, c, 2*time.Second)
	_, _, err := c.Read(ctxT(t, time.Second))
	require.ErrorIs(t, err, net.ErrClosed)
}

func TestCloseDuringHungHandshake(t *testing.T) {
	t.Parallel()
	// A TCP listener that accepts and never answers the upgrade.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns sync.WaitGroup
	var held []net.Conn
	var mu sync.Mutex
	conns.Add(1)
	go func() {
		defer conns.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, nc)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		conns.Wait()
		mu.Lock()
		for _, nc := range held {
			_ = nc.Close()
		}
		mu.Unlock()
	})

	s := newTestServer(t, nil)
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option(), tether.WithHandshakeTimeout(time.Hour))
	p.SetTarget(ln.Addr().String())
	p.Reset()
	ev.next(t, tether.Reconnecting, 10*time.Second)
	eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(held) > 0 }, "a hung handshake")
	closeWithin(t, c, 2*time.Second)
}

// A hung handshake is one failed attempt when the handshake timeout passes.
func TestHandshakeTimeoutCounts(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn
		defer func() {
			for _, nc := range held {
				_ = nc.Close()
			}
		}()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, nc)
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = tether.Dial(ctx, "ws://"+ln.Addr().String(), tether.WithHandshakeTimeout(50*time.Millisecond),
		tether.WithBackoff(fastBackoff), tether.WithMaxRetries(2))
	require.ErrorIs(t, err, tether.ErrGaveUp)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func closeWithin(t *testing.T, c *tether.Conn, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Close(websocket.StatusNormalClosure, "bye") }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
	require.Equal(t, tether.Closed, c.State())
}

// WithMaxRetries bounds every outage, not only Dial: a server that goes away
// for good after the first link ends the Conn after that many attempts.
func TestMaxRetriesInLaterOutage(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	p := proxied(t, s)
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option(), tether.WithMaxRetries(3))
	before := c.Stats().Dials
	outage(t, p, ev)
	sc := ev.next(t, tether.Closed, 10*time.Second)
	var gu *tether.GiveUpError
	require.True(t, errors.As(sc.Cause, &gu), "cause: %v", sc.Cause)
	require.Equal(t, 3, gu.Attempts)
	require.ErrorIs(t, sc.Cause, syscall.ECONNREFUSED)
	require.Equal(t, before+3, c.Stats().Dials)
	_, _, err := c.Read(ctxT(t, time.Second))
	require.ErrorIs(t, err, tether.ErrGaveUp)
}

// An OnConnect error is a failed attempt like any other: the link is closed,
// the attempt counts against WithMaxRetries and in Stats, and the next one
// waits its backoff.
func TestOnConnectErrorIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	hookErr := errors.New("subscribe refused")
	t.Run("gives up", func(t *testing.T) {
		t.Parallel()
		var ended atomic.Int64
		s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
			echo(ctx, c)
			ended.Add(1)
		})
		var calls atomic.Int64
		ctx := ctxT(t, 10*time.Second)
		_, err := tether.Dial(ctx, s.URL(), tether.WithBackoff(fastBackoff), tether.WithMaxRetries(3),
			tether.WithOnConnect(func(context.Context, *tether.Conn) error {
				calls.Add(1)
				return hookErr
			}))
		var gu *tether.GiveUpError
		require.True(t, errors.As(err, &gu), "got %v", err)
		require.Equal(t, 3, gu.Attempts)
		require.ErrorIs(t, err, hookErr)
		require.Equal(t, int64(3), calls.Load())
		require.Equal(t, int64(3), s.accepted.Load(), "one link per attempt")
		eventually(t, 5*time.Second, func() bool { return ended.Load() == 3 }, "every link the hook refused closed")
	})
	t.Run("counted", func(t *testing.T) {
		t.Parallel()
		s := newTestServer(t, nil)
		var calls atomic.Int64
		c := dial(t, s.URL(), tether.WithOnConnect(func(context.Context, *tether.Conn) error {
			if calls.Add(1) == 1 {
				return hookErr
			}
			return nil
		}))
		st := c.Stats()
		require.Equal(t, uint64(1), st.HandshakeFailures.Hook)
		require.Equal(t, uint64(2), st.Dials)
		eventually(t, 5*time.Second, func() bool { return s.accepted.Load() == 2 }, "two links at the server")
	})
}
