package tether_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// A server that goes away without a close frame: the state hook and
// WithRetryPolicy see close code 1006 (StatusAbnormalClosure), as documented,
// beside the network's own error, in words a user can read.
func TestAbruptCloseIsReportedAs1006(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	var mu sync.Mutex
	var seen []error
	ev := newEvents()
	var logs lockedWriter
	c := dial(t, s.URL(), ev.option(),
		tether.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		tether.WithRetryPolicy(func(err error, retry bool) bool {
			mu.Lock()
			seen = append(seen, err)
			mu.Unlock()
			return retry
		}))
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("hi")))
	_, _, err := c.Read(ctx)
	require.NoError(t, err)

	s.dropAll()
	sc := ev.next(t, tether.Reconnecting, 10*time.Second)
	require.Equal(t, websocket.StatusAbnormalClosure, websocket.CloseStatus(sc.Cause), "cause: %v", sc.Cause)
	require.True(t, errors.Is(sc.Cause, io.EOF) || errors.Is(sc.Cause, syscall.ECONNRESET), "the network's error is kept: %v", sc.Cause)
	msg := sc.Cause.Error()
	require.True(t, strings.HasPrefix(msg, "tether: websocket link lost: abnormal closure (1006): "), msg)
	require.NotContains(t, msg, "failed to", "coder/websocket's internals: %s", msg)
	ev.next(t, tether.Connected, 10*time.Second)

	mu.Lock()
	require.NotEmpty(t, seen)
	require.Equal(t, websocket.StatusAbnormalClosure, websocket.CloseStatus(seen[0]), "WithRetryPolicy sees 1006: %v", seen[0])
	mu.Unlock()
	require.Contains(t, logs.String(), "abnormal closure (1006)")
}

// The close codes 3000 (Unauthorized) and 3003 (Forbidden), registered with
// IANA, are permanent like 4000-4999; other 3xxx codes are retried.
func TestCloseCodes3xxx(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code  websocket.StatusCode
		retry bool
	}{{3000, false}, {3003, false}, {3001, true}} {
		t.Run(tc.code.String(), func(t *testing.T) {
			t.Parallel()
			first := make(chan struct{}, 1)
			first <- struct{}{}
			s := newTestServer(t, func(ctx context.Context, c *websocket.Conn) {
				select {
				case <-first:
					_ = c.Close(tc.code, "no")
				default:
					echo(ctx, c)
				}
			})
			ev := newEvents()
			var logs lockedWriter
			c := dial(t, s.URL(), ev.option(), tether.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if tc.retry {
				ev.next(t, tether.Reconnecting, 10*time.Second)
				ev.next(t, tether.Connected, 10*time.Second)
				return
			}
			sc := ev.next(t, tether.Closed, 10*time.Second)
			require.Equal(t, tc.code, websocket.CloseStatus(sc.Cause))
			require.Equal(t, tether.Closed, c.State())
			require.Contains(t, sc.Cause.Error(), "closed by the server with "+strconv.Itoa(int(tc.code)))
			// The log says which rule decided.
			require.Contains(t, logs.String(), "link lost for good")
			require.Contains(t, logs.String(), "is permanent")
		})
	}
}
