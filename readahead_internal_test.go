package tether

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// talker serves WebSocket clients with send, in plain mode, on 127.0.0.1;
// the link then stays open until the client goes.
func talker(t *testing.T, send func(ctx context.Context, c *websocket.Conn) error) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		if send(ctx, c) != nil {
			return
		}
		_, _, _ = c.Read(ctx)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	return "ws://" + ln.Addr().String()
}

func (r *reader) unread() (msgs, bytes int, held bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending), r.pendingBytes, r.held != nil
}

// A plain link is read ahead of an application that does not read, within
// a bound in messages and one in bytes; then the next message is held, its
// body left in the socket. Reading later gets every message, in order.
func TestPlainReadAheadBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		n, size  int
		msgs     int // the most messages kept unread
		maxBytes int // the most bytes kept unread
	}{
		// One message beyond the count: the reader reads on while it holds
		// no more than the bound (see withinWindow). Each small message is
		// charged its real buffer (coder/websocket's Read reads into at
		// least 512 bytes), so the count bound comes first.
		{"small messages", 5000, 16, plainReadAheadMsgs + 1, (plainReadAheadMsgs + 1) * (msgOverhead + 512)},
		{"empty messages", 5000, 0, plainReadAheadMsgs + 1, (plainReadAheadMsgs + 1) * (msgOverhead + 512)},
		{"large messages", 200, 32000, plainReadAhead/32000 + 1, plainReadAhead + msgCost(make([]byte, 32000))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msg := func(i int) []byte {
				p := make([]byte, tc.size)
				copy(p, strconv.Itoa(i))
				return p
			}
			url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
				for i := range tc.n {
					if err := c.Write(ctx, websocket.MessageBinary, msg(i)); err != nil {
						return err
					}
				}
				return nil
			})
			c, err := Dial(context.Background(), url)
			require.NoError(t, err)
			defer c.CloseNow()
			require.Eventually(t, func() bool { _, _, held := c.rd.unread(); return held }, 10*time.Second, time.Millisecond,
				"the reader holds a message once the bound is reached")
			msgs, bytes, _ := c.rd.unread()
			require.LessOrEqual(t, msgs, tc.msgs)
			require.LessOrEqual(t, bytes, tc.maxBytes)
			require.True(t, c.rd.stalled(), "the heartbeat does not judge a link held behind unread messages")

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for i := range tc.n {
				_, p, err := c.Read(ctx)
				require.NoError(t, err, "message %d", i)
				require.Equal(t, msg(i), p, "message %d", i)
			}
			msgs, bytes, _ = c.rd.unread()
			require.Zero(t, msgs)
			require.Zero(t, bytes, "the bytes counted unread when every message was read")
		})
	}
}

// Read checks its ctx before it hands out a message that waits: a read loop
// stopped by cancelling its ctx stops, however far ahead the server is, and
// the messages are kept for the next Read. Plain mode and session mode.
func TestReadChecksCtxBeforeWaitingMessage(t *testing.T) {
	t.Parallel()
	const n = 10
	msg := func(i int) []byte { return []byte("m" + strconv.Itoa(i)) }
	plain := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		for i := range n {
			if err := c.Write(ctx, websocket.MessageText, msg(i)); err != nil {
				return err
			}
		}
		return nil
	})
	h := NewHandler(func(ctx context.Context, s *Session) {
		for i := range n {
			if s.Write(ctx, websocket.MessageText, msg(i)) != nil {
				return
			}
		}
		<-ctx.Done()
	})
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { _ = h.Close(); srv.CloseClientConnections(); srv.Close() })

	for name, url := range map[string]string{"plain": plain, "session": "ws://" + ln.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			c, err := Dial(context.Background(), url)
			require.NoError(t, err)
			defer c.CloseNow()
			require.Equal(t, name == "session", c.Subprotocol() == Subprotocol)
			require.Eventually(t, func() bool { m, _, _ := c.rd.unread(); return m == n }, 10*time.Second, time.Millisecond,
				"the messages wait for the application")
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			for range 3 {
				_, _, err := c.Read(ctx)
				require.ErrorIs(t, err, context.Canceled)
			}
			for i := range n {
				_, p, err := c.Read(context.Background())
				require.NoError(t, err)
				require.Equal(t, msg(i), p)
			}
		})
	}
}
