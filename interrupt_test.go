package tether_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// payloadFor is message i of the stream: its size varies from empty to
// 100 KB, so that frames split across many socket reads.
func payloadFor(i int) []byte {
	size := (i * 7919) % 100_000
	if i%5 == 0 {
		size = i % 10
	}
	b := bytes.Repeat([]byte{byte('a' + i%26)}, size)
	return append([]byte(strconv.Itoa(i)+":"), b...)
}

// Reads whose ctx ends at random moments (before a frame, inside a large
// frame, inside a fragmented message, around server pings) lose nothing,
// corrupt nothing, and never cost the link.
func TestCancelledReadsKeepTheStreamIntact(t *testing.T) {
	t.Parallel()
	const n = 300
	s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		// Read in the background, so that the server answers the client's
		// pings and gets the pongs to its own.
		ctx = c.CloseRead(ctx)
		for i := range n {
			p := payloadFor(i)
			if i%3 == 0 {
				// A fragmented message: several frames, sent with pauses.
				w, err := c.Writer(ctx, websocket.MessageBinary)
				if err != nil {
					return
				}
				for len(p) > 0 {
					k := min(len(p), 1+len(p)/3)
					if _, err := w.Write(p[:k]); err != nil {
						return
					}
					p = p[k:]
					time.Sleep(50 * time.Microsecond)
				}
				if w.Close() != nil {
					return
				}
			} else if c.Write(ctx, websocket.MessageBinary, p) != nil {
				return
			}
			if i%10 == 0 {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				_ = c.Ping(pctx) // answered by the client while it reads
				cancel()
			}
		}
		<-ctx.Done() // hold the link open until the client is done
	})
	// Frequent pings put pongs between the frames of the stream too.
	ev := newEvents()
	c := dial(t, s.URL(), tether.WithReadLimit(-1), tether.WithHeartbeat(2*time.Millisecond, 0), ev.option())
	defer func() {
		for _, sc := range ev.list() {
			t.Logf("%v -> %v: %v", sc.From, sc.To, sc.Cause)
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := time.Now().Add(30 * time.Second)
	cancelled := 0
	for i := 0; i < n; {
		require.True(t, time.Now().Before(deadline), "stream stalled at message %d", i)
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(300))*time.Microsecond)
		_, p, err := c.Read(ctx)
		cancel()
		if err != nil {
			require.ErrorIs(t, err, context.DeadlineExceeded)
			cancelled++
			continue
		}
		if !bytes.Equal(payloadFor(i), p) {
			t.Fatalf("message %d: got %d bytes %q..., want %d bytes %q...", i, len(p), p[:min(len(p), 12)], len(payloadFor(i)), payloadFor(i)[:12])
		}
		i++
	}
	t.Logf("%d reads cancelled along the way", cancelled)
	require.Positive(t, cancelled)
	require.Zero(t, c.Stats().Reconnects)
	require.Equal(t, int64(1), s.accepted.Load())
}

// With a user's own http.Client the socket is not tether's: cancellable
// Reads are served through the background reader, with the same guarantees.
func TestCancelledReadsWithOwnHTTPClient(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL(), tether.WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{}}))
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, _, err := c.Read(ctx)
		cancel()
		require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	}
	ctx := ctxT(t, 5*time.Second)
	for i := range 20 {
		require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(strconv.Itoa(i))))
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, p, err := c.Read(rctx)
		cancel()
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(i), string(p))
	}
	require.Zero(t, c.Stats().Reconnects)
}
