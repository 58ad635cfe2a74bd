package tether_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// stallServer is a real coder/websocket server that reads until told to
// stop, holds the link unread, and reads on when told to, recording every
// message it gets.
type stallServer struct {
	*testServer
	stop, resume chan struct{}
	resumeOnce   sync.Once
	mu           sync.Mutex
	got          [][]byte
}

func (ss *stallServer) readOn() { ss.resumeOnce.Do(func() { close(ss.resume) }) }

func newStallServer(t *testing.T) *stallServer {
	ss := &stallServer{stop: make(chan struct{}), resume: make(chan struct{})}
	ss.testServer = newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
		c.SetReadLimit(-1)
		stopped := false
		for {
			if !stopped {
				select {
				case <-ss.stop:
					stopped = true
					select {
					case <-ss.resume:
					case <-ctx.Done():
						return
					}
				default:
				}
			}
			_, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			ss.mu.Lock()
			ss.got = append(ss.got, p)
			ss.mu.Unlock()
		}
	})
	// Runs before the server's cleanup, which waits for the handler.
	t.Cleanup(ss.readOn)
	return ss
}

func (ss *stallServer) received() [][]byte {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return append([][]byte(nil), ss.got...)
}

func bigMessage(i int) []byte {
	p := bytes.Repeat([]byte{byte('a' + i%26)}, 256<<10)
	copy(p, fmt.Sprintf("%08d", i))
	return p
}

// Write is bounded by its ctx on a plain link whose server stopped reading:
// each Write returns within its ctx (plus scheduling), none cuts a frame, and
// the link survives. The Write whose ctx ended while it was sending is still
// delivered, in order; those whose ctx ended while they waited their turn are
// not sent at all. With tether's own socket, and with an http.Client of the
// user's (a goroutine per Write whose ctx can end).
func TestWriteBoundedByCtxOnStalledServer(t *testing.T) {
	t.Parallel()
	for _, own := range []bool{false, true} {
		t.Run(fmt.Sprintf("own http.Client=%v", own), func(t *testing.T) {
			t.Parallel()
			ss := newStallServer(t)
			opts := []tether.Option{tether.WithHeartbeat(0, 0)}
			if own {
				opts = append(opts, tether.WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{}}))
			}
			ev := newEvents()
			c := dial(t, ss.URL(), append(opts, ev.option())...)
			ctx := ctxT(t, 30*time.Second)
			require.NoError(t, c.Write(ctx, websocket.MessageBinary, bigMessage(0)))
			eventually(t, 5*time.Second, func() bool { return len(ss.received()) == 1 }, "the first message")
			close(ss.stop)

			// Each Write returns within its ctx. One that returns nil, or
			// ErrInFlight (its ctx ended while it was sending), is
			// delivered; one that returns its ctx's error alone (its ctx
			// ended while it waited its turn) was not sent at all.
			const bound = 100 * time.Millisecond
			want := []int{0}
			inFlight, unsent := 0, 0
			for i := 1; i < 400 && unsent < 3; i++ {
				err := boundedWrite(t, c, bound, bigMessage(i))
				switch {
				case err == nil:
					want = append(want, i)
				case errors.Is(err, tether.ErrInFlight):
					require.ErrorIs(t, err, context.DeadlineExceeded)
					want = append(want, i)
					inFlight++
				case errors.Is(err, context.DeadlineExceeded):
					require.Positive(t, inFlight, "a Write waited its turn behind nothing")
					unsent++
				default:
					t.Fatalf("Write %d: %v", i, err)
				}
			}
			require.Positive(t, inFlight, "the socket never filled")
			require.Equal(t, 3, unsent, "Writes waiting behind one in flight")
			ss.readOn()
			require.NoError(t, c.Write(ctx, websocket.MessageBinary, bigMessage(2000)))
			want = append(want, 2000)
			eventually(t, 10*time.Second, func() bool { return len(ss.received()) >= len(want) }, "the messages at the server")
			got := ss.received()
			require.Len(t, got, len(want), "only the Writes in flight and the ones that returned nil were sent")
			for k, i := range want {
				require.True(t, bytes.Equal(bigMessage(i), got[k]), "message %d: got %q...", i, got[k][:8])
			}
			require.Equal(t, int64(1), ss.accepted.Load(), "the link survived")
			require.Zero(t, c.Stats().Reconnects)
			for _, sc := range ev.list() {
				require.NotEqual(t, tether.Reconnecting, sc.To, "%+v", sc)
			}
		})
	}
}

// boundedWrite makes a Write with a ctx of d and fails the test if it does
// not return within d and a second (a Write that ignores its ctx returns when
// the cleanup closes the Conn).
func boundedWrite(t *testing.T, c *tether.Conn, d time.Duration, p []byte) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	res := make(chan error, 1)
	start := time.Now()
	go func() { res <- c.Write(ctx, websocket.MessageBinary, p) }()
	select {
	case err := <-res:
		return err
	case <-time.After(d + time.Second):
	}
	// Too late: say by how much, if it returns at all.
	select {
	case err := <-res:
		t.Fatalf("Write outlived its ctx of %v: it took %v (%v)", d, time.Since(start), err)
	case <-time.After(10 * time.Second):
		t.Fatalf("Write outlived its ctx of %v by more than 10 s", d)
	}
	return nil
}
