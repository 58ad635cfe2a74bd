package tether_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// A pipelined stream through an echo whose replay buffer is small: the
// Handler's Write waits for the client's acks while the client's Write waits
// for the Handler's, and each side's acks travel behind its data. Both
// sides must go on reading while their Write waits, or neither moves again.
func TestSessionPipelineWithSmallReplayBuffers(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho, tether.WithReplayBuffer(64<<10))
	c := dial(t, ss.URL())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())

	const n = 3000
	msg := make([]byte, 1024)
	ctx := ctxT(t, 30*time.Second)
	werr := make(chan error, 1)
	go func() {
		for i := range n {
			copy(msg, fmt.Sprintf("%08d", i))
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				werr <- fmt.Errorf("write %d: %w", i, err)
				return
			}
		}
		werr <- nil
	}()
	for i := range n {
		_, p, err := c.Read(ctx)
		require.NoError(t, err, "read %d of %d", i, n)
		require.Equal(t, fmt.Sprintf("%08d", i), string(p[:8]))
	}
	require.NoError(t, <-werr)
}

// smallBuffers is a listener whose connections have 64 KiB socket buffers,
// and that can drop them all, as a server host going away would.
type smallBuffers struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func shrink(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(64 << 10)
		_ = tc.SetWriteBuffer(64 << 10)
	}
}

func (l *smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		shrink(c)
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *smallBuffers) dropAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		_ = c.Close()
	}
	l.conns = nil
}

// Both sides have megabytes unacknowledged when the link drops, so both
// replay megabytes on the next link, far more than the sockets buffer. Each
// side must read the other's replay while it sends its own, or both block
// writing and the session never comes back.
func TestSessionBothSidesReplayMegabytes(t *testing.T) {
	t.Parallel()
	const n, size = 192, 16 << 10 // 3 MiB each way, under the 4 MiB windows
	msg := func(i int) []byte {
		p := make([]byte, size)
		copy(p, fmt.Sprintf("%08d", i))
		return p
	}
	proceed := make(chan struct{})
	got := make(chan error, 1)
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
		for i := range n {
			if err := s.Write(ctx, websocket.MessageBinary, msg(i)); err != nil {
				got <- fmt.Errorf("server write %d: %w", i, err)
				return
			}
		}
		select {
		case <-proceed:
		case <-ctx.Done():
			return
		}
		for i := range n {
			_, p, err := s.Read(ctx)
			if err != nil {
				got <- fmt.Errorf("server read %d: %w", i, err)
				return
			}
			if want := fmt.Sprintf("%08d", i); string(p[:8]) != want {
				got <- fmt.Errorf("server read %q, want %q", p[:8], want)
				return
			}
		}
		got <- nil
		<-ctx.Done()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sb := &smallBuffers{Listener: ln}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = sb
	srv.Start()
	t.Cleanup(func() {
		require.NoError(t, h.Close())
		sb.dropAll()
		srv.Close()
	})

	var d net.Dialer
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			shrink(c)
		}
		return c, err
	}}}
	c := dial(t, "ws://"+ln.Addr().String(), tether.WithDialOptions(&websocket.DialOptions{HTTPClient: hc}))
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	ctx := ctxT(t, 30*time.Second)
	for i := range n {
		require.NoError(t, c.Write(ctx, websocket.MessageBinary, msg(i)))
	}

	before := c.Stats().Reconnects
	sb.dropAll()
	eventually(t, 10*time.Second, func() bool { return c.Stats().Reconnects > before }, "a new link after the drop")
	close(proceed)
	for i := range n {
		_, m, err := c.Read(ctx)
		require.NoError(t, err, "client read %d of %d", i, n)
		require.Equal(t, fmt.Sprintf("%08d", i), string(m[:8]))
	}
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the server did not read the client's messages")
	}
}

// A client writes far more than the session's window to a Session that does
// not read for a while. The client keeps to the window the Handler
// advertises, and the Handler reads ahead that much, so the client's pings
// are answered throughout: no heartbeat timeout, no reconnect, and every
// message arrives once serve reads again.
func TestSessionWindowKeepsPingsFlowing(t *testing.T) {
	t.Parallel()
	const n, size = 400, 1025 // 400 buffers of 1.5 KiB: ten windows of 64 KiB
	pause := make(chan struct{})
	got := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		select {
		case <-pause:
		case <-ctx.Done():
			return
		}
		for i := range n {
			_, p, err := s.Read(ctx)
			if err != nil {
				got <- err
				return
			}
			if want := fmt.Sprintf("%08d", i); string(p[:8]) != want {
				got <- fmt.Errorf("read %q, want %q", p[:8], want)
				return
			}
		}
		got <- nil
		<-ctx.Done()
	}, tether.WithReplayBuffer(64<<10))
	ev := newEvents()
	c := dial(t, ss.URL(), ev.option(), tether.WithHeartbeat(50*time.Millisecond, 250*time.Millisecond))
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	ctx := ctxT(t, 30*time.Second)
	werr := make(chan error, 1)
	go func() {
		msg := make([]byte, size)
		for i := range n {
			copy(msg, fmt.Sprintf("%08d", i))
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	// The client fills its window at once, then pings every 50 ms.
	eventually(t, 10*time.Second, func() bool { return c.Stats().PingsAnswered >= 12 }, "pings answered while serve does not read")
	select {
	case err := <-werr:
		t.Fatalf("the writer finished while serve did not read: %v", err)
	default:
	}
	require.Zero(t, c.Stats().Reconnects, "the link held while serve did not read")
	close(pause)
	select {
	case err := <-got:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("serve did not get every message")
	}
	require.NoError(t, <-werr)
	require.Zero(t, c.Stats().Reconnects)
	for _, e := range ev.list() {
		require.NotEqual(t, tether.Reconnecting, e.To, "%v", e.Cause)
	}
}
