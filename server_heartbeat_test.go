package tether_test

import (
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

// A client that keeps its connection open and never reads answers no ping:
// the Handler's heartbeat closes its link. A plain client's session ends; a
// session-mode client's session waits for a resume, as after any drop, and
// expires when none comes.
func TestHandlerHeartbeatClosesSilentClient(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"plain", "session"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ended := make(chan struct{})
			ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
				<-ctx.Done()
				close(ended)
			}, tether.WithHandlerHeartbeat(50*time.Millisecond, 200*time.Millisecond),
				tether.WithSessionTTL(300*time.Millisecond))
			ctx := ctxT(t, 10*time.Second)
			var opts websocket.DialOptions
			if mode == "session" {
				opts.Subprotocols = []string{tether.Subprotocol}
			}
			ws, _, err := websocket.Dial(ctx, ss.URL(), &opts)
			require.NoError(t, err)
			defer ws.CloseNow()
			// Never read (not even the Hello): no pong ever goes back.
			start := time.Now()
			waitCh(t, ended, 5*time.Second, "the silent client's session to end")
			t.Logf("%s session ended %v after the handshake", mode, time.Since(start))
			require.Equal(t, 0, ss.h.Sessions())
		})
	}
}

// A client that stops reading while serve writes to it fills the socket
// buffers, and serve's Write blocks: the Handler closes the link when a
// write has not finished within the heartbeat timeout, pings or not, and
// serve's Write returns.
func TestHandlerHeartbeatWriteDeadline(t *testing.T) {
	t.Parallel()
	writeErr := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		p := make([]byte, 32<<10)
		for {
			if err := s.Write(ctx, websocket.MessageBinary, p); err != nil {
				writeErr <- err
				return
			}
		}
	}, tether.WithHandlerHeartbeat(0, 300*time.Millisecond), tether.WithHandlerReadLimit(1<<20))
	ws := dialPlain(t, ss.URL())
	_, _, err := ws.Read(ctxT(t, 5*time.Second)) // one message, then no more reading
	require.NoError(t, err)
	select {
	case err := <-writeErr:
		require.Error(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("serve's Write to a client that stopped reading did not return")
	}
}

// A tether client that never pings (its heartbeat is off) and stays quiet
// answers the Handler's pings from its background reader: the link holds.
func TestHandlerHeartbeatKeepsQuietClient(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho, tether.WithHandlerHeartbeat(20*time.Millisecond, 150*time.Millisecond))
	var pings int
	ws, _, err := websocket.Dial(ctxT(t, 5*time.Second), ss.URL(), &websocket.DialOptions{
		Subprotocols: []string{tether.Subprotocol},
		OnPingReceived: func(context.Context, []byte) bool {
			pings++
			return true
		},
	})
	require.NoError(t, err)
	defer ws.CloseNow()
	// A raw client that reads, as any WebSocket client should: it answers
	// pings, and sees the Hello.
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, b, err := ws.Read(ctx)
	require.NoError(t, err)
	hello, err := frame.Decode(b)
	require.NoError(t, err)
	require.Equal(t, frame.Hello, hello.Kind)
	_, _, err = ws.Read(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the link held, quiet, for 600 ms")
	require.Greater(t, pings, 5, "the Handler pinged the quiet link")

	// And a tether Conn with its own heartbeat off, quiet for many of the
	// Handler's heartbeat intervals, rides through them.
	c := dial(t, ss.URL(), tether.WithHeartbeat(0, 0))
	lostEcho(t, c, "hello")
	time.Sleep(600 * time.Millisecond) // quiet: only the Handler's pings
	lostEcho(t, c, "still here")
	require.Zero(t, c.Stats().Reconnects)
}
