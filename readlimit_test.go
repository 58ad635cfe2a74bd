package tether_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// A message over the client's read limit is dropped with its link, and Read
// says so once, then goes on with what the next link brings.
func TestReadLimitReportedOnce(t *testing.T) {
	t.Parallel()
	var links atomic.Int64
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		msg := "hello"
		if links.Add(1) == 1 {
			msg = strings.Repeat("x", 4096)
		}
		if c.Write(ctx, websocket.MessageText, []byte(msg)) != nil {
			return
		}
		echo(ctx, c)
	})
	ev := newEvents()
	c := dial(t, s.URL(), tether.WithReadLimit(1024), ev.option())
	ctx := ctxT(t, 10*time.Second)
	_, _, err := c.Read(ctx)
	require.ErrorIs(t, err, websocket.ErrMessageTooBig)
	require.Contains(t, err.Error(), "1024")
	_, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "hello", string(p))
	require.Equal(t, int64(2), s.accepted.Load())
	sc := ev.next(t, tether.Reconnecting, time.Second)
	require.ErrorIs(t, sc.Cause, websocket.ErrMessageTooBig)
}

// The same in session mode, over WebSocket and over long polling, where the
// limit is tether's to apply.
func TestReadLimitSession(t *testing.T) {
	t.Parallel()
	for _, polling := range []bool{false, true} {
		t.Run(map[bool]string{false: "websocket", true: "polling"}[polling], func(t *testing.T) {
			t.Parallel()
			ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
				if _, _, err := s.Read(ctx); err != nil {
					return
				}
				if s.Write(ctx, websocket.MessageBinary, make([]byte, 4096)) != nil {
					return
				}
				<-ctx.Done()
			})
			// No reconnect after the drop: the server would send the message
			// again on the next link.
			opts := []tether.Option{tether.WithBackoff(constBackoff(time.Hour))}
			if polling {
				ss.setBlock(true)
				opts = append(opts, tether.WithFallback(""))
			}
			c := dial(t, ss.URL(), opts...)
			require.Equal(t, polling, c.Transport() == tether.Polling)
			// Lowered after the handshake told the server the default: the
			// server does not know, and sends the message.
			c.SetReadLimit(1024)
			ctx := ctxT(t, 10*time.Second)
			require.NoError(t, c.Write(ctx, websocket.MessageBinary, []byte("go")))
			_, p, err := c.Read(ctx)
			require.ErrorIs(t, err, websocket.ErrMessageTooBig, "got %d bytes", len(p))
		})
	}
}
