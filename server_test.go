package tether_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/faultnet"
)

// testServer is a real coder/websocket server on 127.0.0.1 whose behaviour a
// test can steer.
type testServer struct {
	t   *testing.T
	srv *httptest.Server

	accepted atomic.Int64
	noPong   atomic.Bool  // stop answering pings
	status   atomic.Int64 // when non-zero, answer handshakes with this status
	// handle, when set, serves each accepted conn instead of echoing.
	handle func(ctx context.Context, c *websocket.Conn)

	mu      sync.Mutex
	conns   []*websocket.Conn
	headers []http.Header
	wg      sync.WaitGroup
}

func newTestServer(t *testing.T, handle func(ctx context.Context, c *websocket.Conn)) *testServer {
	t.Helper()
	s := &testServer{t: t, handle: handle}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.srv.Listener = ln
	s.srv.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *testServer) URL() string { return "ws" + s.srv.URL[len("http"):] }

func (s *testServer) Addr() string { return s.srv.Listener.Addr().String() }

func (s *testServer) serve(w http.ResponseWriter, r *http.Request) {
	// Counted before the hijack, while httptest.Server.Close still waits for
	// this request, so that Close's Wait comes after every Add.
	s.wg.Add(1)
	defer s.wg.Done()
	if st := s.status.Load(); st != 0 {
		if st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		http.Error(w, "no", int(st))
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OnPingReceived: func(context.Context, []byte) bool { return !s.noPong.Load() },
	})
	if err != nil {
		return
	}
	s.accepted.Add(1)
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.headers = append(s.headers, r.Header.Clone())
	s.mu.Unlock()
	defer c.CloseNow()
	ctx := r.Context()
	if s.handle != nil {
		s.handle(ctx, c)
		return
	}
	echo(ctx, c)
}

func echo(ctx context.Context, c *websocket.Conn) {
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

// dropAll closes every accepted conn abruptly.
func (s *testServer) dropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		_ = c.CloseNow()
	}
}

func (s *testServer) Close() {
	s.dropAll()
	s.srv.CloseClientConnections()
	s.srv.Close()
	s.wg.Wait()
}

// fastBackoff is a short, deterministic backoff for tests.
func fastBackoff() backoff.BackOff {
	return backoff.NewConstantBackOff(20 * time.Millisecond)
}

// dial connects with test-friendly options and closes the Conn at cleanup.
func dial(t *testing.T, url string, opts ...tether.Option) *tether.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all := append([]tether.Option{tether.WithBackoff(fastBackoff)}, opts...)
	c, err := tether.Dial(ctx, url, all...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

// eventually polls cond every few milliseconds until it holds or d passes.
func eventually(t *testing.T, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", d, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// proxied puts a faultnet proxy in front of s and returns it, closed at
// cleanup.
func proxied(t *testing.T, s *testServer) *faultnet.Proxy {
	t.Helper()
	p, err := faultnet.Listen(s.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// events records state transitions from a WithStateHook.
type events struct {
	mu  sync.Mutex
	all []tether.StateChange
	ch  chan tether.StateChange
}

func newEvents() *events { return &events{ch: make(chan tether.StateChange, 1024)} }

func (e *events) hook(sc tether.StateChange) {
	e.mu.Lock()
	e.all = append(e.all, sc)
	e.mu.Unlock()
	e.ch <- sc
}

func (e *events) option() tether.Option { return tether.WithStateHook(e.hook) }

// next waits for the next transition into state to.
func (e *events) next(t *testing.T, to tether.State, d time.Duration) tether.StateChange {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case sc := <-e.ch:
			if sc.To == to {
				return sc
			}
		case <-timer.C:
			t.Fatalf("no transition to %v within %v", to, d)
		}
	}
}

func (e *events) list() []tether.StateChange {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]tether.StateChange(nil), e.all...)
}

// nil2 returns a backoff factory with a constant delay d.
func constBackoff(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

func faultnetListen(target string) (*faultnet.Proxy, error) { return faultnet.Listen(target) }
