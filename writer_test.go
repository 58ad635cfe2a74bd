package tether_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// writerMsg is message i as the Writer tests send it: size bytes that say
// which message they belong to.
func writerMsg(i, size int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%05d|", i)), size/6)
}

// Session mode: a Writer's message is one numbered message. Links reset
// while messages are written reach the server whole, each once, in order.
func TestWriterSessionReplayedWhole(t *testing.T) {
	t.Parallel()
	const n, size = 60, 24 << 10
	got := make(chan []byte, n+10)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				return
			}
			got <- p
		}
	})
	p, err := faultnetListen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	c := dial(t, "ws://"+p.Addr())
	ctx := ctxT(t, 30*time.Second)
	wrote := make(chan error, 1)
	go func() {
		for i := range n {
			if err := writeChunks(ctx, c, websocket.MessageBinary, writerMsg(i, size), 1000); err != nil {
				wrote <- fmt.Errorf("message %d: %w", i, err)
				return
			}
		}
		wrote <- nil
	}()
	for i := range n {
		if i%15 == 5 {
			p.Reset() // while the writer goes on
		}
		select {
		case m := <-got:
			require.Equal(t, writerMsg(i, size), m, "message %d, whole and once", i)
		case <-ctx.Done():
			t.Fatalf("message %d did not come", i)
		}
	}
	require.NoError(t, <-wrote)
	require.GreaterOrEqual(t, c.Stats().Reconnects, uint64(1))
	require.Empty(t, got, "nothing twice")
}

// While the Conn reconnects, a Writer's message waits in the send queue,
// like a Write, and goes out whole on the next link.
func TestWriterQueuedWhileReconnecting(t *testing.T) {
	t.Parallel()
	got := make(chan []byte, 10)
	var links atomic.Int64
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		links.Add(1)
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			got <- p
		}
	})
	p, err := faultnetListen(s.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr(), ev.option())
	ev.next(t, tether.Connected, 5*time.Second)
	require.NoError(t, p.Refuse(true))
	p.Reset()
	ev.next(t, tether.Reconnecting, 5*time.Second)

	ctx := ctxT(t, 20*time.Second)
	msg := writerMsg(7, 10<<10)
	require.NoError(t, writeChunks(ctx, c, websocket.MessageText, msg, 999), "queued")
	st := c.Stats()
	require.Equal(t, 1, st.QueueDepth)
	require.Equal(t, len(msg), st.QueueBytes)

	require.NoError(t, p.Refuse(false))
	select {
	case m := <-got:
		require.Equal(t, msg, m)
	case <-ctx.Done():
		t.Fatal("the queued message did not come")
	}
	require.EqualValues(t, 2, links.Load())
	require.Zero(t, c.Stats().QueueDepth)
}

// Session mode: a Writer's message fails at the Write that takes it past the
// server's read limit (32 KiB by default), not at Close, so that it is not
// held in memory any longer; Close then sends nothing, and the Conn goes on.
func TestWriterSessionOverServerLimit(t *testing.T) {
	t.Parallel()
	got := make(chan []byte, 10)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				return
			}
			got <- p
		}
	})
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	ctx := ctxT(t, 20*time.Second)

	w, err := c.Writer(ctx, websocket.MessageBinary)
	require.NoError(t, err)
	n, err := w.Write(make([]byte, 32<<10))
	require.NoError(t, err, "at the limit")
	require.Equal(t, 32<<10, n)
	n, err = w.Write([]byte{1})
	require.ErrorIs(t, err, tether.ErrMessageTooLarge, "the byte past the limit")
	require.Zero(t, n)
	_, err = w.Write([]byte{2})
	require.ErrorIs(t, err, tether.ErrMessageTooLarge, "the message stays dropped")
	require.ErrorIs(t, w.Close(), tether.ErrMessageTooLarge)

	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("after")))
	select {
	case m := <-got:
		require.Equal(t, "after", string(m), "the dropped message was never sent")
	case <-ctx.Done():
		t.Fatal("the next message did not come")
	}
	require.Equal(t, tether.Connected, c.State())
}
