package tether_test

import (
	"bytes"
	"context"
	"errors"
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

// In session mode a message is numbered when it is written, and a numbered
// message is sent again on every new link until the peer acknowledges it.
// One the peer refuses whatever the link (over its read limit, text that is
// not UTF-8, more than a polling body may hold) would make the Conn
// reconnect for ever. Each side tells the other its limits on every
// handshake: such a message is refused at Write, and the client's polling
// batches keep to the Handler's bounds.

// limitServer is a Handler behind a front that refuses WebSocket, as a proxy
// that strips Upgrade does, so that clients go to long polling at once. It
// counts the statuses of the polling sends, can hold the next one at the
// door, and can hide the Handler's Tether-Limits header, as an older Handler
// would.
type limitServer struct {
	h    *tether.Handler
	srv  *httptest.Server
	quit chan struct{}

	mu       sync.Mutex
	polling  bool // refuse WebSocket
	hide     bool // strip Tether-Limits from answers
	statuses map[int]int
	hold     chan struct{} // the next send waits at the door until closed
	held     chan struct{} // closed when a send is held
}

func newLimitServer(t *testing.T, serve func(ctx context.Context, s *tether.Session), opts ...tether.HandlerOption) *limitServer {
	t.Helper()
	ls := &limitServer{h: tether.NewHandler(serve, opts...), quit: make(chan struct{}), statuses: map[int]int{}}
	ls.srv = httptest.NewUnstartedServer(http.HandlerFunc(ls.serveHTTP))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ls.srv.Listener = ln
	ls.srv.Start()
	t.Cleanup(func() {
		close(ls.quit)
		require.NoError(t, ls.h.Close())
		ls.srv.CloseClientConnections()
		ls.srv.Close()
	})
	return ls
}

// set makes the front refuse WebSocket (polling) and hide the Handler's
// limits (hide).
func (ls *limitServer) set(polling, hide bool) {
	ls.mu.Lock()
	ls.polling, ls.hide = polling, hide
	ls.mu.Unlock()
}

func (ls *limitServer) URL() string { return "ws" + ls.srv.URL[len("http"):] }

func (ls *limitServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ls.mu.Lock()
	polling, hide := ls.polling, ls.hide
	send := r.URL.Query().Get("tether") == "send"
	var hold, held chan struct{}
	if send {
		hold, held = ls.hold, ls.held
		ls.hold, ls.held = nil, nil
	}
	ls.mu.Unlock()
	if polling {
		r.Header.Del("Upgrade")
		r.Header.Del("Connection")
	}
	if hold != nil {
		close(held)
		select {
		case <-hold:
		case <-ls.quit:
		}
	}
	if !hide && !send {
		ls.h.ServeHTTP(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w, hide: hide}
	ls.h.ServeHTTP(sw, r)
	if send {
		ls.mu.Lock()
		ls.statuses[sw.status()]++
		ls.mu.Unlock()
	}
}

// holdNextSend makes the next polling send wait at the door until release
// is called; held is closed when it does.
func (ls *limitServer) holdNextSend() (held <-chan struct{}, release func()) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.hold, ls.held = make(chan struct{}), make(chan struct{})
	hold := ls.hold
	var once sync.Once
	return ls.held, func() { once.Do(func() { close(hold) }) }
}

func (ls *limitServer) count(status int) int {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.statuses[status]
}

// statusWriter records an answer's status and can hide Tether-Limits.
type statusWriter struct {
	http.ResponseWriter
	hide bool
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
		if w.hide {
			w.Header().Del("Tether-Limits")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// collect gathers what serve reads, and its end.
type collect struct {
	got  chan []byte
	errs chan error
}

func newCollect() *collect {
	return &collect{got: make(chan []byte, 256), errs: make(chan error, 16)}
}

func (c *collect) serve(ctx context.Context, s *tether.Session) {
	for {
		_, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		c.got <- p
	}
}

// expect waits for want, the next message serve reads.
func (c *collect) expect(t *testing.T, ctx context.Context, want []byte) {
	t.Helper()
	select {
	case p := <-c.got:
		require.True(t, bytes.Equal(want, p), "got %d bytes (%.10q), want %d bytes (%.10q)", len(p), p, len(want), want)
	case <-ctx.Done():
		t.Fatalf("the server did not get the message of %d bytes (%.10q)", len(want), want)
	}
}

// sized is message i of n bytes.
func sized(i, n int) []byte {
	p := bytes.Repeat([]byte{'x'}, n)
	copy(p, []byte{byte('0' + i/100%10), byte('0' + i/10%10), byte('0' + i%10)})
	return p
}

// The client's polling sends keep to the body limit the Handler told: a
// send held at the door lets 40 messages of 30,000 bytes pile up in the
// client (1.2 MB, within the session's window, over the 1 MiB body limit),
// and they go in several sends, none refused.
func TestPollingBatchesFitHandlerLimits(t *testing.T) {
	t.Parallel()
	col := newCollect()
	ls := newLimitServer(t, col.serve)
	ls.set(true, false)
	c := dial(t, ls.URL(), tether.WithFallback(""))
	require.Equal(t, tether.Polling, c.Transport())
	ctx := ctxT(t, 30*time.Second)

	held, release := ls.holdNextSend()
	defer release()
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(0, 30000)))
	<-held
	for i := 1; i < 40; i++ {
		require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(i, 30000)))
	}
	release()
	for i := range 40 {
		col.expect(t, ctx, sized(i, 30000))
	}
	// A send is counted once the Handler has answered it, after serve got
	// its messages.
	eventually(t, 5*time.Second, func() bool { return ls.count(http.StatusOK) >= 3 }, "the messages went in several sends")
	require.Zero(t, ls.count(http.StatusRequestEntityTooLarge), "sends refused as too large")
	require.Zero(t, c.Stats().Reconnects)
}

// A Handler that does not tell its limits (an older one) and takes less
// than the defaults: a send refused with 413 is split, down to one message
// a send, and nothing is lost or sent twice.
func TestPollingBatchesShrinkOn413(t *testing.T) {
	t.Parallel()
	col := newCollect()
	ls := newLimitServer(t, col.serve, tether.WithPollLimits(200_000, 0, 0))
	ls.set(true, true)
	c := dial(t, ls.URL(), tether.WithFallback(""))
	require.Equal(t, tether.Polling, c.Transport())
	ctx := ctxT(t, 30*time.Second)

	held, release := ls.holdNextSend()
	defer release()
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(0, 30000)))
	<-held
	for i := 1; i < 40; i++ {
		require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(i, 30000)))
	}
	release()
	for i := range 40 {
		col.expect(t, ctx, sized(i, 30000))
	}
	eventually(t, 5*time.Second, func() bool { return ls.count(http.StatusRequestEntityTooLarge) > 0 }, "the Handler's header was hidden: a send was too large")
	require.Zero(t, c.Stats().Reconnects, "a send refused as too large is split, not the link dropped")
}

// One message a Handler refuses on long polling whatever the batch, which
// the client could not know (the Handler told nothing), ends the Conn with
// an error wrapping ErrMessageTooLarge: numbered, it would be sent again on
// every link, for ever.
func TestPolling413OneMessageEnds(t *testing.T) {
	t.Parallel()
	col := newCollect()
	ls := newLimitServer(t, col.serve, tether.WithHandlerReadLimit(100_000), tether.WithPollLimits(50_000, 0, 0))
	ls.set(true, true)
	ev := newEvents()
	c := dial(t, ls.URL(), tether.WithFallback(""), ev.option())
	require.Equal(t, tether.Polling, c.Transport())
	ctx := ctxT(t, 10*time.Second)

	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(1, 1000)))
	col.expect(t, ctx, sized(1, 1000))
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(2, 60_000)))
	sc := ev.next(t, tether.Closed, 5*time.Second)
	require.ErrorIs(t, sc.Cause, tether.ErrMessageTooLarge)
	_, _, err := c.Read(ctx)
	require.ErrorIs(t, err, tether.ErrMessageTooLarge)
	eventually(t, 5*time.Second, func() bool { return ls.count(http.StatusRequestEntityTooLarge) == 1 }, "the send refused")
	require.Equal(t, 1, ls.count(http.StatusRequestEntityTooLarge), "refused once, not sent again")
	require.Zero(t, c.Stats().Reconnects)
}

// A Write in session mode of a message over the Handler's read limit is
// refused before it is numbered, on both transports: the link is not
// harmed, and the next message goes through.
func TestWriteOverServerReadLimit(t *testing.T) {
	t.Parallel()
	for _, tr := range []tether.Transport{tether.WebSocket, tether.Polling} {
		t.Run(tr.String(), func(t *testing.T) {
			t.Parallel()
			col := newCollect()
			ls := newLimitServer(t, col.serve, tether.WithHandlerReadLimit(1000))
			ls.set(tr == tether.Polling, false)
			c := dial(t, ls.URL(), tether.WithFallback(""))
			require.Equal(t, tr, c.Transport())
			ctx := ctxT(t, 10*time.Second)

			err := c.Write(ctx, websocket.MessageBinary, sized(1, 1001))
			require.ErrorIs(t, err, tether.ErrMessageTooLarge)
			require.ErrorContains(t, err, "1001 bytes")
			require.ErrorContains(t, err, "read limit of 1000 bytes")
			require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(2, 1000)))
			col.expect(t, ctx, sized(2, 1000))
			require.Zero(t, c.Stats().Reconnects)
			require.Equal(t, tether.Connected, c.State())
		})
	}
}

// A Write in session mode of a text message that is not valid UTF-8 is
// refused before it is numbered: the Handler would end the session (1007).
func TestWriteInvalidUTF8InSession(t *testing.T) {
	t.Parallel()
	for _, tr := range []tether.Transport{tether.WebSocket, tether.Polling} {
		t.Run(tr.String(), func(t *testing.T) {
			t.Parallel()
			col := newCollect()
			ls := newLimitServer(t, col.serve)
			ls.set(tr == tether.Polling, false)
			ev := newEvents()
			c := dial(t, ls.URL(), tether.WithFallback(""), ev.option())
			require.Equal(t, tr, c.Transport())
			ctx := ctxT(t, 10*time.Second)

			err := c.Write(ctx, websocket.MessageText, []byte("bad \xff text"))
			require.ErrorIs(t, err, tether.ErrInvalidUTF8)
			// The same bytes as binary are a message like any other.
			require.NoError(t, c.Write(ctx, websocket.MessageBinary, []byte("bad \xff text")))
			col.expect(t, ctx, []byte("bad \xff text"))
			require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("good text")))
			col.expect(t, ctx, []byte("good text"))
			for _, sc := range ev.list() {
				require.NotEqual(t, tether.Reconnecting, sc.To, "%v", sc.Cause)
			}
			require.Equal(t, tether.Connected, c.State())
		})
	}
}

// Session.Write refuses, before numbering it, a message over the read limit
// the client told on its handshake, on both transports; the client gets
// the next message, and never reconnects.
func TestSessionWriteOverClientReadLimit(t *testing.T) {
	t.Parallel()
	for _, tr := range []tether.Transport{tether.WebSocket, tether.Polling} {
		t.Run(tr.String(), func(t *testing.T) {
			t.Parallel()
			errs := make(chan error, 2)
			ls := newLimitServer(t, func(ctx context.Context, s *tether.Session) {
				errs <- s.Write(ctx, websocket.MessageBinary, sized(1, 2001))
				errs <- s.Write(ctx, websocket.MessageBinary, sized(2, 2000))
				<-ctx.Done()
			})
			ls.set(tr == tether.Polling, false)
			ev := newEvents()
			c := dial(t, ls.URL(), tether.WithFallback(""), tether.WithReadLimit(2000), ev.option())
			require.Equal(t, tr, c.Transport())
			ctx := ctxT(t, 10*time.Second)

			err := <-errs
			require.ErrorIs(t, err, tether.ErrMessageTooLarge)
			require.ErrorContains(t, err, "client's read limit of 2000 bytes")
			require.NoError(t, <-errs)
			_, p, err := c.Read(ctx)
			require.NoError(t, err)
			require.Equal(t, sized(2, 2000), p)
			for _, sc := range ev.list() {
				require.NotEqual(t, tether.Reconnecting, sc.To, "%v", sc.Cause)
			}
		})
	}
}

// Session.Write of invalid UTF-8 text is refused on both kinds of client.
func TestSessionWriteInvalidUTF8(t *testing.T) {
	t.Parallel()
	errs := make(chan error, 1)
	ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
		errs <- s.Write(ctx, websocket.MessageText, []byte{0xff})
		<-ctx.Done()
	})
	_ = dial(t, ss.URL())
	require.True(t, errors.Is(<-errs, tether.ErrInvalidUTF8))
}

// A message queued while reconnecting, under the limit of the server that
// was, and over the limit the next one tells, is dropped when the queue is
// sent, and counted: sent, it would be refused on every link. The Conn
// goes on with the next message.
func TestQueuedOverNewServerLimitDropped(t *testing.T) {
	t.Parallel()
	colA, colB := newCollect(), newCollect()
	a := tether.NewHandler(colA.serve)
	b := tether.NewHandler(colB.serve, tether.WithHandlerReadLimit(10_000))
	var (
		mu      sync.Mutex
		current http.Handler = a
		refuse  bool
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		h, no := current, refuse
		mu.Unlock()
		if no {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(func() {
		_ = a.Close() // closed by the test, unless it failed first
		require.NoError(t, b.Close())
		srv.CloseClientConnections()
		srv.Close()
	})
	ev := newEvents()
	c := dial(t, "ws"+srv.URL[len("http"):], ev.option())
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(1, 100)))
	colA.expect(t, ctx, sized(1, 100))

	// The first server goes, and the next is not there yet.
	mu.Lock()
	refuse = true
	mu.Unlock()
	require.NoError(t, a.Close())
	ev.next(t, tether.Reconnecting, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(2, 20_000)), "within the first server's limit: queued")
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(3, 100)))
	mu.Lock()
	current, refuse = b, false
	mu.Unlock()

	colB.expect(t, ctx, sized(3, 100))
	require.EqualValues(t, 1, c.Stats().QueueDropped)
	// The queue goes out before the Conn says it is connected: the
	// message can come first.
	eventually(t, 5*time.Second, func() bool { return c.State() == tether.Connected }, "the Conn connected")
	err = c.Write(ctx, websocket.MessageBinary, sized(4, 20_000))
	require.ErrorIs(t, err, tether.ErrMessageTooLarge, "the new server's limit holds at Write")
}

// A session's message may be replayed over long polling: the limit a
// Handler tells is no more than a polling send carries, whatever its read
// limit, so a message numbered over WebSocket never meets a 413 after a
// fallback.
func TestToldLimitFitsAPollingSend(t *testing.T) {
	t.Parallel()
	col := newCollect()
	ls := newLimitServer(t, col.serve, tether.WithHandlerReadLimit(2<<20), tether.WithPollLimits(64<<10, 0, 0))
	ls.set(false, false)
	c := dial(t, ls.URL(), tether.WithFallback(""))
	require.Equal(t, tether.WebSocket, c.Transport())
	ctx := ctxT(t, 10*time.Second)

	err := c.Write(ctx, websocket.MessageBinary, sized(1, 100<<10))
	require.ErrorIs(t, err, tether.ErrMessageTooLarge)
	require.NoError(t, c.Write(ctx, websocket.MessageBinary, sized(2, 60<<10)))
	col.expect(t, ctx, sized(2, 60<<10))
}
