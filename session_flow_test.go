package tether_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

// A pipelined stream through an echo whose replay buffer is small: the
// Handler's Write waits for the client's acks while the client's Write waits
// for the Handler's, and each side's acks travel behind its data. Both
// sides must go on reading while their Write waits, or neither moves again.
func TestSessionPipelineWithSmallReplayBuffers(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho, tether.WithReplayBuffer(64<<10))
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())

	const n = 3000
	msg := make([]byte, 1024)
	ctx := ctxT(t, 30*time.Second)
	werr := make(chan error, 1)
	go func() {
		for i := range n {
			copy(msg, fmt.Sprintf("%08d", i))
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				werr <- fmt.Errorf("write %d: %w", i, err)
				return
			}
		}
		werr <- nil
	}()
	for i := range n {
		_, p, err := c.Read(ctx)
		require.NoError(t, err, "read %d of %d", i, n)
		require.Equal(t, fmt.Sprintf("%08d", i), string(p[:8]))
	}
	require.NoError(t, <-werr)
}

// A client that ignores the replay window and floods a Session that never
// reads is pushed back: the Handler reads ahead only as much as an honest
// client can send unacknowledged, then stops reading, and the flood's
// writes stall instead of filling the server's memory.
func TestSessionFloodIsPushedBack(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		<-ctx.Done() // never reads
	})
	ctx := ctxT(t, 30*time.Second)
	ws, _, err := websocket.Dial(ctx, ss.URL(), &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
	require.NoError(t, err)
	defer ws.CloseNow()
	_, hello, err := ws.Read(ctx)
	require.NoError(t, err)
	f, err := frame.Decode(hello)
	require.NoError(t, err)
	require.Equal(t, frame.Hello, f.Kind)

	// Far more than the Handler's read-ahead (the client window, 4 MiB)
	// and the sockets' buffers together.
	const limit = 256 << 20
	payload := make([]byte, 16<<10)
	sent := 0
	for seq := uint64(1); sent < limit; seq++ {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		err := ws.Write(wctx, websocket.MessageBinary, frame.Append(nil, &frame.Frame{Kind: frame.Data, Seq: seq, Binary: true, Payload: payload}))
		cancel()
		if err != nil {
			t.Logf("the flood stalled after %d MiB", sent>>20)
			return
		}
		sent += len(payload)
	}
	t.Fatalf("the Handler took %d MiB from a client that ignores the window, without pushing back", sent>>20)
}
