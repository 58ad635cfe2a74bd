package tether_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// The move from long polling back to WebSocket, with polling requests caught
// on the way: a probe's WebSocket takes the session over while the polling
// link still has a send or a poll in flight, and Writes go on both ways.
// Whatever the Handler makes of the late request, every message arrives
// exactly once, in order.

// holdAt says where a polling request is held.
type holdAt int

const (
	holdDoor   holdAt = iota // before the Handler sees it
	holdBody                 // inside the Handler, reading its body
	holdAnswer               // answered by the Handler, the answer not yet sent
)

func (h holdAt) String() string { return [...]string{"door", "body", "answer"}[h] }

// moveServer is a Handler behind a front that can strip Upgrade, as a proxy
// that refuses WebSocket does, and hold the next polling request of a kind.
type moveServer struct {
	h    *tether.Handler
	srv  *httptest.Server
	quit chan struct{} // closed at cleanup: nothing is held any more

	mu    sync.Mutex
	block bool
	op    string // the kind of request to hold: "send" or "poll"
	at    holdAt
	held  chan int // told when a request is held; then its status
	let   chan struct{}
}

func newMoveServer(t *testing.T, serve func(ctx context.Context, s *tether.Session)) *moveServer {
	t.Helper()
	ms := &moveServer{h: tether.NewHandler(serve), quit: make(chan struct{})}
	ms.srv = httptest.NewUnstartedServer(http.HandlerFunc(ms.serveHTTP))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ms.srv.Listener = ln
	ms.srv.Start()
	t.Cleanup(func() {
		close(ms.quit)
		require.NoError(t, ms.h.Close())
		ms.srv.CloseClientConnections()
		ms.srv.Close()
	})
	return ms
}

func (ms *moveServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ms.mu.Lock()
	if ms.block {
		r.Header.Del("Upgrade")
		r.Header.Del("Connection")
	}
	var (
		held chan int
		let  chan struct{}
		at   holdAt
	)
	if ms.op != "" && r.URL.Query().Get("tether") == ms.op {
		held, let, at = ms.held, ms.let, ms.at
		ms.op = ""
	}
	ms.mu.Unlock()
	if held == nil {
		ms.h.ServeHTTP(w, r)
		return
	}
	switch at {
	case holdDoor:
		ms.wait(held, let)
	case holdBody:
		r.Body = &heldBody{ReadCloser: r.Body, wait: func() { ms.wait(held, let) }}
	}
	rec := httptest.NewRecorder()
	ms.h.ServeHTTP(rec, r)
	if at == holdAnswer {
		ms.wait(held, let)
	}
	for k, vs := range rec.Header() {
		w.Header()[k] = vs
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
	held <- rec.Code
}

// wait says a request is held, and holds it until let is closed.
func (ms *moveServer) wait(held chan int, let chan struct{}) {
	held <- 0
	select {
	case <-let:
	case <-ms.quit:
	}
}

// heldBody holds the first Read of a request's body.
type heldBody struct {
	io.ReadCloser
	once sync.Once
	wait func()
}

func (b *heldBody) Read(p []byte) (int, error) {
	b.once.Do(b.wait)
	return b.ReadCloser.Read(p)
}

// hold arms the hold of the next request of kind op at at.
func (ms *moveServer) hold(op string, at holdAt) (held chan int, let chan struct{}) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.op, ms.at = op, at
	ms.held, ms.let = make(chan int, 2), make(chan struct{})
	return ms.held, ms.let
}

func (ms *moveServer) setBlock(on bool) {
	ms.mu.Lock()
	ms.block = on
	ms.mu.Unlock()
}

func TestMoveBackWithRequestsInFlight(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		problems []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if t.Failed() && len(problems) > 0 {
			t.Logf("seen on the way: %q", problems)
		}
	})
	var serverGot, serverSent atomic.Int64
	stopServer := make(chan struct{})
	serve := func(ctx context.Context, s *tether.Session) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for n := int64(1); ; n++ {
				select {
				case <-stopServer:
					return
				default:
				}
				if s.Write(ctx, websocket.MessageText, []byte("s"+strconv.FormatInt(n, 10))) != nil {
					return
				}
				serverSent.Store(n)
				time.Sleep(time.Millisecond)
			}
		}()
		defer func() { <-done }()
		for {
			_, p, err := s.Read(ctx)
			if err != nil {
				if errors.Is(err, tether.ErrSessionLost) {
					fail("server: %v", err)
				}
				return
			}
			n, _ := strconv.ParseInt(strings.TrimPrefix(string(p), "c"), 10, 64)
			if got := serverGot.Load(); n != got+1 {
				fail("server got %q after c%d", p, got)
			}
			serverGot.Store(n)
		}
	}
	ms := newMoveServer(t, serve)
	p := lostProxy(t, ms.srv.Listener.Addr().String())
	c := dial(t, "ws://"+p.Addr(), tether.WithFallback(""),
		tether.WithProbeBackoff(constBackoff(20*time.Millisecond)),
		tether.WithBackoff(constBackoff(10*time.Millisecond)),
		tether.WithStateHook(func(sc tether.StateChange) {
			if errors.Is(sc.Cause, tether.ErrSessionLost) {
				fail("client: %v", sc.Cause)
			}
		}))
	ctx := ctxT(t, 2*time.Minute)

	var clientSent, clientGot atomic.Int64
	stopClient := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for n := int64(1); ; n++ {
			select {
			case <-stopClient:
				return
			default:
			}
			if err := c.Write(ctx, websocket.MessageText, []byte("c"+strconv.FormatInt(n, 10))); err != nil {
				fail("client write: %v", err)
				return
			}
			clientSent.Store(n)
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				return // the Conn is closed at the end
			}
			n, _ := strconv.ParseInt(strings.TrimPrefix(string(b), "s"), 10, 64)
			if got := clientGot.Load(); n != got+1 {
				fail("client got %q after s%d", b, got)
			}
			clientGot.Store(n)
		}
	}()

	for cycle := range 12 {
		op := [...]string{"send", "poll"}[cycle%2]
		at := holdAt(cycle / 2 % 3)
		if op == "poll" && at == holdBody {
			at = holdDoor // a poll has no body
		}
		ms.setBlock(true)
		p.Reset()
		eventually(t, 10*time.Second, func() bool { return c.Transport() == tether.Polling }, "on polling")
		held, let := ms.hold(op, at)
		select {
		case <-held:
		case <-ctx.Done():
			t.Fatalf("cycle %d: no %s held at the %v", cycle, op, at)
		}
		// The probe gets through while the request is held.
		ms.setBlock(false)
		eventually(t, 10*time.Second, func() bool { return c.Transport() == tether.WebSocket }, "back on WebSocket")
		close(let)
		var status int
		select {
		case status = <-held:
		case <-ctx.Done():
			t.Fatalf("cycle %d: the held %s did not end", cycle, op)
		}
		if at == holdAnswer {
			require.Equal(t, http.StatusOK, status, "cycle %d: %s answered before the move", cycle, op)
		} else {
			// Let in after the session moved: refused, nothing applied.
			require.Equal(t, http.StatusConflict, status, "cycle %d: %s held at the %v", cycle, op, at)
		}
	}

	// Both sides stop writing; everything written arrives.
	close(stopClient)
	close(stopServer)
	eventually(t, 20*time.Second, func() bool {
		return serverGot.Load() == clientSent.Load() && clientGot.Load() == serverSent.Load()
	}, "every message delivered")
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	require.Empty(t, problems)
	t.Logf("%d messages to the server, %d to the client", serverGot.Load(), clientGot.Load())
}
