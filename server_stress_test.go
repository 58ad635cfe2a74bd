package tether_test

import (
	"bytes"
	"context"
	"log"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// lockedBuffer collects an http.Server's error log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// handlerCloseWithin closes h and fails the test if Close does not return in d.
func handlerCloseWithin(t *testing.T, h *tether.Handler, d time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- h.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(d):
		t.Fatalf("Handler.Close did not return within %v", d)
	}
}

// Sessions that end while their WebSocket handshake is still being served:
// serve returns at once, racing the link's attachment. No panic, and Close
// returns.
func TestSessionEndsDuringHandshake(t *testing.T) {
	t.Parallel()
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {})
	var errLog lockedBuffer
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Config.ErrorLog = log.New(&errLog, "", 0)
	srv.Start()
	defer srv.Close()
	url := "ws" + srv.URL[len("http"):]
	ctx := ctxT(t, 60*time.Second)
	for i := range 300 {
		ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
		require.NoError(t, err, "dial %d", i)
		_, _, _ = ws.Read(ctx) // the Hello, or the close
		_ = ws.CloseNow()
		require.NotContains(t, errLog.String(), "panic", "iteration %d", i)
	}
	handlerCloseWithin(t, h, 10*time.Second)
	require.NotContains(t, errLog.String(), "panic")
}

// Handler.Close while polling clients keep sending and polling: every client
// is told 1001, whichever of its requests meets the end (never a 404 or 409
// from a request that raced it).
func TestHandlerCloseEndsBusyPollingSessions(t *testing.T) {
	t.Parallel()
	const clients = 8
	h := tether.NewHandler(sessionEcho)
	ss := newClosableServer(t, h)
	ss.setBlock(true)
	type client struct {
		c  *tether.Conn
		ev *events
	}
	var cs []client
	ctx := ctxT(t, 30*time.Second)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	t.Cleanup(func() {
		close(stop)
		for _, x := range cs {
			_ = x.c.CloseNow()
		}
		wg.Wait()
	})
	for range clients {
		ev := newEvents()
		c := dial(t, ss.URL(), tether.WithFallback(""), ev.option())
		require.Equal(t, tether.Polling, c.Transport())
		cs = append(cs, client{c, ev})
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				_ = c.Write(wctx, websocket.MessageText, []byte("x"))
				cancel()
			}
		}()
		go func() {
			defer wg.Done()
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
			}
		}()
	}
	eventually(t, 10*time.Second, func() bool { return h.Sessions() == clients }, "every client has a session")
	time.Sleep(50 * time.Millisecond) // traffic flowing both ways
	handlerCloseWithin(t, h, 10*time.Second)
	for i, x := range cs {
		sc := x.ev.next(t, tether.Reconnecting, 5*time.Second)
		require.Equal(t, websocket.StatusGoingAway, websocket.CloseStatus(sc.Cause), "client %d: %v", i, sc.Cause)
	}
}
