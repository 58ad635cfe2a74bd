package tether_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// dialPlain opens a plain WebSocket (no tether.v1) to ss, closed at cleanup.
func dialPlain(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(ctxT(t, 5*time.Second), url, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ws.CloseNow() })
	return ws
}

// waitCh waits for ch to be closed, or fails the test after d.
func waitCh(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// Handler.Close ends plain sessions too: a serve that waits on its ctx
// returns, Close returns, and the client is told 1001.
func TestHandlerCloseEndsPlainSessions(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
		started <- struct{}{}
		<-ctx.Done()
	})
	ss := newClosableServer(t, h)
	ws := dialPlain(t, ss.URL())
	readErr := make(chan error, 1)
	go func() {
		_, _, err := ws.Read(context.Background())
		readErr <- err
	}()
	waitCh(t, started, 5*time.Second, "serve to start")
	require.Equal(t, 1, h.Sessions(), "a plain session is a session")
	handlerCloseWithin(t, h, 5*time.Second)
	err := <-readErr
	require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(err), "%v", err)
	require.Equal(t, 0, h.Sessions())
}

// Handler.Close does not wait for clients that do not answer its close one
// after another: twenty plain clients that never read, and as many in
// session mode, hold it no longer than one.
func TestHandlerCloseDoesNotWaitInTurn(t *testing.T) {
	t.Parallel()
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) { <-ctx.Done() })
	ss := newClosableServer(t, h)
	ctx := ctxT(t, 10*time.Second)
	for range 20 {
		dialPlain(t, ss.URL())
		ws, _, err := websocket.Dial(ctx, ss.URL(), &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = ws.CloseNow() })
	}
	eventually(t, 5*time.Second, func() bool { return h.Sessions() == 40 }, "forty sessions")
	start := time.Now()
	handlerCloseWithin(t, h, 9*time.Second)
	t.Logf("Close with 40 silent clients took %v", time.Since(start))
}

// A plain client that goes away ends its session: serve's ctx ends, and
// serve's Read says the connection was lost.
func TestPlainSessionEndsWithClient(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"close", "reset"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			readErr := make(chan error, 1)
			ctxDone := make(chan struct{})
			ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
				_, _, err := s.Read(context.Background())
				readErr <- err
				<-ctx.Done()
				close(ctxDone)
			})
			ws := dialPlain(t, ss.URL())
			eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 1 }, "the plain session")
			if how == "close" {
				require.NoError(t, ws.Close(4000, "bye"))
			} else {
				require.NoError(t, ws.CloseNow())
			}
			waitCh(t, ctxDone, 5*time.Second, "serve's ctx to end")
			err := <-readErr
			require.Error(t, err)
			if how == "close" {
				require.Equal(t, websocket.StatusCode(4000), websocket.CloseStatus(err), "%v", err)
			}
			eventually(t, 5*time.Second, func() bool { return ss.h.Sessions() == 0 }, "the session forgotten")
		})
	}
}

// A plain client's pings are answered while serve does not read, with
// messages waiting for serve or not (field report 1, on the server side).
func TestPlainPingsAnsweredWhileServeBusy(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var read atomic.Int32
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		select {
		case <-release:
		case <-ctx.Done():
			return
		}
		for {
			if _, _, err := s.Read(ctx); err != nil {
				return
			}
			read.Add(1)
		}
	})
	ws := dialPlain(t, ss.URL())
	ctx := ctxT(t, 10*time.Second)
	// The client reads in the background, as coder/websocket needs for
	// its pongs.
	go func() {
		for {
			if _, _, err := ws.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	for i := range 3 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		require.NoError(t, ws.Ping(pctx), "ping %d while serve does not read", i)
		cancel()
		require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte("waiting for serve")))
	}
	close(release)
	eventually(t, 5*time.Second, func() bool { return read.Load() == 3 }, "serve reads what waited")
}

// WithMaxSessions counts every kind of session: plain clients, session-mode
// WebSockets and polling. The one beyond is refused, and a slot freed is
// taken again.
func TestMaxSessionsCountsEveryKind(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t, tether.WithMaxSessions(3))
	ctx := ctxT(t, 10*time.Second)

	plain := dialPlain(t, g.URL())
	tws, _, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
	require.NoError(t, err)
	defer tws.CloseNow()
	_, _, err = tws.Read(ctx) // the Hello
	require.NoError(t, err)
	g.open()
	eventually(t, 5*time.Second, func() bool { return g.h.Sessions() == 3 }, "three sessions")

	// Beyond the bound: polling is refused with 503, WebSockets with 1013.
	resp, err := g.hc.Post(g.base+"?tether=open", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	for _, protos := range [][]string{nil, {tether.Subprotocol}} {
		ws, _, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{Subprotocols: protos})
		require.NoError(t, err)
		_, _, err = ws.Read(ctx)
		require.Equal(t, websocket.StatusTryAgainLater, websocket.CloseStatus(err), "%v %v", protos, err)
		_ = ws.CloseNow()
	}
	require.Equal(t, 3, g.h.Sessions())

	// A plain client that leaves frees its slot.
	require.NoError(t, plain.Close(websocket.StatusNormalClosure, ""))
	eventually(t, 5*time.Second, func() bool { return g.h.Sessions() == 2 }, "the plain slot freed")
	g.open()
	require.Equal(t, 3, g.h.Sessions())
}

// A plain client's Close with a code reaches serve as a CloseError, and
// serve's own Close reaches the client.
func TestPlainSessionClose(t *testing.T) {
	t.Parallel()
	closed := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		_, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		require.Equal(t, "kick", string(p))
		require.NoError(t, s.Close(4001, "kicked"))
		closed <- s.Close(4002, "again")
	})
	ws := dialPlain(t, ss.URL())
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte("kick")))
	_, _, err := ws.Read(ctx)
	require.Equal(t, websocket.StatusCode(4001), websocket.CloseStatus(err), "%v", err)
	require.True(t, errors.Is(<-closed, net.ErrClosed))
}
