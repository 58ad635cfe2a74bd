package tether_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"

	"github.com/tetherws/tether/clustertest"
)

// An instance that shuts down while it forwards a stream of requests to
// another answers each of them (the owner's answer, or a retryable 503),
// and its Shutdown waits for the forwards it let through. A forward that
// began after Shutdown started waiting for the Handler's goroutines was a
// data race, and could panic the WaitGroup: the race detector sees it
// here within a few rounds.
func TestClusterShutdownWhileForwarding(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	tk := &talker{c: dial(t, "ws://"+a.addr()+"/ws")}
	tk.exchange(t, 1, 5*time.Second)
	id := lg.sessions()[0]
	var secret [16]byte
	_, _ = rand.Read(secret[:])

	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for round := range 8 {
		b := newNode(t, "b"+itoa(round), store, lg.echo)
		stop := make(chan struct{})
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			statuses = map[int]int{}
		)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 2000 {
					select {
					case <-stop:
						return
					default:
					}
					// A send with a wrong secret: b forwards it, and a,
					// the owner, refuses it; the session is not touched.
					req, err := http.NewRequest(http.MethodPost, b.url+"?tether=send&sid="+id, nil)
					if err != nil {
						t.Error(err)
						return
					}
					req.Header.Set("Tether-Secret", hex.EncodeToString(secret[:]))
					resp, err := client.Do(req)
					if err != nil {
						continue // b's server closed the connection
					}
					_ = resp.Body.Close()
					mu.Lock()
					statuses[resp.StatusCode]++
					mu.Unlock()
				}
			}()
		}
		eventually(t, 5*time.Second, func() bool { return b.h.Stats().Forwarded > 0 }, "b forwards")
		require.NoError(t, b.h.Shutdown(ctxT(t, 10*time.Second)))
		close(stop)
		wg.Wait()
		b.stop()
		for code, n := range statuses {
			if code != http.StatusNotFound && code != http.StatusServiceUnavailable {
				t.Errorf("round %d: %d answers %d; want the owner's 404 or a retryable 503", round, n, code)
			}
		}
	}
	require.Equal(t, 1, a.h.Sessions(), "the owner's session lives on")
	tk.exchange(t, 1, 5*time.Second)
}

// A serve blocked in Write on a client that stopped reading (a Handler
// heartbeat with no timeout sets no write deadline) does not hold Shutdown
// past its ctx: once ctx ends, the stuck link is cut, and the session is
// handed over or given up.
func TestShutdownStuckWriteBoundedByCtx(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	var writes atomic.Int64
	chunk := make([]byte, 64<<10)
	a := newNode(t, "a", store, func(ctx context.Context, s *tether.Session) {
		for s.Write(ctx, websocket.MessageBinary, chunk) == nil {
			writes.Add(1)
		}
	}, tether.WithHandlerHeartbeat(time.Hour, 0), tether.WithReplayBuffer(48<<20))
	ctx := ctxT(t, 20*time.Second)
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(a.url, "http"), &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
	require.NoError(t, err)
	defer ws.CloseNow()
	// The client reads nothing: the socket buffers fill, and a Write
	// blocks on the link.
	last, still := int64(-1), 0
	for still < 3 {
		select {
		case <-ctx.Done():
			t.Fatal("serve's writes never stalled")
		case <-time.After(200 * time.Millisecond):
		}
		if n := writes.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}

	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.h.Shutdown(sctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return within 10 s of a 1 s ctx")
	}
}
