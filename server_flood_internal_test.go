package tether

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether/internal/frame"
)

// smallBufferListener gives every accepted connection 64 KiB socket
// buffers, so that a flood fills them quickly.
type smallBufferListener struct{ net.Listener }

func (l smallBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
		_ = tc.SetWriteBuffer(64 << 10)
	}
	return c, err
}

// startFloodTarget serves a Handler whose serve function never reads, and
// returns the Handler, its URL and the Session once a client has opened it.
func startFloodTarget(t *testing.T, opts ...HandlerOption) (*Handler, string, <-chan *Session) {
	t.Helper()
	sessions := make(chan *Session, 1)
	h := NewHandler(func(ctx context.Context, s *Session) {
		sessions <- s
		<-ctx.Done() // never reads
	}, opts...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = smallBufferListener{ln}
	srv.Start()
	t.Cleanup(func() {
		require.NoError(t, h.Close())
		srv.CloseClientConnections()
		srv.Close()
	})
	return h, "ws" + srv.URL[len("http"):], sessions
}

// A client that ignores the window and floods a Session that never reads is
// pushed back: the Handler reads ahead what an honest client may send
// unacknowledged and one message more, in bytes and in messages (empty
// messages are not free), then stops reading, and the flood's writes stall
// on a link that stays open.
func TestSessionFloodIsPushedBack(t *testing.T) {
	t.Parallel()
	for _, size := range []int{16 << 10, 0} {
		t.Run(byteSize(size), func(t *testing.T) {
			t.Parallel()
			h, url, sessions := startFloodTarget(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetReadBuffer(64 << 10)
					_ = tc.SetWriteBuffer(64 << 10)
				}
				return c, err
			}}}
			ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{Subprotocol}})
			require.NoError(t, err)
			defer ws.CloseNow()
			_, b, err := ws.Read(ctx)
			require.NoError(t, err)
			hello, err := frame.Decode(b)
			require.NoError(t, err)
			require.Equal(t, frame.Hello, hello.Kind)
			s := <-sessions

			payload := make([]byte, size)
			var wbuf []byte
			const most = 1 << 20 // messages: far beyond any window
			seq := uint64(1)
			for ; seq <= most; seq++ {
				wbuf = frame.Append(wbuf[:0], &frame.Frame{Kind: frame.Data, Seq: seq, Binary: true, Payload: payload})
				wctx, wcancel := context.WithTimeout(ctx, time.Second)
				err = ws.Write(wctx, websocket.MessageBinary, wbuf)
				wcancel()
				if err != nil {
					break
				}
			}
			require.Error(t, err, "the Handler took %d messages of %d bytes without pushing back", seq, size)
			require.ErrorIs(t, err, context.DeadlineExceeded, "the flood must stall, not be cut off")
			require.False(t, errors.Is(err, net.ErrClosed))

			// The Handler holds the session on a live link, and no more
			// than a window and one message of the flood.
			require.Equal(t, 1, h.Sessions())
			s.linkMu.Lock()
			l := s.ws
			s.linkMu.Unlock()
			require.NotNil(t, l, "the session kept its link")
			require.False(t, l.failed(), "the Handler did not drop the link")
			s.rd.mu.Lock()
			n, bytes := len(s.rd.pending), s.rd.pendingBytes
			s.rd.mu.Unlock()
			require.LessOrEqual(t, n, s.win.msgs+1, "messages read ahead")
			require.LessOrEqual(t, bytes, s.win.bytes+msgCost(payload), "bytes read ahead")
			require.Greater(t, n, 0)
			t.Logf("%d-byte messages: the flood stalled after %d, %d (%d bytes) held", size, seq, n, bytes)
		})
	}
}

func byteSize(n int) string {
	if n == 0 {
		return "empty"
	}
	return "16KiB"
}
