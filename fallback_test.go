package tether_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

func fastProbes() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }

// A path that does not pass Upgrade: the Conn ends on long polling, and
// numbered streams go both ways exactly once.
func TestFallbackToPolling(t *testing.T) {
	t.Parallel()
	const n = 500
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	ss.setBlock(true)
	ev := newEvents()
	c := dial(t, ss.URL(), tether.WithFallback(""), ev.option())
	require.Equal(t, tether.Polling, c.Transport())
	sc := ev.next(t, tether.Connected, time.Second)
	require.Equal(t, tether.Polling, sc.Transport)
	var he *tether.HandshakeError
	require.True(t, errors.As(sc.Cause, &he), "the switch reports its cause: %v", sc.Cause)
	require.Equal(t, 426, he.StatusCode)
	streams(t, c, got, n, 100, nil)
}

// Polling requests cut mid-flight are retried without loss or duplication.
func TestPollingThroughResets(t *testing.T) {
	t.Parallel()
	const n = 600
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	ss.setBlock(true)
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	c := dial(t, "ws://"+p.Addr(), tether.WithFallback(""))
	require.Equal(t, tether.Polling, c.Transport())
	streams(t, c, got, n, 50, p.Reset)
}

// Across the switch to polling and back to WebSocket, nothing is lost or
// repeated, and the state hook tells the user.
func TestFallbackAndBack(t *testing.T) {
	t.Parallel()
	const n = 900
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), tether.WithFallback(""), tether.WithProbeBackoff(fastProbes), ev.option())
	require.Equal(t, tether.WebSocket, c.Transport())
	step := 0
	streams(t, c, got, n, 100, func() {
		step++
		switch step {
		case 2: // the proxy starts stripping Upgrade; the link drops
			ss.setBlock(true)
			p.Reset()
		case 4:
			eventually(t, 10*time.Second, func() bool { return c.Transport() == tether.Polling }, "on polling")
		case 5: // the proxy is fixed: a probe gets through
			ss.setBlock(false)
			eventually(t, 10*time.Second, func() bool { return c.Transport() == tether.WebSocket }, "back on WebSocket")
		}
	})
	var transports []tether.Transport
	for _, sc := range ev.list() {
		if sc.To == tether.Connected {
			transports = append(transports, sc.Transport)
		}
	}
	require.Contains(t, transports, tether.Polling)
	require.Equal(t, tether.WebSocket, transports[len(transports)-1], "came back to WebSocket: %v", transports)
	require.Equal(t, tether.WebSocket, c.Transport())
}

// A refused TCP connection (server down) is not a reason to fall back.
func TestRefusedDoesNotFallBack(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), tether.WithFallback(""), ev.option())
	require.NoError(t, p.Refuse(true))
	p.Reset()
	ev.next(t, tether.Reconnecting, 5*time.Second)
	eventually(t, 10*time.Second, func() bool { return c.Stats().HandshakeFailures.Refused >= 5 }, "5 refused attempts")
	require.NoError(t, p.Refuse(false))
	sc := ev.next(t, tether.Connected, 10*time.Second)
	require.Equal(t, tether.WebSocket, sc.Transport)
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("x")))
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "x", string(got))
}

// The polling URL never downgrades TLS.
func TestFallbackRefusesDowngrade(t *testing.T) {
	t.Parallel()
	_, err := tether.Dial(context.Background(), "wss://127.0.0.1:1/x", tether.WithFallback("http://127.0.0.1:1/x"))
	require.ErrorIs(t, err, tether.ErrInvalidOption)
	_, err = tether.Dial(context.Background(), "ws://127.0.0.1:1/x", tether.WithFallback("ftp://127.0.0.1:1/x"))
	require.ErrorIs(t, err, tether.ErrInvalidOption)
}

// A 403 that carries the Handler's Tether-Protocol mark is the server's own
// refusal (here its Origin check), not a proxy's: permanent at once, with no
// attempt at polling, fallback or not.
func TestFallbackHandlerRefusalIsPermanent(t *testing.T) {
	t.Parallel()
	h := tether.NewHandler(sessionEcho, tether.WithAcceptOptions(&websocket.AcceptOptions{OriginPatterns: []string{"good.example"}}))
	var reqs atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		h.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { require.NoError(t, h.Close()); srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = tether.Dial(ctx, "ws://"+ln.Addr().String(), tether.WithFallback(""), tether.WithBackoff(constBackoff(10*time.Millisecond)),
		tether.WithDialOptions(&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://evil.example"}}}))
	var he *tether.HandshakeError
	require.True(t, errors.As(err, &he), "got %v", err)
	require.Equal(t, http.StatusForbidden, he.StatusCode)
	require.Equal(t, int64(1), reqs.Load(), "no polling after the Handler's own refusal")
}

// WithHeader's headers go on every long-polling request, not only on the
// open, and fresh for each: middleware in front of the Handler checks every
// request.
func TestPollingCarriesHeaderOnEveryRequest(t *testing.T) {
	t.Parallel()
	h := tether.NewHandler(sessionEcho)
	var (
		mu     sync.Mutex
		tokens = map[string]int{}
		bare   []string
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			// A proxy that strips the Upgrade: WebSocket never works.
			r.Header.Del("Upgrade")
			r.Header.Del("Connection")
		}
		mu.Lock()
		if tok := r.Header.Get("Authorization"); tok != "" {
			tokens[tok]++
		} else {
			bare = append(bare, r.Method+" "+r.URL.RawQuery)
		}
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { require.NoError(t, h.Close()); srv.CloseClientConnections(); srv.Close() })

	var n atomic.Int64
	c := dial(t, "ws://"+ln.Addr().String(), tether.WithFallback(""),
		tether.WithHeader(func(context.Context) (http.Header, error) {
			return http.Header{"Authorization": {fmt.Sprintf("Bearer tok-%d", n.Add(1))}}, nil
		}))
	require.Equal(t, tether.Polling, c.Transport())
	ctx := ctxT(t, 10*time.Second)
	for i := range 5 {
		msg := []byte(strconv.Itoa(i))
		require.NoError(t, c.Write(ctx, websocket.MessageText, msg))
		_, p, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, msg, p)
	}
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, bare, "requests without the header")
	require.GreaterOrEqual(t, len(tokens), 10, "a handshake, the open, polls and sends")
	for tok, k := range tokens {
		require.Equal(t, 1, k, "%s was used on %d requests: headers are fresh per request", tok, k)
	}
}
