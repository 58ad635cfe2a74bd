package tether

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// relayBuffered returns the relay of the message the background reader
// reads ahead, and how much of it is passed on and unread.
func (r *reader) relayBuffered() (rl *relay, buffered int, full bool) {
	r.mu.Lock()
	rl = r.ahead
	if rl == nil {
		rl = r.takenRelay()
	}
	r.mu.Unlock()
	if rl == nil {
		return nil, 0, false
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.taken {
		buffered = len(rl.p)
	} else {
		buffered = len(rl.buf)
	}
	return rl, buffered, rl.full
}

// A message taken by a Reader after its body began to arrive is passed on
// from the socket no faster than the Reader reads it: while the Reader
// pauses, at most relayMax and one read are kept, and TCP pushes the sender
// back. Reading on gets every byte, in order; CloseRead instead lets the
// rest be read and dropped.
func TestRelayBounded(t *testing.T) {
	t.Parallel()
	for _, closeRead := range []bool{false, true} {
		t.Run(map[bool]string{false: "read on", true: "CloseRead"}[closeRead], func(t *testing.T) {
			t.Parallel()
			testRelayBounded(t, closeRead)
		})
	}
}

func testRelayBounded(t *testing.T, closeRead bool) {
	const first, total = 16 << 10, 16 << 20
	body := func(off, n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte((off + i) % 251)
		}
		return p
	}
	goOn := make(chan struct{})
	sent := make(chan error, 1)
	url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return err
		}
		if _, err := w.Write(body(0, first)); err != nil {
			return err
		}
		select {
		case <-goOn:
		case <-ctx.Done():
			return ctx.Err()
		}
		for off := first; off < total; off += 64 << 10 {
			if _, err := w.Write(body(off, min(64<<10, total-off))); err != nil {
				return err
			}
		}
		err = w.Close()
		sent <- err
		return err
	})
	c, err := Dial(context.Background(), url, WithReadLimit(-1)) // as NetConn sets it
	require.NoError(t, err)
	defer c.CloseNow()

	// Nobody reads: the background reader begins the message.
	require.Eventually(t, func() bool { rl, n, _ := c.rd.relayBuffered(); return rl != nil && n > 0 },
		10*time.Second, time.Millisecond, "the message is read ahead")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, r, err := c.Reader(ctx)
	require.NoError(t, err)
	got := make([]byte, 100)
	_, err = io.ReadFull(r, got)
	require.NoError(t, err)
	close(goOn)

	// The Reader pauses while the server streams the rest.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, n, full := c.rd.relayBuffered()
		// What came before the take, a read the take overtook, or relayMax
		// and one read of the rest.
		require.LessOrEqual(t, n, first+relayMax+4096, "passed on ahead of the Reader")
		if full {
			break
		}
		require.True(t, time.Now().Before(deadline), "the background reader never waited for the Reader")
		time.Sleep(time.Millisecond)
	}
	require.True(t, c.rd.stalled(), "the heartbeat does not judge a link held behind the Reader")

	if closeRead {
		c.CloseRead(ctx)
		select {
		case err := <-sent:
			require.NoError(t, err, "the rest of the message was read and dropped")
		case <-ctx.Done():
			t.Fatal("the rest of the message was never read")
		}
		_, err := r.Read(got)
		require.ErrorIs(t, err, errReadClosed)
		return
	}
	rest, err := io.ReadAll(r)
	require.NoError(t, err)
	all, want := append(got, rest...), body(0, total)
	require.Equal(t, total, len(all))
	for i := range want {
		if all[i] != want[i] {
			t.Fatalf("byte %d differs: every byte, in order", i)
		}
	}
	require.Zero(t, c.Stats().Reconnects)
}

// A message begun while nobody reads is read ahead only as far as the link
// reads ahead (plainReadAhead), even with no read limit, as a NetConn sets
// it: then TCP pushes the sender back until a Read comes. A Read of the
// whole message gets it, every byte in order.
func TestReadAheadOfOneMessageBounded(t *testing.T) {
	t.Parallel()
	const total = 16 << 20
	want := make([]byte, total)
	for i := range want {
		want[i] = byte(i % 251)
	}
	url := talker(t, func(ctx context.Context, c *websocket.Conn) error {
		w, err := c.Writer(ctx, websocket.MessageBinary)
		if err != nil {
			return err
		}
		for off := 0; off < total; off += 64 << 10 {
			if _, err := w.Write(want[off:min(off+64<<10, total)]); err != nil {
				return err
			}
		}
		return w.Close()
	})
	c, err := Dial(context.Background(), url, WithReadLimit(-1))
	require.NoError(t, err)
	defer c.CloseNow()

	deadline := time.Now().Add(20 * time.Second)
	for {
		_, n, full := c.rd.relayBuffered()
		require.LessOrEqual(t, n, plainReadAhead+relayMax, "read ahead of the application")
		if full {
			break
		}
		require.True(t, time.Now().Before(deadline), "the background reader never waited for a Read")
		time.Sleep(time.Millisecond)
	}
	require.True(t, c.rd.stalled(), "the heartbeat does not judge a link held behind the application")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, total, len(got))
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("byte %d differs: every byte, in order", i)
		}
	}
	require.Zero(t, c.Stats().Reconnects)
}
