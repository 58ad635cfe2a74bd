package tether

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

func quietServer(t *testing.T) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		_ = c.Write(ctx, websocket.MessageText, []byte("hello"))
		if _, _, err := c.Read(ctx); err != nil {
			return
		}
		_ = c.Write(ctx, websocket.MessageText, []byte("again"))
		ctx = c.CloseRead(ctx)
		<-ctx.Done()
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	return "ws://" + ln.Addr().String()
}

// A Read with a cancellable ctx on tether's own socket reads on the caller's
// goroutine; with a user's http.Client it goes through the background reader.
func TestCancellableReadPath(t *testing.T) {
	t.Parallel()
	for _, own := range []bool{false, true} {
		var opts []Option
		if own {
			opts = append(opts, WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{}}))
		}
		c, err := Dial(context.Background(), quietServer(t), opts...)
		require.NoError(t, err)
		l := c.live.Load()
		require.Equal(t, own, l.watch == nil)
		// The greeting may be read ahead by the background reader, which
		// hands over to a Read that waits for the next message; or the
		// Read has taken over already.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _, err = c.Read(ctx)
		require.NoError(t, err)
		got := make(chan error, 1)
		go func() {
			_, _, err := c.Read(ctx)
			got <- err
		}()
		require.Eventually(t, func() bool {
			c.rd.mu.Lock()
			defer c.rd.mu.Unlock()
			return c.rd.waiting || c.rd.direct
		}, 5*time.Second, time.Millisecond, "a Read waits for the next message")
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("x")))
		require.NoError(t, <-got)
		cancel()
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, _, err = c.Read(ctx)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		c.rd.mu.Lock()
		bg := c.rd.bg
		c.rd.mu.Unlock()
		require.Equal(t, own, bg, "background reader running (own http.Client: %v)", own)
		require.NoError(t, c.CloseNow())
	}
}
