package tether_test

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

// heapAndGoroutines returns the live heap after a full collection, and the
// process's goroutines.
func heapAndGoroutines() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, runtime.NumGoroutine()
}

// Sessions opened and left on a Handler: session-mode WebSockets whose
// clients vanish, polling sessions opened and never used, plain clients that
// come and go. Once every session has expired or ended, the Handler's
// goroutines and heap are back where they started. TETHER_CYCLES sets how
// many sessions (1,000 by default). It counts the process's goroutines, so
// it does not run in parallel with other tests.
func TestHandlerCycles(t *testing.T) {
	n := 1000
	if v := os.Getenv("TETHER_CYCLES"); v != "" {
		var err error
		n, err = strconv.Atoi(v)
		require.NoError(t, err)
	}
	g := newGarbageServer(t, tether.WithSessionTTL(300*time.Millisecond), tether.WithUnusedSessionTTL(100*time.Millisecond),
		tether.WithMaxSessions(n))
	// One of each first, so that pools, the Handler's maps and the HTTP
	// server's goroutines exist before the baseline is taken.
	// (Nothing here registers a cleanup: what the test keeps must not
	// grow with the cycles.)
	cycle := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		switch i % 3 {
		case 0: // session mode, the client vanishes after a message
			ws, _, err := websocket.Dial(ctx, g.URL(), &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
			require.NoError(t, err)
			_, _, err = ws.Read(ctx) // the Hello
			require.NoError(t, err)
			require.NoError(t, ws.Write(ctx, websocket.MessageBinary, frame.Append(nil, &frame.Frame{Kind: frame.Data, Seq: 1, Payload: []byte("x")})))
			_, _, err = ws.Read(ctx) // the echo
			require.NoError(t, err)
			_ = ws.CloseNow()
		case 1: // polling, opened and never used
			g.expect(http.StatusOK, http.MethodPost, "?tether=open", nil, nil)
		case 2: // a plain client that comes and goes
			ws, _, err := websocket.Dial(ctx, g.URL(), nil)
			require.NoError(t, err)
			require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte("x")))
			_ = ws.Close(websocket.StatusNormalClosure, "")
		}
	}
	for i := range 3 {
		cycle(i)
	}
	eventually(t, 10*time.Second, func() bool { return g.h.Sessions() == 0 }, "the warm-up sessions gone")
	g.hc.CloseIdleConnections()
	heap0, gr0 := heapAndGoroutines()

	start := time.Now()
	peak := 0
	for i := range n {
		cycle(i)
		peak = max(peak, g.h.Sessions())
	}
	opened := time.Since(start)
	eventually(t, 30*time.Second, func() bool { return g.h.Sessions() == 0 }, "every session expired or ended")
	g.hc.CloseIdleConnections()
	var heap1 uint64
	var gr1 int
	eventually(t, 10*time.Second, func() bool {
		heap1, gr1 = heapAndGoroutines()
		return gr1 <= gr0
	}, "goroutines back to the baseline")
	t.Logf("%d sessions opened in %v (at most %d at once), all gone: goroutines %d -> %d, heap %.1f KiB -> %.1f KiB",
		n, opened.Round(time.Millisecond), peak, gr0, gr1, float64(heap0)/1024, float64(heap1)/1024)
	require.Less(t, int64(heap1)-int64(heap0), int64(1<<20), "heap back to within 1 MiB of the baseline")
}
