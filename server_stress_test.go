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
