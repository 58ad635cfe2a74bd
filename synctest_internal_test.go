package tether

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// These tests run hours of fake time in a synctest bubble. The WebSocket
// links are real coder/websocket pairs over net.Pipe: the client side is
// made by a WithDialFunc whose http.Transport dials one end of the pipe, the
// server side by an http.Server serving the other end.

// pipeListener hands out one conn, then reports itself closed.
type pipeListener struct {
	once sync.Once
	c    net.Conn
}

func (l *pipeListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c == nil {
		return nil, net.ErrClosed
	}
	return c, nil
}

func (l *pipeListener) Close() error   { return nil }
func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// pipeServer serves WebSocket handshakes over in-memory pipes. Every
// goroutine it starts returns once both ends of its link are closed.
type pipeServer struct {
	// handle serves an accepted link until it returns; nil reads until the
	// link ends.
	handle func(ctx context.Context, ws *websocket.Conn)
	// onPing is called on every ping the server reads; it says whether to
	// answer with a pong.
	onPing func() bool
	// fail, when set, makes the dial of attempt n (from 1) fail without a
	// link.
	fail func(n int) error
	// answer, when set and not nil for attempt n, is the HTTP answer to
	// its handshake, in place of 101.
	answer func(n int) *http.Response

	dials    atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	dialedAt []time.Time
}

func (s *pipeServer) dial(ctx context.Context, u string) (*websocket.Conn, *http.Response, error) {
	n := int(s.dials.Add(1))
	s.mu.Lock()
	s.dialedAt = append(s.dialedAt, time.Now())
	s.mu.Unlock()
	if s.fail != nil {
		if err := s.fail(n); err != nil {
			return nil, nil, err
		}
	}
	if s.answer != nil {
		if resp := s.answer(n); resp != nil {
			return nil, resp, fmt.Errorf("expected handshake response status code 101 but got %d", resp.StatusCode)
		}
	}
	cli, srv := net.Pipe()
	hs := &http.Server{Handler: http.HandlerFunc(s.serve)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = hs.Serve(&pipeListener{c: srv})
	}()
	tr := &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return cli, nil },
	}
	defer tr.CloseIdleConnections()
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		_ = cli.Close()
	}
	return ws, resp, err
}

func (s *pipeServer) serve(w http.ResponseWriter, r *http.Request) {
	s.wg.Add(1)
	defer s.wg.Done()
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OnPingReceived: func(context.Context, []byte) bool {
			if s.onPing == nil {
				return true
			}
			return s.onPing()
		},
	})
	if err != nil {
		return
	}
	defer ws.CloseNow()
	if s.handle != nil {
		s.handle(r.Context(), ws)
		return
	}
	for {
		if _, _, err := ws.Read(r.Context()); err != nil {
			return
		}
	}
}

// dialPipe dials s inside the bubble. At cleanup, which runs inside the
// bubble, the Conn is closed and the server's goroutines are waited for, so
// that a failed assertion fails the test instead of deadlocking the bubble.
func dialPipe(t *testing.T, s *pipeServer, opts ...Option) *Conn {
	t.Helper()
	c, err := Dial(context.Background(), "ws://tether.test/", append([]Option{WithDialFunc(s.dial)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = c.CloseNow()
		s.wg.Wait()
	})
	return c
}

func (s *pipeServer) times() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.dialedAt...)
}

// stateLog records the state hook's transitions.
type stateLog struct {
	mu  sync.Mutex
	all []StateChange
}

func (l *stateLog) hook(sc StateChange) {
	l.mu.Lock()
	l.all = append(l.all, sc)
	l.mu.Unlock()
}

func (l *stateLog) to(s State) []StateChange {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []StateChange
	for _, sc := range l.all {
		if sc.To == s {
			out = append(out, sc)
		}
	}
	return out
}

// The pipe harness itself: an echo round trip in the bubble.
func TestSynctestPipeEcho(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := &pipeServer{handle: func(ctx context.Context, ws *websocket.Conn) {
			for {
				typ, p, err := ws.Read(ctx)
				if err != nil {
					return
				}
				if ws.Write(ctx, typ, p) != nil {
					return
				}
			}
		}}
		c := dialPipe(t, s)
		ctx := context.Background()
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("hi")))
		_, p, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, "hi", string(p))
		require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
		s.wg.Wait()
	})
}

// A server that stays down for two hours, far past backoff v4's 15-minute
// MaxElapsedTime default: the default backoff keeps retrying, with delays
// capped at 30 s, and Close ends it at once.
func TestSynctestBackoffLongOutage(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		s := &pipeServer{
			// The first link is dropped by a server restart; then nothing
			// answers.
			handle: func(ctx context.Context, ws *websocket.Conn) {
				_ = ws.Close(websocket.StatusServiceRestart, "restarting")
			},
			fail: func(n int) error {
				if n > 1 {
					return refused
				}
				return nil
			},
		}
		var states stateLog
		c := dialPipe(t, s, WithStateHook(states.hook))
		start := time.Now()

		synctest.Wait()
		require.Len(t, states.to(Reconnecting), 1, "the server restart was noticed")
		lost := states.to(Reconnecting)[0].At

		var prev int64
		for _, at := range []time.Duration{10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour} {
			time.Sleep(time.Until(start.Add(at)))
			synctest.Wait()
			n := s.dials.Load()
			require.Greater(t, n, prev+10, "attempts keep coming after %v of outage", at)
			require.Equal(t, Reconnecting, c.State(), "after %v", at)
			require.Equal(t, n, int64(c.Stats().Dials))
			prev = n
		}

		// Attempts follow the backoff exactly in fake time: each gap is one
		// delay. After the outage, every gap is below the 30 s cap, and the
		// gaps reach close to it.
		times := s.times()
		gaps := []time.Duration{times[1].Sub(lost)}
		for i := 2; i < len(times); i++ {
			gaps = append(gaps, times[i].Sub(times[i-1]))
		}
		require.Less(t, gaps[0], defaultBackoffInitial, "first delay after the loss")
		var longest time.Duration
		for i, g := range gaps {
			require.Less(t, g, defaultBackoffMax, "gap %d", i)
			longest = max(longest, g)
		}
		require.Greater(t, longest, 25*time.Second, "delays grow to the cap")
		// Uniform below 30 s: about 2 attempts a minute for two hours.
		require.Greater(t, len(gaps), 300)

		before := time.Now()
		require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
		require.Less(t, time.Since(before), time.Second, "Close waited for the backoff")
		require.Equal(t, Closed, c.State())
		n := s.dials.Load()
		time.Sleep(time.Hour)
		require.Equal(t, n, s.dials.Load(), "no attempt after Close")
		s.wg.Wait()
	})
}

// Field report 1 in fake time: with a 10-minute interval and no timeout, an
// hour of missing pongs does not cost the link, and pings keep going out
// every interval.
func TestSynctestHeartbeatNoTimeoutHour(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const interval = 10 * time.Minute
		var mu sync.Mutex
		var pings []time.Time
		s := &pipeServer{onPing: func() bool {
			mu.Lock()
			pings = append(pings, time.Now())
			mu.Unlock()
			return false // busy: never answer
		}}
		var states stateLog
		c := dialPipe(t, s, WithHeartbeat(interval, 0), WithStateHook(states.hook))
		start := time.Now()

		time.Sleep(time.Hour + time.Minute)
		synctest.Wait()
		require.Equal(t, int64(1), s.dials.Load(), "the link was never replaced")
		require.Empty(t, states.to(Reconnecting))
		require.Equal(t, Connected, c.State())
		st := c.Stats()
		require.Equal(t, uint64(6), st.PingsSent)
		require.Zero(t, st.PingsAnswered)
		require.Equal(t, uint64(5), st.PingsFailed, "each unanswered ping counts as failed when its wait ends")

		mu.Lock()
		got := append([]time.Time(nil), pings...)
		mu.Unlock()
		require.Len(t, got, 6, "the server saw one ping per interval")
		for i, at := range got {
			require.Equal(t, time.Duration(i+1)*interval, at.Sub(start), "ping %d", i+1)
		}

		require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
		s.wg.Wait()
	})
}

// The same silent server with a 5-minute timeout: the link is replaced after
// interval+timeout of silence, not before, with ErrHeartbeatTimeout.
func TestSynctestHeartbeatTimeoutReplacesLink(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const interval, timeout = 10 * time.Minute, 5 * time.Minute
		s := &pipeServer{onPing: func() bool { return false }}
		var states stateLog
		c := dialPipe(t, s, WithHeartbeat(interval, timeout), WithStateHook(states.hook))
		start := time.Now()

		time.Sleep(interval + timeout - time.Second)
		synctest.Wait()
		require.Empty(t, states.to(Reconnecting), "the link was dropped before interval+timeout")
		require.Equal(t, int64(1), s.dials.Load())
		require.Equal(t, uint64(1), c.Stats().PingsSent)

		time.Sleep(time.Second + defaultBackoffInitial)
		synctest.Wait()
		lost := states.to(Reconnecting)
		require.Len(t, lost, 1)
		require.ErrorIs(t, lost[0].Cause, ErrHeartbeatTimeout)
		require.Equal(t, interval+timeout, lost[0].At.Sub(start), "dropped at interval+timeout")
		require.Equal(t, int64(2), s.dials.Load(), "one new link")
		require.Len(t, states.to(Connected), 2)
		require.Equal(t, Connected, c.State())
		require.Equal(t, uint64(1), c.Stats().Reconnects)

		require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
		s.wg.Wait()
	})
}

// A server that answers every ping keeps its link for an hour under the
// default heartbeat, though in fake time each pong comes back at the very
// instant its ping went out.
func TestSynctestAnsweredPingsKeepLink(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := &pipeServer{}
		var states stateLog
		c := dialPipe(t, s, WithStateHook(states.hook))
		time.Sleep(time.Hour)
		synctest.Wait()
		require.Empty(t, states.to(Reconnecting))
		require.Equal(t, int64(1), s.dials.Load())
		st := c.Stats()
		require.Equal(t, uint64(time.Hour/DefaultHeartbeatInterval), st.PingsAnswered)
		require.Zero(t, st.PingsFailed)
	})
}

// Inbound traffic is proof of life, in fake time: a server that never
// answers a ping but sends a message every 2 s is never pinged under a 5 s
// interval; one that sends every 7 s is pinged in each quiet spell, and the
// next message, not a pong, proves the link alive before the 5 s timeout.
func TestSynctestTrafficIsProofOfLife(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		every time.Duration
		pings uint64 // heartbeat pings in the hour
	}{
		{2 * time.Second, 0},
		{7 * time.Second, uint64(time.Hour / (7 * time.Second))},
	} {
		t.Run(tc.every.String(), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				s := &pipeServer{
					onPing: func() bool { return false },
					handle: func(ctx context.Context, ws *websocket.Conn) {
						ctx = ws.CloseRead(ctx)
						tk := time.NewTicker(tc.every)
						defer tk.Stop()
						for {
							select {
							case <-ctx.Done():
								return
							case <-tk.C:
								if ws.Write(ctx, websocket.MessageText, []byte("tick")) != nil {
									return
								}
							}
						}
					},
				}
				var states stateLog
				c := dialPipe(t, s, WithHeartbeat(5*time.Second, 5*time.Second), WithStateHook(states.hook))
				c.CloseRead(context.Background())
				time.Sleep(time.Hour)
				synctest.Wait()
				require.Empty(t, states.to(Reconnecting), "the link was dropped")
				require.Equal(t, int64(1), s.dials.Load())
				st := c.Stats()
				require.InDelta(t, tc.pings, st.PingsSent, 1)
				require.Zero(t, st.PingsAnswered)
			})
		})
	}
}
