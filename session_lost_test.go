package tether_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/faultnet"
)

// How sessions end, and how the client learns it: a session the server
// could not keep (expired, replay buffer overflowed) surfaces as
// ErrSessionLost; a session the server or the client ended surfaces as the
// close code it ended with.

// lostProxy puts a faultnet proxy in front of addr, closed at cleanup.
func lostProxy(t *testing.T, addr string) *faultnet.Proxy {
	t.Helper()
	p, err := faultnetListen(addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// lostCutOff makes the client unable to reach the server: current connections
// are reset and new ones refused.
func lostCutOff(t *testing.T, p *faultnet.Proxy) {
	t.Helper()
	require.NoError(t, p.Refuse(true))
	p.Reset()
}

func lostEcho(t *testing.T, c *tether.Conn, msg string) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(msg)))
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, msg, string(got))
}

func lostRecv(t *testing.T, ch <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
		return nil
	}
}

// echoRecording echoes and reports the error that ended its Session.Read.
// It reads without serve's ctx, which ends with the session and would race
// the session's own error (see TestSessionLostReadWithServeCtx).
func echoRecording(errs chan<- error) func(ctx context.Context, s *tether.Session) {
	return func(ctx context.Context, s *tether.Session) {
		for {
			typ, p, err := s.Read(context.Background())
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			if s.Write(ctx, typ, p) != nil {
				return
			}
		}
	}
}

// A client away for longer than the session TTL comes back to a new
// session, and is told once that the old one is lost.
func TestSessionLostOnExpiry(t *testing.T) {
	t.Parallel()
	readErrs := make(chan error, 8)
	ss := newSessionServer(t, echoRecording(readErrs), tether.WithSessionTTL(200*time.Millisecond))
	p := lostProxy(t, ss.Addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	ev.next(t, tether.Connected, time.Second)
	lostEcho(t, c, "before")

	lostCutOff(t, p)
	ev.next(t, tether.Reconnecting, 5*time.Second)
	eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session expired")
	err := lostRecv(t, readErrs, 5*time.Second, "the old session's Read to fail")
	require.ErrorIs(t, err, tether.ErrSessionLost)

	require.NoError(t, p.Refuse(false))
	sc := ev.next(t, tether.Connected, 5*time.Second)
	require.ErrorIs(t, sc.Cause, tether.ErrSessionLost, "the state hook reports the lost session")
	ctx := ctxT(t, 5*time.Second)
	_, _, err = c.Read(ctx)
	require.ErrorIs(t, err, tether.ErrSessionLost, "Read reports the lost session")
	lostEcho(t, c, "after")
	require.Equal(t, 1, ss.h.Sessions(), "a new session")
	require.Equal(t, tether.Connected, c.State())
}

// A session whose replay buffer fills while its client is away is not
// lost for it: the server's Write waits, within its ctx, and when the client
// comes back with its acknowledgements every message arrives, once and in
// order.
func TestSessionWriteWaitsWhileAway(t *testing.T) {
	t.Parallel()
	const n = 40 // of 100 bytes each: far more than a 1 KiB window holds
	away := make(chan struct{})
	blocked := make(chan struct{})
	wrote := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		typ, p, err := s.Read(ctx)
		if err != nil || s.Write(ctx, typ, p) != nil {
			wrote <- errors.New("the session ended early")
			return
		}
		select {
		case <-away:
		case <-ctx.Done():
			wrote <- errors.New("the session ended early")
			return
		}
		once := false
		for i := range n {
			msg := fmt.Appendf(make([]byte, 0, 100), "%0100d", i)
			for {
				wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				err := s.Write(wctx, websocket.MessageBinary, msg)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					if !once {
						once = true
						close(blocked)
					}
					continue
				}
				if err != nil {
					wrote <- err
					return
				}
				break
			}
		}
		wrote <- nil
		<-ctx.Done()
	}, tether.WithReplayBuffer(1024))
	p := lostProxy(t, ss.Addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	ev.next(t, tether.Connected, time.Second)
	lostEcho(t, c, "before")

	lostCutOff(t, p)
	ev.next(t, tether.Reconnecting, 5*time.Second)
	close(away)
	select {
	case <-blocked:
	case err := <-wrote:
		t.Fatalf("serve's Write did not wait while the client was away: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve's Write never waited")
	}
	require.Equal(t, 1, ss.h.Sessions(), "the session is kept while its client is away")

	require.NoError(t, p.Refuse(false))
	ctx := ctxT(t, 10*time.Second)
	for i := range n {
		_, got, err := c.Read(ctx)
		require.NoError(t, err, "message %d", i)
		require.Equal(t, fmt.Sprintf("%0100d", i), string(got), "message %d", i)
	}
	require.NoError(t, lostRecv(t, wrote, 10*time.Second, "serve's Writes"))
	for _, e := range ev.list() {
		require.NotErrorIs(t, e.Cause, tether.ErrSessionLost)
	}
}

// A client that stays away past the session's TTL loses it: a server's
// Write waiting for room then fails with ErrSessionLost.
func TestSessionWriteWaitingEndsWithTTL(t *testing.T) {
	t.Parallel()
	away := make(chan struct{})
	wrote := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		typ, p, err := s.Read(ctx)
		if err != nil || s.Write(ctx, typ, p) != nil {
			wrote <- errors.New("the session ended early")
			return
		}
		<-away
		msg := make([]byte, 100)
		for {
			if err := s.Write(context.Background(), websocket.MessageBinary, msg); err != nil {
				wrote <- err
				return
			}
		}
	}, tether.WithReplayBuffer(1024), tether.WithSessionTTL(300*time.Millisecond))
	p := lostProxy(t, ss.Addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	ev.next(t, tether.Connected, time.Second)
	lostEcho(t, c, "before")

	lostCutOff(t, p)
	ev.next(t, tether.Reconnecting, 5*time.Second)
	close(away)
	err := lostRecv(t, wrote, 10*time.Second, "the server's Write to fail")
	require.ErrorIs(t, err, tether.ErrSessionLost)
	eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session ended")

	require.NoError(t, p.Refuse(false))
	ctx := ctxT(t, 10*time.Second)
	_, _, err = c.Read(ctx)
	require.ErrorIs(t, err, tether.ErrSessionLost, "Read reports the lost session")
	lostEcho(t, c, "after")
}

// A serve function naturally reads with its own ctx, which ends when the
// session does: Read must still say why the session ended (ErrSessionLost
// here), not that ctx was cancelled.
func TestSessionLostReadWithServeCtx(t *testing.T) {
	t.Parallel()
	errs := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		<-ctx.Done()
		// Each Read picks among ready select cases at random: ask often
		// enough that a wrong answer cannot hide.
		for range 20 {
			if _, _, err := s.Read(ctx); !errors.Is(err, tether.ErrSessionLost) {
				errs <- err
				return
			}
		}
		errs <- nil
	}, tether.WithSessionTTL(100*time.Millisecond))
	c := dial(t, ss.URL())
	require.NoError(t, c.CloseNow()) // no close frame: the session expires
	err := lostRecv(t, errs, 5*time.Second, "the serve function's Reads")
	require.NoError(t, err, "Session.Read with serve's ctx after the session expired")
}

// burstServe echoes, except that "burst N SIZE" makes it write N messages of
// SIZE bytes, each starting with its number.
func burstServe(ctx context.Context, s *tether.Session) {
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		if f := strings.Fields(string(p)); len(f) == 3 && f[0] == "burst" {
			n, _ := strconv.Atoi(f[1])
			size, _ := strconv.Atoi(f[2])
			for i := 1; i <= n; i++ {
				m := make([]byte, size)
				copy(m, strconv.Itoa(i)+" ")
				if s.Write(ctx, websocket.MessageBinary, m) != nil {
					return
				}
			}
			continue
		}
		if s.Write(ctx, typ, p) != nil {
			return
		}
	}
}

func readBurst(t *testing.T, c *tether.Conn, n int) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	for i := 1; i <= n; i++ {
		_, p, err := c.Read(ctx)
		require.NoError(t, err, "message %d of %d", i, n)
		require.True(t, strings.HasPrefix(string(p), strconv.Itoa(i)+" "), "message %d: %q", i, p[:min(len(p), 12)])
	}
}

// A new session opened in place of a lost one starts its numbering afresh:
// the client's acknowledgement of the old session must not be applied to
// the new one, or the server ignores the client's real acknowledgements
// until the new session's numbers pass the old one's, and a small replay
// buffer fills and blocks.
func TestSessionLostAckNotCarriedOver(t *testing.T) {
	t.Parallel()
	a := newSessionServer(t, burstServe, tether.WithReplayBuffer(1024))
	b := newSessionServer(t, burstServe, tether.WithReplayBuffer(1024))
	p := lostProxy(t, a.Addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	ev.next(t, tether.Connected, time.Second)
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("burst 60 10")))
	readBurst(t, c, 60)

	// The server is replaced by one that does not know the session.
	p.SetTarget(b.Addr())
	p.Reset()
	sc := ev.next(t, tether.Connected, 5*time.Second)
	require.ErrorIs(t, sc.Cause, tether.ErrSessionLost)
	_, _, err := c.Read(ctx)
	require.ErrorIs(t, err, tether.ErrSessionLost)

	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("burst 50 100")))
	readBurst(t, c, 50)
}

// quitServe echoes until quit is closed, then returns, which ends the
// session.
func quitServe(quit <-chan struct{}) func(ctx context.Context, s *tether.Session) {
	return func(ctx context.Context, s *tether.Session) {
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-quit:
				cancel()
			case <-rctx.Done():
			}
		}()
		sessionEcho(rctx, s)
	}
}

// A server whose serve function returns ends the session: the client's
// Conn closes with 1000 and does not reconnect.
func TestSessionCloseServeReturns(t *testing.T) {
	t.Parallel()
	quit := make(chan struct{})
	ss := newSessionServer(t, quitServe(quit))
	ev := newEvents()
	c := dial(t, ss.URL(), ev.option())
	lostEcho(t, c, "hi")
	close(quit)
	ctx := ctxT(t, 5*time.Second)
	_, _, err := c.Read(ctx)
	require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err), "%v", err)
	require.NotErrorIs(t, err, tether.ErrSessionLost)
	sc := ev.next(t, tether.Closed, 5*time.Second)
	require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(sc.Cause))
	require.Equal(t, tether.Closed, c.State())
	require.Zero(t, c.Stats().Reconnects)
	require.Equal(t, 0, ss.h.Sessions())
}

// The same when the client was away as the session ended: on its return the
// server's tombstone tells it the session ended with 1000, not that it was
// lost.
func TestTombstoneServeReturnsWhileAway(t *testing.T) {
	t.Parallel()
	quit := make(chan struct{})
	ss := newSessionServer(t, quitServe(quit))
	p := lostProxy(t, ss.Addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	lostEcho(t, c, "hi")

	lostCutOff(t, p)
	ev.next(t, tether.Reconnecting, 5*time.Second)
	close(quit)
	eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session ended")
	require.NoError(t, p.Refuse(false))

	ctx := ctxT(t, 5*time.Second)
	_, _, err := c.Read(ctx)
	require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err), "%v", err)
	require.NotErrorIs(t, err, tether.ErrSessionLost)
	sc := ev.next(t, tether.Closed, 5*time.Second)
	require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(sc.Cause))
	for _, e := range ev.list() {
		require.NotErrorIs(t, e.Cause, tether.ErrSessionLost)
	}
	require.Equal(t, 0, ss.h.Sessions(), "the client did not open a new session")
}

// Session.Close with an application code closes the client's Conn with it,
// for good.
func TestSessionCloseKicked(t *testing.T) {
	t.Parallel()
	closeErr := make(chan error, 2)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		_, p, err := s.Read(ctx)
		if err == nil && string(p) == "kick me" {
			closeErr <- s.Close(4001, "kicked")
			// A second Close reports that the session has ended.
			if err := s.Close(4002, "again"); !errors.Is(err, net.ErrClosed) {
				closeErr <- err
			}
		}
	})
	ev := newEvents()
	c := dial(t, ss.URL(), ev.option())
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("kick me")))
	_, _, err := c.Read(ctx)
	require.Equal(t, websocket.StatusCode(4001), websocket.CloseStatus(err), "%v", err)
	var ce websocket.CloseError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "kicked", ce.Reason)
	require.NoError(t, lostRecv(t, closeErr, 5*time.Second, "Session.Close"))
	ev.next(t, tether.Closed, 5*time.Second)
	require.Equal(t, tether.Closed, c.State())
	st := c.Stats()
	require.Equal(t, uint64(1), st.Dials, "no reconnect attempt")
	require.Zero(t, st.Reconnects)
	for _, e := range ev.list() {
		require.NotEqual(t, tether.Reconnecting, e.To)
	}
	eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session ended")
	select {
	case err := <-closeErr:
		t.Fatalf("second Session.Close: %v", err)
	default:
	}
}

// A client's Close ends its server session, over either transport.
func TestSessionCloseByClient(t *testing.T) {
	t.Parallel()
	for _, tr := range []tether.Transport{tether.WebSocket, tether.Polling} {
		t.Run(tr.String(), func(t *testing.T) {
			t.Parallel()
			readErrs := make(chan error, 1)
			ss := newSessionServer(t, echoRecording(readErrs))
			var opts []tether.Option
			if tr == tether.Polling {
				ss.setBlock(true)
				opts = append(opts, tether.WithFallback(""))
			}
			c := dial(t, ss.URL(), opts...)
			require.Equal(t, tr, c.Transport())
			lostEcho(t, c, "hi")
			require.NoError(t, c.Close(websocket.StatusNormalClosure, "bye"))
			err := lostRecv(t, readErrs, 5*time.Second, "the server's Read to fail")
			require.Equal(t, websocket.StatusNormalClosure, websocket.CloseStatus(err), "%v", err)
			eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session ended")
		})
	}
}

// A tether client's Close is for good whatever its code: the server must not
// keep the session waiting for a resume that will not come. Over polling
// any Close frame ends the session; over WebSocket only 1000 does.
func TestSessionCloseByClientAnyCode(t *testing.T) {
	t.Parallel()
	for _, tr := range []tether.Transport{tether.WebSocket, tether.Polling} {
		t.Run(tr.String(), func(t *testing.T) {
			t.Parallel()
			readErrs := make(chan error, 1)
			ss := newSessionServer(t, echoRecording(readErrs))
			var opts []tether.Option
			if tr == tether.Polling {
				ss.setBlock(true)
				opts = append(opts, tether.WithFallback(""))
			}
			c := dial(t, ss.URL(), opts...)
			require.Equal(t, tr, c.Transport())
			lostEcho(t, c, "hi")
			require.NoError(t, c.Close(4000, "done"))
			err := lostRecv(t, readErrs, 5*time.Second, "the server's Read to fail")
			require.Equal(t, websocket.StatusCode(4000), websocket.CloseStatus(err), "%v", err)
			eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session ended")
		})
	}
}

// newClosableServer is newSessionServer for tests that close the Handler
// themselves.
func newClosableServer(t *testing.T, h *tether.Handler) *sessionServer {
	t.Helper()
	ss := &sessionServer{h: h}
	ss.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ss.mu.Lock()
		block := ss.blockUpgrade
		ss.mu.Unlock()
		if block {
			r.Header.Del("Upgrade")
			r.Header.Del("Connection")
		}
		ss.h.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ss.srv.Listener = ln
	ss.srv.Start()
	t.Cleanup(func() {
		_ = ss.h.Close()
		ss.srv.CloseClientConnections()
		ss.srv.Close()
	})
	return ss
}

// Handler.Close ends every session: serve functions have returned when it
// does, clients see 1001 and their reconnect attempts are turned away.
func TestHandlerCloseEndsSessions(t *testing.T) {
	t.Parallel()
	var started, returned atomic.Int32
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
		started.Add(1)
		defer returned.Add(1)
		sessionEcho(ctx, s)
	})
	ss := newClosableServer(t, h)
	wsEv, pollEv := newEvents(), newEvents()
	wc := dial(t, ss.URL(), wsEv.option())
	lostEcho(t, wc, "ws")
	ss.setBlock(true)
	pc := dial(t, ss.URL(), tether.WithFallback(""), pollEv.option())
	require.Equal(t, tether.Polling, pc.Transport())
	lostEcho(t, pc, "poll")
	require.Equal(t, 2, h.Sessions())
	wsEv.next(t, tether.Connected, time.Second)
	pollEv.next(t, tether.Connected, time.Second)

	require.NoError(t, h.Close())
	require.Equal(t, int32(2), started.Load())
	require.Equal(t, int32(2), returned.Load(), "serve functions returned before Close did")
	require.Equal(t, 0, h.Sessions())
	require.ErrorIs(t, h.Close(), net.ErrClosed)

	for _, x := range []struct {
		c  *tether.Conn
		ev *events
	}{{wc, wsEv}, {pc, pollEv}} {
		sc := x.ev.next(t, tether.Reconnecting, 5*time.Second)
		require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(sc.Cause), "%v", sc.Cause)
		dials := x.c.Stats().Dials
		eventually(t, 5*time.Second, func() bool { return x.c.Stats().Dials >= dials+3 }, "reconnect attempts")
		require.NotEqual(t, tether.Connected, x.c.State())
		require.NoError(t, x.c.Close(websocket.StatusNormalClosure, ""))
	}
	for _, ev := range []*events{wsEv, pollEv} {
		connected := 0
		for _, e := range ev.list() {
			if e.To == tether.Connected {
				connected++
			}
		}
		require.Equal(t, 1, connected, "no reconnect succeeded")
	}
	require.Equal(t, 0, h.Sessions())
	require.Equal(t, int32(2), started.Load(), "no session opened after Close")
}
