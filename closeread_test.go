package tether_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// CloseRead in session mode, over WebSocket and over polling: what the
// server sends is read, dropped and acknowledged, on every link: a server
// that sends three windows of messages goes on before a reset and again
// after it (it could not, were the messages not acknowledged); the Conn's
// Writes reach it; the ctx lives through the reset and ends when the Conn is
// closed. (The reset comes while the server reads: a session whose server
// fills its window while the client is away is lost, by design.)
func TestCloseReadSession(t *testing.T) {
	t.Parallel()
	for _, polling := range []bool{false, true} {
		name := "websocket"
		if polling {
			name = "polling"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const chatter = 3 * 4096 // three windows of messages
			wrote, fin := make(chan int, 2), make(chan string, 2)
			var sessions atomic.Int64
			ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
				sessions.Add(1)
				for round := range 2 {
					for i := range chatter {
						if s.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))) != nil {
							return
						}
					}
					wrote <- round
					_, p, err := s.Read(ctx)
					if err != nil {
						return
					}
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
			for round, msg := range []string{"before", "after"} {
				select {
				case r := <-wrote:
					require.Equal(t, round, r)
				case <-ctx.Done():
					t.Fatalf("the server stalled in round %d: its messages were not acknowledged", round)
				}
				if round == 0 {
					p.Reset()
				}
				require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(msg)))
				select {
				case got := <-fin:
					require.Equal(t, msg, got)
				case <-ctx.Done():
					t.Fatalf("%q did not reach the server", msg)
				}
			}
			require.EqualValues(t, 1, sessions.Load(), "one session throughout")
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
