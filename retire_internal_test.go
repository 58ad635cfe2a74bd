package tether

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// The supervisor waits for every goroutine working on an old link (its
// background reader, its pings, a Write made aside) before it dials the
// next: here one that takes 300 ms to wind down once the link is retired.
func TestRetireWaitsForLinkGoroutines(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		conns []*websocket.Conn
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		defer c.CloseNow()
		for {
			if _, _, err := c.Read(r.Context()); err != nil {
				return
			}
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })

	var returned atomic.Bool
	dialed := make(chan bool, 8) // for each dial: had the slow goroutine returned?
	var d net.Dialer
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed <- returned.Load()
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := Dial(context.Background(), "ws://"+ln.Addr().String(),
		WithBackoff(constBackoffFactory(time.Millisecond)),
		WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}))
	require.NoError(t, err)
	defer c.CloseNow()
	<-dialed

	l := c.live.Load()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		<-l.ctx.Done()
		time.Sleep(300 * time.Millisecond)
		returned.Store(true)
	}()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) == 1
	}, 5*time.Second, time.Millisecond, "the server has the link")
	mu.Lock()
	_ = conns[0].CloseNow()
	mu.Unlock()
	select {
	case ok := <-dialed:
		require.True(t, ok, "the next link was dialed while a goroutine of the old one was still running")
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect")
	}
}
