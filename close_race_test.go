package tether_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// A close frame and a write that races it: coder/websocket closes the
// connection as soon as it has read the peer's close frame, and a write in
// the instant before its reader returns the frame fails with
// net.ErrClosed. The close code must still decide: whether the client
// reconnects, and whether a session has ended. Each side writes without a
// pause while the other closes, a few times over, so that some writes land
// in that instant.

// The server closes the session with a permanent code while the client
// writes: the Conn ends with that code, without a reconnect.
func TestServerCloseBeatsRacingWrites(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		if _, _, err := s.Read(ctx); err != nil {
			return
		}
		_ = s.Close(websocket.StatusPolicyViolation, "go away")
		<-ctx.Done()
	})
	for i := range 20 {
		ev := newEvents()
		c := dial(t, ss.URL(), ev.option())
		ctx := ctxT(t, 10*time.Second)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.Write(ctx, websocket.MessageBinary, []byte("racing")) == nil {
			}
		}()
		sc := ev.next(t, tether.Closed, 10*time.Second)
		wg.Wait()
		require.Equal(t, websocket.StatusPolicyViolation, websocket.CloseStatus(sc.Cause), "run %d: %v", i, sc.Cause)
		for _, e := range ev.list() {
			require.NotEqual(t, tether.Reconnecting, e.To, "run %d: reconnected after a permanent close: %v", i, e.Cause)
		}
	}
}

// The client closes its Conn while serve writes: the session ends with the
// client's code, rather than wait for a client that has left.
func TestClientCloseBeatsRacingWrites(t *testing.T) {
	t.Parallel()
	ended := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		var err error
		for err == nil {
			err = s.Write(ctx, websocket.MessageBinary, []byte("racing"))
		}
		ended <- err
	}, tether.WithSessionTTL(time.Hour))
	for i := range 20 {
		c := dial(t, ss.URL())
		ctx := ctxT(t, 10*time.Second)
		_, _, err := c.Read(ctx)
		require.NoError(t, err)
		require.NoError(t, c.Close(websocket.StatusNormalClosure, "bye"))
		select {
		case err := <-ended:
			var ce websocket.CloseError
			require.True(t, errors.As(err, &ce), "run %d: serve's Write failed with %v", i, err)
			require.Equal(t, websocket.StatusNormalClosure, ce.Code, "run %d", i)
		case <-ctx.Done():
			t.Fatalf("run %d: the session did not end when its client closed", i)
		}
	}
}
