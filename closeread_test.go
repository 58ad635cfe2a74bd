package tether_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// CloseRead in session mode, over WebSocket and over polling: what the
// server sends is read, dropped and acknowledged on every link, so that a
// server that sends far more than its window goes on through a reset, and a
// Write of the client's reaches it after; the ctx lives through the reset
// and ends when the Conn is closed.
func TestCloseReadSession(t *testing.T) {
	t.Parallel()
	for _, polling := range []bool{false, true} {
		name := "websocket"
		if polling {
			name = "polling"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const chatter = 3000 // far beyond the session window
			half, fin := make(chan struct{}), make(chan string, 1)
			ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
				for i := range chatter {
					if i == chatter/2 {
						close(half)
					}
					if s.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))) != nil {
						return
					}
				}
				_, p, err := s.Read(ctx)
				if err == nil {
					fin <- string(p)
				}
				_, _, _ = s.Read(ctx)
			})
			ss.setBlock(polling)
			p, err := faultnetListen(ss.Addr())
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.Close() })
			c := dial(t, "ws://"+p.Addr(), tether.WithFallback(""))
			rctx := c.CloseRead(context.Background())
			ctx := ctxT(t, 30*time.Second)
			select {
			case <-half:
			case <-ctx.Done():
				t.Fatal("the server stalled before half its messages")
			}
			p.Reset()
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("fin")))
			select {
			case got := <-fin:
				require.Equal(t, "fin", got)
			case <-ctx.Done():
				t.Fatal("the server stalled: its messages were not acknowledged")
			}
			require.NoError(t, rctx.Err(), "the ctx lives through the reset")
			if !polling {
				require.GreaterOrEqual(t, c.Stats().Reconnects, uint64(1))
				require.NoError(t, c.Ping(ctx), "control frames flow")
			}
			require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
			select {
			case <-rctx.Done():
			case <-ctx.Done():
				t.Fatal("the CloseRead ctx did not end with the Conn")
			}
		})
	}
}
