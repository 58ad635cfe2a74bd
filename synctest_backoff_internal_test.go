package tether

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// gapsAfterLoss returns, for each Reconnecting transition, how long it was
// until the next dial, when every attempt succeeds: the k-th loss is
// followed by dial k+1.
func gapsAfterLoss(states *stateLog, dials []time.Time) []time.Duration {
	var gaps []time.Duration
	for k, sc := range states.to(Reconnecting) {
		if k+1 < len(dials) {
			gaps = append(gaps, dials[k+1].Sub(sc.At))
		}
	}
	return gaps
}

// A server that accepts every link and closes it a second later with a
// retryable code: the backoff is not reset by links that did not prove
// themselves, so the delays grow to the cap instead of a reconnect every
// second or two.
func TestSynctestFlappingServerBackoffGrows(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := &pipeServer{handle: func(ctx context.Context, ws *websocket.Conn) {
			time.Sleep(time.Second)
			_ = ws.Close(websocket.StatusGoingAway, "restarting")
		}}
		var states stateLog
		c := dialPipe(t, s, WithStateHook(states.hook))
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		n := s.dials.Load()
		gaps := gapsAfterLoss(&states, s.times())
		var longest time.Duration
		for _, g := range gaps {
			require.Less(t, g, defaultBackoffMax)
			longest = max(longest, g)
		}
		// Fresh delays every time would be ~900 links in 30 minutes.
		require.Less(t, n, int64(200), "links in 30 minutes of a flapping server")
		require.Greater(t, longest, 20*time.Second, "the delays grew")
		require.NotEqual(t, Closed, c.State())
	})
}

// A link that stayed up a while has proved itself: after it, the backoff
// starts over, however much it had grown before.
func TestSynctestProvenLinkResetsBackoff(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var links atomic.Int64
		s := &pipeServer{handle: func(ctx context.Context, ws *websocket.Conn) {
			life := time.Second
			if links.Add(1) > 6 {
				life = linkProven + time.Minute
			}
			time.Sleep(life)
			_ = ws.Close(websocket.StatusGoingAway, "restarting")
		}}
		var states stateLog
		dialPipe(t, s, WithStateHook(states.hook))
		for links.Load() < 13 {
			time.Sleep(time.Minute)
		}
		synctest.Wait()
		gaps := gapsAfterLoss(&states, s.times())
		require.GreaterOrEqual(t, len(gaps), 12)
		// The six short links grew the backoff; each of the long ones
		// reset it: the first delay after each is below the first step.
		for i := 6; i < 12; i++ {
			require.Less(t, gaps[i], defaultBackoffInitial, "delay after proven link %d", i+1)
		}
	})
}

// 1013 (Try Again Later) is honoured like a Retry-After: the next attempt
// waits at least 5 s, whatever the backoff says.
func TestSynctestTryAgainLaterWaits(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var links atomic.Int64
		s := &pipeServer{handle: func(ctx context.Context, ws *websocket.Conn) {
			if links.Add(1) <= 3 {
				_ = ws.Close(websocket.StatusTryAgainLater, "busy")
				return
			}
			_, _, _ = ws.Read(ctx)
		}}
		var states stateLog
		dialPipe(t, s, WithStateHook(states.hook), WithBackoff(constBackoffFactory(10*time.Millisecond)))
		time.Sleep(time.Minute)
		synctest.Wait()
		gaps := gapsAfterLoss(&states, s.times())
		require.Len(t, gaps, 3)
		require.Equal(t, int64(4), s.dials.Load())
		for i, g := range gaps {
			require.GreaterOrEqual(t, g, tryAgainLater, "delay after 1013 number %d", i+1)
			require.Less(t, g, 2*tryAgainLater+10*time.Millisecond)
		}
	})
}

func constBackoffFactory(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

// A server that sends a message over the read limit on every connect (a
// snapshot that grew) is not hammered: such links do not prove themselves,
// and the delays between them grow. Read is told.
func TestSynctestOverLimitDoesNotLoopAtFullSpeed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := &pipeServer{handle: func(ctx context.Context, ws *websocket.Conn) {
			// Reading while it writes, the server takes the client's
			// close at once.
			ctx = ws.CloseRead(ctx)
			if ws.Write(ctx, websocket.MessageBinary, make([]byte, 64<<10)) != nil {
				return
			}
			<-ctx.Done()
		}}
		c := dialPipe(t, s, WithBackoff(func() backoff.BackOff {
			return backoff.NewExponentialBackOff(backoff.WithInitialInterval(10*time.Millisecond),
				backoff.WithRandomizationFactor(0), backoff.WithMaxInterval(10*time.Second), backoff.WithMaxElapsedTime(0))
		}))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _, err := c.Read(ctx)
		require.ErrorIs(t, err, websocket.ErrMessageTooBig)
		time.Sleep(time.Minute)
		synctest.Wait()
		// 10 ms doubling to 10 s: 22 links in a minute; fresh delays
		// make thousands.
		require.LessOrEqual(t, s.dials.Load(), int64(30))
	})
}

// After a lost link, the first attempt waits one backoff step too, so that a
// crowd of clients dropped together by a restart spreads out.
func TestSynctestFirstReconnectWaits(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var links atomic.Int64
		s := &pipeServer{handle: func(ctx context.Context, ws *websocket.Conn) {
			if links.Add(1) == 1 {
				_ = ws.Close(websocket.StatusGoingAway, "restarting")
				return
			}
			_, _, _ = ws.Read(ctx)
		}}
		var states stateLog
		dialPipe(t, s, WithStateHook(states.hook), WithBackoff(constBackoffFactory(3*time.Second)))
		time.Sleep(time.Minute)
		synctest.Wait()
		gaps := gapsAfterLoss(&states, s.times())
		require.Len(t, gaps, 1)
		require.Equal(t, 3*time.Second, gaps[0], "the first reconnect waited one step")
	})
}

// Queued messages older than WithQueueMaxAge are dropped, not sent, and the
// others go out: in fake time, with a minute between them.
func TestSynctestQueueMaxAge(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var down atomic.Bool
		var links atomic.Int64
		got := make(chan string, 8)
		s := &pipeServer{
			handle: func(ctx context.Context, ws *websocket.Conn) {
				if links.Add(1) == 1 {
					down.Store(true)
					_ = ws.Close(websocket.StatusGoingAway, "restarting")
					return
				}
				for {
					_, p, err := ws.Read(ctx)
					if err != nil {
						return
					}
					got <- string(p)
				}
			},
			fail: func(int) error {
				if down.Load() {
					return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
				}
				return nil
			},
		}
		var states stateLog
		c := dialPipe(t, s, WithStateHook(states.hook), WithQueueMaxAge(time.Minute),
			WithBackoff(constBackoffFactory(time.Second)))
		synctest.Wait()
		require.Equal(t, Reconnecting, c.State())
		ctx := context.Background()
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("stale")))
		time.Sleep(2 * time.Minute)
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("fresh")))
		require.Equal(t, 1, c.Stats().QueueDepth, "the stale one was dropped")
		down.Store(false)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		require.Equal(t, Connected, c.State())
		require.Equal(t, "fresh", <-got)
		require.Empty(t, got)
		require.Equal(t, uint64(1), c.Stats().QueueDropped)
	})
}

// A tether Handler's 503 with a Retry-After (a session moving between
// instances, an owner that stopped answering) is retried after that delay,
// drawn up to twice it, however far the backoff has grown: the client of a
// crashed instance hears that its session is lost soon after the owner's
// lease runs out. The same answer from something else (a proxy, say) waits
// the longer of the two.
func TestSynctestHandlerRetryAfterReplacesBackoff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		handler bool
		lo, hi  time.Duration // bounds of each gap after a refusal
	}{
		{"handler", true, time.Second, 2 * time.Second},
		{"proxy", false, 10 * time.Second, 10*time.Second + time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				const refused = 5
				var first atomic.Bool
				s := &pipeServer{
					handle: func(ctx context.Context, ws *websocket.Conn) {
						if first.CompareAndSwap(false, true) {
							_ = ws.Close(websocket.StatusGoingAway, "restarting")
							return
						}
						_, _, _ = ws.Read(ctx)
					},
					answer: func(n int) *http.Response {
						if n < 2 || n > 1+refused {
							return nil
						}
						h := http.Header{"Retry-After": {"1"}}
						if tc.handler {
							h.Set(headerProtocol, Subprotocol)
						}
						return &http.Response{StatusCode: http.StatusServiceUnavailable, Header: h, Body: http.NoBody}
					},
				}
				dialPipe(t, s, WithBackoff(constBackoffFactory(10*time.Second)))
				time.Sleep(10 * time.Minute)
				synctest.Wait()
				dials := s.times()
				require.Len(t, dials, refused+2)
				for i := 2; i < len(dials); i++ {
					g := dials[i].Sub(dials[i-1])
					require.GreaterOrEqual(t, g, tc.lo, "gap after refusal %d", i-1)
					require.Less(t, g, tc.hi, "gap after refusal %d", i-1)
				}
			})
		})
	}
}
