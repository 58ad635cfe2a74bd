package tether_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// WithHandshakeTimeout bounds the request that opens a session over long
// polling as it bounds a WebSocket handshake: an open that hangs is one
// failed attempt, and the next one gets through, instead of a Conn kept
// away from its session for as long as the hang lasts.
func TestPollingOpenHonoursHandshakeTimeout(t *testing.T) {
	t.Parallel()
	h := tether.NewHandler(sessionEcho)
	stop := make(chan struct{})
	held := make(chan time.Duration, 1) // how long the hung open was held
	var opens atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			http.Error(w, "no upgrades on this path", http.StatusUpgradeRequired)
			return
		}
		if r.URL.Query().Get("tether") == "open" && opens.Add(1) == 1 {
			start := time.Now()
			select { // the first open hangs until the client gives up on it
			case <-r.Context().Done():
				held <- time.Since(start)
			case <-stop:
			}
			return
		}
		h.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() {
		close(stop)
		require.NoError(t, h.Close())
		srv.CloseClientConnections()
		srv.Close()
	})

	ctx := ctxT(t, 5*time.Second)
	c, err := tether.Dial(ctx, "ws"+srv.URL[len("http"):], tether.WithFallback(""),
		tether.WithHandshakeTimeout(300*time.Millisecond),
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }))
	require.NoError(t, err, "the hung open kept the Conn from its session")
	defer c.CloseNow()
	require.Equal(t, tether.Polling, c.Transport())
	select {
	case d := <-held:
		require.Less(t, d, 3*time.Second, "the hung open was given up late")
	case <-ctx.Done():
		t.Fatal("the hung open was never given up")
	}
	require.GreaterOrEqual(t, opens.Load(), int32(2), "no second open")
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("hi")))
	_, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "hi", string(p))
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
}
