package tether_test

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// The cycles: many forced reconnects, Dial/Close pairs and failed dials,
// after which goroutines and heap are back where they were. CI runs a few of
// each; TETHER_CYCLES=1000 runs the full count:
//
//	TETHER_CYCLES=1000 go test -race -run TestCycles -v .

func cycles(t *testing.T) int {
	if s := os.Getenv("TETHER_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, "TETHER_CYCLES")
		return n
	}
	return 20
}

// footprint is the process's goroutines and live heap, after collection.
type footprint struct {
	goroutines int
	heap       uint64
}

func measure() footprint {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return footprint{goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc}
}

func (f footprint) String() string {
	return fmt.Sprintf("%d goroutines, %.1f KiB heap", f.goroutines, float64(f.heap)/1024)
}

// backToBaseline waits until the footprint is back to base: the same
// goroutines, and a heap within slack of where it was.
func backToBaseline(t *testing.T, what string, n int, base footprint, took time.Duration) {
	t.Helper()
	const slack = 256 << 10
	var now footprint
	deadline := time.Now().Add(10 * time.Second)
	for {
		now = measure()
		if now.goroutines <= base.goroutines && now.heap <= base.heap+slack {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %d cycles, %v; before, %v", what, n, now, base)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%s: %d cycles in %v; before %v, after %v", what, n, took.Round(time.Millisecond), base, now)
}

// leanServer echoes, and keeps nothing of a link once it has ended, so that
// the heap measures the client alone.
type leanServer struct {
	srv   *httptest.Server
	mu    sync.Mutex
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup
}

func newLeanServer(t *testing.T) *leanServer {
	ls := &leanServer{conns: map[*websocket.Conn]struct{}{}}
	ls.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Counted before the hijack, while httptest.Server.Close still
		// waits for this request.
		ls.wg.Add(1)
		defer ls.wg.Done()
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ls.mu.Lock()
		ls.conns[c] = struct{}{}
		ls.mu.Unlock()
		defer func() {
			ls.mu.Lock()
			delete(ls.conns, c)
			ls.mu.Unlock()
			_ = c.CloseNow()
		}()
		echo(r.Context(), c)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ls.srv.Listener = ln
	ls.srv.Start()
	t.Cleanup(func() {
		ls.dropAll()
		ls.srv.Close()
		ls.wg.Wait()
	})
	return ls
}

func (ls *leanServer) URL() string { return "ws" + strings.TrimPrefix(ls.srv.URL, "http") }

func (ls *leanServer) dropAll() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for c := range ls.conns {
		_ = c.CloseNow()
	}
}

// Not parallel: these count the process's goroutines and heap.
func TestCycles(t *testing.T) {
	n := cycles(t)
	ctx := ctxT(t, 10*time.Minute)

	t.Run("forced reconnects", func(t *testing.T) {
		s := newLeanServer(t)
		// A hook that keeps nothing: the events' causes would weigh on the
		// heap.
		changes := make(chan tether.StateChange, 16)
		next := func(to tether.State) {
			t.Helper()
			timer := time.NewTimer(10 * time.Second)
			defer timer.Stop()
			for {
				select {
				case sc := <-changes:
					if sc.To == to {
						return
					}
				case <-timer.C:
					t.Fatalf("no transition to %v", to)
				}
			}
		}
		c := dial(t, s.URL(), tether.WithStateHook(func(sc tether.StateChange) { changes <- sc }))
		roundTrip := func(i int) {
			msg := []byte(strconv.Itoa(i))
			require.NoError(t, c.Write(ctx, websocket.MessageText, msg))
			_, p, err := c.Read(ctx)
			require.NoError(t, err)
			require.Equal(t, msg, p)
		}
		cycle := func(i int) {
			s.dropAll()
			next(tether.Reconnecting)
			next(tether.Connected)
			roundTrip(i)
		}
		roundTrip(-1)      // the server has the link
		for i := range 3 { // warm up: pools, the test server's buffers
			cycle(i)
		}
		base := measure()
		start := time.Now()
		for i := range n {
			cycle(i)
		}
		took := time.Since(start)
		require.Equal(t, uint64(n+3), c.Stats().Reconnects)
		backToBaseline(t, "forced reconnects", n, base, took)
	})

	t.Run("dial and close", func(t *testing.T) {
		s := newLeanServer(t)
		cycle := func() {
			c, err := tether.Dial(ctx, s.URL())
			require.NoError(t, err)
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("x")))
			_, _, err = c.Read(ctx)
			require.NoError(t, err)
			require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
		}
		for range 3 {
			cycle()
		}
		base := measure()
		start := time.Now()
		for range n {
			cycle()
		}
		backToBaseline(t, "dial and close", n, base, time.Since(start))
	})

	t.Run("failed dials", func(t *testing.T) {
		url := optRefusedURL(t)
		cycle := func() {
			_, err := tether.Dial(ctx, url, tether.WithMaxRetries(1))
			require.ErrorIs(t, err, tether.ErrGaveUp)
		}
		for range 3 {
			cycle()
		}
		base := measure()
		start := time.Now()
		for range n {
			cycle()
		}
		backToBaseline(t, "failed dials", n, base, time.Since(start))
	})
}
