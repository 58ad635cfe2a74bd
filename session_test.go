package tether_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// sessionServer is a tether.Handler on a real HTTP server on 127.0.0.1.
type sessionServer struct {
	h   *tether.Handler
	srv *httptest.Server
	mu  sync.Mutex
	// blockUpgrade makes the server answer WebSocket handshakes like a proxy
	// that does not pass Upgrade.
	blockUpgrade bool
}

func newSessionServer(t *testing.T, serve func(ctx context.Context, s *tether.Session), opts ...tether.HandlerOption) *sessionServer {
	t.Helper()
	ss := &sessionServer{h: tether.NewHandler(serve, opts...)}
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
		require.NoError(t, ss.h.Close())
		ss.srv.CloseClientConnections()
		ss.srv.Close()
	})
	return ss
}

func (ss *sessionServer) URL() string { return "ws" + ss.srv.URL[len("http"):] }

func (ss *sessionServer) Addr() string { return ss.srv.Listener.Addr().String() }

func (ss *sessionServer) setBlock(on bool) {
	ss.mu.Lock()
	ss.blockUpgrade = on
	ss.mu.Unlock()
}

func sessionEcho(ctx context.Context, s *tether.Session) {
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		if err := s.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

func TestSessionEcho(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	ctx := ctxT(t, 10*time.Second)
	for i := range 50 {
		msg := []byte("m" + strconv.Itoa(i))
		require.NoError(t, c.Write(ctx, websocket.MessageText, msg))
		typ, got, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, websocket.MessageText, typ)
		require.Equal(t, msg, got)
	}
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	require.Eventually(t, func() bool { return ss.h.Sessions() == 0 }, 5*time.Second, 5*time.Millisecond)
}

// A plain WebSocket client, which does not offer tether.v1, gets a Session
// over its connection as it is.
func TestHandlerServesPlainClients(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	ctx := ctxT(t, 10*time.Second)
	ws, _, err := websocket.Dial(ctx, ss.URL(), nil)
	require.NoError(t, err)
	defer ws.CloseNow()
	require.Equal(t, "", ws.Subprotocol())
	require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte("plain")))
	_, got, err := ws.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "plain", string(got))
	require.NoError(t, ws.Close(websocket.StatusNormalClosure, ""))
}

// streams runs numbered messages both ways at once and checks that each
// side gets every message exactly once, in order. While the client reads,
// disrupt is called after every `every` messages.
func streams(t *testing.T, c *tether.Conn, got chan string, n, every int, disrupt func()) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	errc := make(chan error, 1)
	go func() {
		for i := 1; i <= n; i++ {
			if err := c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))); err != nil {
				errc <- err
				return
			}
			if i%every == 0 {
				time.Sleep(time.Millisecond) // let the server's stream interleave
			}
		}
		errc <- nil
	}()
	for i := 1; i <= n; i++ {
		_, p, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, "s"+strconv.Itoa(i), string(p), "client stream out of order")
		if disrupt != nil && i%every == 0 {
			disrupt()
		}
	}
	require.NoError(t, <-errc)
	for i := 1; i <= n; i++ {
		select {
		case m := <-got:
			require.Equal(t, strconv.Itoa(i), m, "server stream out of order")
		case <-ctx.Done():
			t.Fatalf("server got %d of %d messages", i-1, n)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("server got an extra message %q", m)
	default:
	}
}

// numbered is a session server that records what it reads and sends n
// numbered messages of its own.
func numbered(n int, got chan string) func(ctx context.Context, s *tether.Session) {
	return func(ctx context.Context, s *tether.Session) {
		go func() {
			for i := 1; i <= n; i++ {
				if s.Write(ctx, websocket.MessageText, []byte("s"+strconv.Itoa(i))) != nil {
					return
				}
			}
		}()
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				return
			}
			got <- string(p)
		}
	}
}

// Repeated TCP resets on WebSocket: every message both ways exactly once,
// and one reconnect per reset, no more: a replay that skipped a message
// would be caught by gap detection, which costs a reconnect of its own.
func TestSessionExactlyOnceThroughResets(t *testing.T) {
	t.Parallel()
	const n = 2000
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	var handshakes atomic.Int64
	inner := ss.srv.Config.Handler
	ss.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			handshakes.Add(1)
		}
		inner.ServeHTTP(w, r)
	})
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	resets := 0
	streams(t, c, got, n, 200, func() {
		// Reset the link and wait until the Conn is back on the next, so
		// that every reset cuts a live link in the middle of both streams
		// (the client reads ahead, so its Reads do not pace the resets).
		before := c.Stats().Reconnects
		p.Reset()
		resets++
		eventually(t, 10*time.Second, func() bool { return c.Stats().Reconnects > before }, "a new link after the reset")
	})
	require.Equal(t, uint64(resets), c.Stats().Reconnects, "one reconnect per reset")
	require.Equal(t, int64(resets+1), handshakes.Load(), "one handshake per link")
	for _, sc := range ev.list() {
		require.NotErrorIs(t, sc.Cause, tether.ErrSessionLost)
	}
}

// Long polling carries both streams exactly once without a reconnect: every
// poll answers what the client has not acknowledged, and a poll that skipped
// a message would cost a reconnect.
func TestSessionPollingExactlyOnce(t *testing.T) {
	t.Parallel()
	const n = 1000
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	ss.setBlock(true)
	c := dial(t, ss.URL(), tether.WithFallback(""))
	require.Equal(t, tether.Polling, c.Transport())
	streams(t, c, got, n, 100, nil)
	require.Zero(t, c.Stats().Reconnects)
}
