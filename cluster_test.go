package tether_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
	"github.com/tetherws/tether/internal/frame"
)

// A client whose link drops and comes back through another instance
// resumes its session there: the request is forwarded to the owner, and
// nothing is lost or repeated.
func TestClusterForwardWebSocket(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	p := lostProxy(t, a.addr())
	ev := newEvents()
	tk := &talker{c: dial(t, "ws://"+p.Addr()+"/ws", ev.option())}
	tk.exchange(t, 5, 5*time.Second)

	p.SetTarget(b.addr())
	p.Reset()
	eventually(t, 5*time.Second, func() bool { return b.h.Stats().Forwarded > 0 }, "b forwards the resume")
	tk.exchange(t, 5, 5*time.Second)

	id, starts, _ := lg.onlySession(t)
	require.Equal(t, 1, starts, "serve started once")
	wantMessages(t, lg.messages(id), 10)
	require.Equal(t, 1, a.h.Sessions())
	require.Equal(t, 0, b.h.Sessions(), "b holds nothing: it forwards")
	noLostSession(t, ev)
}

// Behind a balancer that does not stick and does not pass the WebSocket
// upgrade, every poll and send lands on another instance than the last:
// all of them reach the owner.
func TestClusterForwardPolling(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	opts := []tether.HandlerOption{tether.WithPollLimits(0, 0, 2*time.Second)}
	a := newNode(t, "a", store, lg.echo, opts...)
	b := newNode(t, "b", store, lg.echo, opts...)
	c := newNode(t, "c", store, lg.echo, opts...)
	rr := newRoundRobin(t, true, a, b, c)
	ev := newEvents()
	tk := &talker{c: dial(t, rr.wsURL(), ev.option(), tether.WithFallback(""))}
	require.Equal(t, tether.Polling, tk.c.Transport())
	for range 10 {
		tk.exchange(t, 3, 10*time.Second)
	}
	id, starts, _ := lg.onlySession(t)
	require.Equal(t, 1, starts)
	wantMessages(t, lg.messages(id), 30)
	var forwarded uint64
	for _, n := range []*node{a, b, c} {
		forwarded += n.h.Stats().Forwarded
		require.Positive(t, rr.hitsOf(n.name), "every instance got requests")
	}
	require.Positive(t, forwarded, "polls reached the owner through the others")
	require.Zero(t, tk.c.Stats().Reconnects, "no poll failed for want of its session")
	noLostSession(t, ev)
}

// Shutdown hands a session over: serve's Read returns ErrShuttingDown,
// what serve writes before it returns is kept, the link closes with 1012,
// and the client resumes on another instance, which starts serve with
// HandedOver. Nothing is lost or repeated either way.
func TestClusterHandoff(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	p := lostProxy(t, a.addr())
	ev := newEvents()
	tk := &talker{c: dial(t, "ws://"+p.Addr()+"/ws", ev.option())}
	tk.exchange(t, 5, 5*time.Second)

	p.SetTarget(b.addr()) // new connections go to b; the link to a stays
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, a.h.Shutdown(ctx))
	require.Equal(t, uint64(1), a.h.Stats().HandedOver)
	require.Equal(t, 0, a.h.Sessions())

	tk.exchange(t, 5, 10*time.Second)
	require.Equal(t, 1, tk.byes, "what serve wrote on its way out was delivered once")
	id, starts, handed := lg.onlySession(t)
	require.Equal(t, 2, starts, "serve ran on a, then on b")
	require.Equal(t, 1, handed, "b's serve was told the session was handed over")
	wantMessages(t, lg.messages(id), 10)
	require.Equal(t, uint64(1), b.h.Stats().TakenOver)
	noLostSession(t, ev)
}

// The link of a session handed over closes with 1012 (service restart),
// after what serve wrote on its way out. Seen from a bare coder/websocket
// client, so that nothing but the server decides what arrives.
func TestClusterHandoffCloses1012(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	ctx := ctxT(t, 10*time.Second)
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(a.url, "http"), &websocket.DialOptions{Subprotocols: []string{tether.Subprotocol}})
	require.NoError(t, err)
	defer ws.CloseNow()
	_, hello, err := ws.Read(ctx)
	require.NoError(t, err)
	f, err := frame.Decode(hello)
	require.NoError(t, err)
	require.Equal(t, frame.Hello, f.Kind)
	frames := make(chan frame.Frame, 4)
	errs := make(chan error, 1)
	go func() {
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				errs <- err
				return
			}
			f, _ := frame.Decode(b)
			frames <- f
		}
	}()
	require.NoError(t, a.h.Shutdown(ctx))
	select {
	case f := <-frames:
		require.Equal(t, frame.Data, f.Kind)
		require.Equal(t, "bye", string(f.Payload))
	case <-ctx.Done():
		t.Fatal("no goodbye")
	}
	select {
	case err := <-errs:
		require.Equal(t, websocket.StatusServiceRestart, websocket.CloseStatus(err), "%v", err)
	case <-ctx.Done():
		t.Fatal("the link did not close")
	}
	_, err = a.dir.Lookup(ctx, sessionID(t, lg.sessions()[0]))
	require.ErrorIs(t, err, net.ErrClosed, "a left the cluster")
}

// Messages in flight both ways across a handoff, over long polling behind
// a round-robin balancer: exactly once, in order.
func TestClusterHandoffPolling(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	opts := []tether.HandlerOption{tether.WithPollLimits(0, 0, 2*time.Second)}
	a := newNode(t, "a", store, lg.echo, opts...)
	b := newNode(t, "b", store, lg.echo, opts...)
	rr := newRoundRobin(t, true, a, b)
	ev := newEvents()
	tk := &talker{c: dial(t, rr.wsURL(), ev.option(), tether.WithFallback(""))}
	tk.exchange(t, 5, 10*time.Second)
	owner, other := a, b
	if b.h.Sessions() == 1 {
		owner, other = b, a
	}
	rr.mu.Lock()
	rr.nodes = []*node{other}
	rr.mu.Unlock()

	// The client writes while its instance shuts down.
	ctx := ctxT(t, 10*time.Second)
	for i := range 5 {
		tk.sent++
		require.NoError(t, tk.c.Write(ctx, websocket.MessageText, []byte("m"+itoa(tk.sent))), "write %d", i)
	}
	require.NoError(t, owner.h.Shutdown(ctx))
	tk.exchange(t, 5, 15*time.Second)
	id, starts, handed := lg.onlySession(t)
	require.Equal(t, 2, starts)
	require.Equal(t, 1, handed)
	wantMessages(t, lg.messages(id), 15)
	noLostSession(t, ev)
}

// An instance that crashes loses its sessions: a client of one is told
// once, within the liveness lease, and goes on with a new session on
// another instance; the other instances' sessions lose nothing.
func TestClusterCrash(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	pa := lostProxy(t, a.addr())
	pb := lostProxy(t, b.addr())
	evA, evB := newEvents(), newEvents()
	onA := &talker{c: dial(t, "ws://"+pa.Addr()+"/ws", evA.option())}
	onB := &talker{c: dial(t, "ws://"+pb.Addr()+"/ws", evB.option())}
	evA.next(t, tether.Connected, time.Second)
	onA.exchange(t, 3, 5*time.Second)
	onB.exchange(t, 3, 5*time.Second)

	pa.SetTarget(b.addr())
	crashed := time.Now()
	a.crash()
	pa.Reset() // the links to a die with it
	sc := evA.next(t, tether.Connected, 10*time.Second)
	took := time.Since(crashed)
	require.ErrorIs(t, sc.Cause, tether.ErrSessionLost, "the client is told its session was lost")
	require.Less(t, took, testLease+3*time.Second, "within the owner's lease, and a retry")
	_, _, err := onA.c.Read(ctxT(t, 5*time.Second))
	require.ErrorIs(t, err, tether.ErrSessionLost, "Read reports it once")
	onA.sent, onA.got = 0, 0
	onA.exchange(t, 3, 5*time.Second)

	onB.exchange(t, 3, 5*time.Second)
	noLostSession(t, evB)
	lost := 0
	for _, sc := range evA.list() {
		if errors.Is(sc.Cause, tether.ErrSessionLost) {
			lost++
		}
	}
	require.Equal(t, 1, lost, "told once: %v", evA.list())
}

// A session the directory says another instance owns (the directory was
// wiped, and another instance recorded the id meanwhile) ends on the
// instance that held it, with 1012: its client reconnects and is sent to
// the owner.
func TestClusterFencedOut(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	readErr := make(chan error, 1)
	ids := make(chan string, 1)
	a := newNode(t, "a", store, func(ctx context.Context, s *tether.Session) {
		ids <- s.ID()
		_, _, err := s.Read(ctx)
		readErr <- err
	})
	dial(t, "ws"+strings.TrimPrefix(a.url, "http"))
	id := sessionID(t, <-ids)
	eventually(t, 5*time.Second, func() bool {
		o, err := a.dir.Lookup(context.Background(), id)
		return err == nil && o.Status == tether.OwnerHere
	}, "the session is recorded")

	store.Wipe()
	other := store.Join("http://127.0.0.1:1/ws")
	defer other.Leave(context.Background())
	_, err := other.Claim(ctxT(t, time.Second), id)
	require.NoError(t, err)
	select {
	case err := <-readErr:
		require.Error(t, err)
	case <-time.After(3 * testLease):
		t.Fatal("the session did not end on a")
	}
	require.Equal(t, 0, a.h.Sessions())
}

// While the directory is out of reach, links already up keep working and
// new sessions open where they land; once it is back, those sessions are
// recorded within a renewal or two, and other instances find them.
func TestClusterDirectoryDown(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	up := &talker{c: dial(t, "ws"+strings.TrimPrefix(a.url, "http"))}
	up.exchange(t, 3, 5*time.Second)

	store.SetDown(true)
	up.exchange(t, 3, 5*time.Second)
	fresh := &talker{c: dial(t, "ws"+strings.TrimPrefix(a.url, "http"))}
	fresh.exchange(t, 3, 5*time.Second)
	require.Equal(t, 2, a.h.Sessions())

	store.SetDown(false)
	ids := lg.sessions()
	require.Len(t, ids, 2)
	id := sessionID(t, ids[1])
	eventually(t, 3*testLease, func() bool {
		o, err := b.dir.Lookup(context.Background(), id)
		return err == nil && o.Status == tether.OwnerRemote && o.URL == a.url
	}, "the session opened during the outage is recorded")
}

// A session that ended leaves a note in the directory: a client that comes
// back through another instance is told how it ended, as on its own.
func TestClusterEndedNote(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	close4001 := make(chan struct{})
	a := newNode(t, "a", store, func(ctx context.Context, s *tether.Session) {
		<-close4001
		_ = s.Close(4001, "done here")
	})
	b := newNode(t, "b", store, lostEcho0)
	p := lostProxy(t, a.addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr()+"/ws", ev.option())
	ev.next(t, tether.Connected, 5*time.Second)
	lostCutOff(t, p) // the client is away when the session ends
	ev.next(t, tether.Reconnecting, 5*time.Second)
	close(close4001)
	eventually(t, 5*time.Second, func() bool { return a.h.Sessions() == 0 }, "the session ended on a")
	p.SetTarget(b.addr())
	require.NoError(t, p.Refuse(false))
	_, _, err := c.Read(ctxT(t, 10*time.Second))
	require.Equal(t, websocket.StatusCode(4001), websocket.CloseStatus(err), "told how it ended: %v", err)
}

func lostEcho0(ctx context.Context, s *tether.Session) { sessionEcho(ctx, s) }

// A request that says it was forwarded is never forwarded again: a client
// that sets the mark itself only gets a retryable answer.
func TestClusterOneHop(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	dial(t, "ws"+strings.TrimPrefix(a.url, "http"))
	eventually(t, 5*time.Second, func() bool { return len(lg.sessions()) == 1 }, "a session")
	id := lg.sessions()[0]
	var secret [16]byte // not the session's: only the owner checks it
	req, err := http.NewRequest(http.MethodPost, b.url+"?tether=open", nil)
	require.NoError(t, err)
	req.Header.Set("Tether-Session", id)
	req.Header.Set("Tether-Secret", hex.EncodeToString(secret[:]))
	req.Header.Set("Tether-Forwarded", "someone")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Zero(t, b.h.Stats().Forwarded)

	req.Header.Del("Tether-Forwarded")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "without the mark it is forwarded")
	require.Equal(t, uint64(1), b.h.Stats().Forwarded)
}

// A session found gone is remembered for a moment: a client that polls it
// again and again does not cost a directory lookup each time (see also
// TestLookupRateLimit).
func TestClusterLookupBounded(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	a := newNode(t, "a", store, sessionEcho)
	// A new directory is unsure for a lease: it may have lost records.
	eventually(t, 3*testLease, func() bool {
		o, err := a.dir.Lookup(context.Background(), tether.SessionID{1})
		return err == nil && o.Status == tether.OwnerUnknown
	}, "the directory settles")
	a.dir.lookups.Store(0)
	var secret [16]byte
	poll := func(id [16]byte) int {
		req, err := http.NewRequest(http.MethodGet, a.url+"?tether=poll&ack=0&sid="+hex.EncodeToString(id[:]), nil)
		require.NoError(t, err)
		req.Header.Set("Tether-Secret", hex.EncodeToString(secret[:]))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	var same [16]byte
	_, _ = rand.Read(same[:])
	for range 50 {
		require.Equal(t, http.StatusNotFound, poll(same))
	}
	require.Equal(t, int64(1), a.dir.lookups.Load(), "a session found gone is remembered")
}

// Shutdown without a cluster drains: serve's Read returns ErrShuttingDown,
// what serve writes then is delivered, and the link closes with 1012 once
// the client has acknowledged it. New clients are turned away meanwhile
// with a retryable 503.
func TestShutdownDrain(t *testing.T) {
	t.Parallel()
	lg := newLedger()
	ss := newSessionServer(t, lg.echo)
	ev := newEvents()
	tk := &talker{c: dial(t, ss.URL(), ev.option())}
	tk.exchange(t, 3, 5*time.Second)

	done := make(chan error, 1)
	go func() { done <- ss.h.Shutdown(ctxT(t, 10*time.Second)) }()
	// serve's goodbye reaches the client, which does not read it yet: it is
	// not acknowledged, and the link stays.
	eventually(t, 5*time.Second, func() bool {
		_, ok := lg.stopped(lg.sessions()[0])
		return ok
	}, "serve returned")
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) before the client acknowledged what serve wrote", err)
	case <-time.After(300 * time.Millisecond):
	}
	_, p, err := tk.c.Read(ctxT(t, 5*time.Second))
	require.NoError(t, err)
	require.Equal(t, "bye", string(p), "what serve wrote on its way out")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return once the client acknowledged")
	}
	sc := ev.next(t, tether.Reconnecting, 5*time.Second)
	require.Equal(t, websocket.StatusServiceRestart, websocket.CloseStatus(sc.Cause), "%v", sc.Cause)
	id, _, _ := lg.onlySession(t)
	stopErr, _ := lg.stopped(id)
	require.ErrorIs(t, stopErr, tether.ErrShuttingDown)

	resp, err := http.Post(strings.Replace(ss.URL(), "ws", "http", 1)+"?tether=open", "", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.ErrorIs(t, ss.h.Shutdown(context.Background()), net.ErrClosed)
}

// Shutdown wakes a Read that waits on serve's goroutine, and one that
// would have returned a message waiting: both return ErrShuttingDown.
func TestShutdownWakesRead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ctx  func(serve context.Context) context.Context
	}{
		{"background", func(context.Context) context.Context { return context.Background() }},
		{"serve ctx", func(serve context.Context) context.Context { return serve }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reading := make(chan struct{})
			got := make(chan error, 1)
			ss := newSessionServer(t, func(ctx context.Context, s *tether.Session) {
				close(reading)
				_, _, err := s.Read(tc.ctx(ctx))
				got <- err
			})
			dial(t, ss.URL())
			<-reading
			ctx := ctxT(t, 5*time.Second)
			go func() { _ = ss.h.Shutdown(ctx) }()
			select {
			case err := <-got:
				require.ErrorIs(t, err, tether.ErrShuttingDown)
			case <-time.After(3 * time.Second):
				t.Fatal("Read was not woken by Shutdown")
			}
		})
	}
}

// A Write that returned nil during a handoff is delivered; one that could
// not be handed over fails with ErrShuttingDown. Here a goroutine other
// than serve keeps writing through the handoff.
func TestClusterHandoffWrites(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	type result struct {
		n   int
		err error
	}
	results := make(chan result, 1)
	writer := func(ctx context.Context, s *tether.Session) {
		if s.HandedOver() {
			sessionEcho(ctx, s)
			return
		}
		go func() {
			n := 0
			for {
				if err := s.Write(context.Background(), websocket.MessageText, []byte("w"+itoa(n+1))); err != nil {
					results <- result{n, err}
					return
				}
				n++
				time.Sleep(time.Millisecond) // a steady stream, not a flood
			}
		}()
		for {
			if _, _, err := s.Read(ctx); err != nil {
				return
			}
		}
	}
	a := newNode(t, "a", store, writer)
	// A slow Park: Writes keep coming while the state is on its way.
	a.dir.parkDelay = 100 * time.Millisecond
	b := newNode(t, "b", store, writer)
	p := lostProxy(t, a.addr())
	c := dial(t, "ws://"+p.Addr()+"/ws")
	ctx := ctxT(t, 15*time.Second)
	_, first, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "w1", string(first))
	p.SetTarget(b.addr())
	go func() { _ = a.h.Shutdown(ctx) }()
	var res result
	select {
	case res = <-results:
	case <-ctx.Done():
		t.Fatal("the writer never failed")
	}
	require.ErrorIs(t, res.err, tether.ErrShuttingDown)
	for i := 2; i <= res.n; i++ {
		_, p, err := c.Read(ctx)
		require.NoError(t, err, "message %d of %d", i, res.n)
		require.Equal(t, "w"+itoa(i), string(p))
	}
	// Nothing more: the next thing read is the echo of a new message.
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("after")))
	_, p2, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "after", string(p2))
}

// A session is recorded before its client learns its id: a client whose
// first link drops at once, and that comes back through another instance,
// finds it.
func TestClusterClaimBeforeHello(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	// Past the new directory's first lease, a session it does not know is
	// lost, not "try again".
	eventually(t, 3*testLease, func() bool {
		o, err := b.dir.Lookup(context.Background(), tether.SessionID{1})
		return err == nil && o.Status == tether.OwnerUnknown
	}, "the directory settles")
	p := lostProxy(t, a.addr())
	ev := newEvents()
	tk := &talker{c: dial(t, "ws://"+p.Addr()+"/ws", ev.option())}
	p.SetTarget(b.addr())
	p.Reset()
	tk.exchange(t, 3, 5*time.Second)
	noLostSession(t, ev)
	_, starts, _ := lg.onlySession(t)
	require.Equal(t, 1, starts)
}

// While the directory is out of reach, an instance forwards to the owner
// it last heard of: a client that moves between instances keeps its
// session.
func TestClusterDirectoryDownForwards(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	p := lostProxy(t, a.addr())
	ev := newEvents()
	tk := &talker{c: dial(t, "ws://"+p.Addr()+"/ws", ev.option())}
	tk.exchange(t, 3, 5*time.Second)
	p.SetTarget(b.addr())
	p.Reset()
	tk.exchange(t, 3, 5*time.Second) // b learns where the session is

	store.SetDown(true)
	p.Reset()
	tk.exchange(t, 3, 5*time.Second)
	noLostSession(t, ev)
	require.GreaterOrEqual(t, b.h.Stats().Forwarded, uint64(2))
	_, starts, _ := lg.onlySession(t)
	require.Equal(t, 1, starts)
}

// A session whose state is over WithHandoffLimit is not handed over: its
// client is told the session was lost, and goes on with a new one.
func TestClusterHandoffTooLarge(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	big := make([]byte, 8<<10)
	wrote := make(chan struct{})
	serve := func(ctx context.Context, s *tether.Session) {
		if !s.HandedOver() {
			// More than the limit, which the client does not read.
			for range 4 {
				_ = s.Write(ctx, websocket.MessageBinary, big)
			}
			close(wrote)
		}
		sessionEcho(ctx, s)
	}
	a := newNode(t, "a", store, serve, tether.WithHandoffLimit(16<<10))
	b := newNode(t, "b", store, sessionEcho)
	p := lostProxy(t, a.addr())
	ev := newEvents()
	c := dial(t, "ws://"+p.Addr()+"/ws", ev.option())
	<-wrote
	p.SetTarget(b.addr())
	err := a.h.Shutdown(ctxT(t, 10*time.Second))
	require.ErrorContains(t, err, "1 sessions could not be handed over")
	require.Zero(t, a.h.Stats().HandedOver)
	sc := ev.next(t, tether.Connected, 10*time.Second) // the first
	require.NoError(t, sc.Cause)
	sc = ev.next(t, tether.Connected, 10*time.Second)
	require.ErrorIs(t, sc.Cause, tether.ErrSessionLost)
	_ = c
}

// A session id is no secret (polling carries it in the URL): a resume of a
// parked session that cannot show the session's secret neither takes the
// session nor runs serve for it under its own request. It gets a session
// of its own, and the client with the secret resumes the parked one.
func TestClusterHandoffNeedsTheSecret(t *testing.T) {
	t.Parallel()
	store := clustertest.NewStore(testLease)
	lg := newLedger()
	a := newNode(t, "a", store, lg.echo)
	b := newNode(t, "b", store, lg.echo)
	p := lostProxy(t, a.addr())
	ev := newEvents()
	tk := &talker{c: dial(t, "ws://"+p.Addr()+"/ws", ev.option())}
	tk.exchange(t, 5, 5*time.Second)
	id, _, _ := lg.onlySession(t)

	// The client cannot reconnect while the stranger tries.
	require.NoError(t, p.Refuse(true))
	p.SetTarget(b.addr())
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, a.h.Shutdown(ctx))
	require.Equal(t, uint64(1), a.h.Stats().HandedOver)

	h := http.Header{}
	h.Set("Tether-Session", id)
	h.Set("Tether-Secret", strings.Repeat("ab", 16))
	h.Set("Tether-Ack", "0")
	ws, _, err := websocket.Dial(ctx, "ws://"+b.addr()+"/ws", &websocket.DialOptions{
		Subprotocols: []string{tether.Subprotocol}, HTTPHeader: h,
	})
	require.NoError(t, err)
	_, hello, err := ws.Read(ctx)
	require.NoError(t, err)
	f, err := frame.Decode(hello)
	require.NoError(t, err)
	require.Equal(t, frame.Hello, f.Kind)
	require.NotEqual(t, id, hex.EncodeToString(f.Session[:]), "the stranger got the parked session")
	_ = ws.Close(websocket.StatusNormalClosure, "")
	require.Zero(t, b.h.Stats().TakenOver, "b took the parked session for a resume without its secret")

	require.NoError(t, p.Refuse(false))
	tk.exchange(t, 5, 10*time.Second)
	lg.mu.Lock()
	starts, handed := lg.starts[id], lg.handed[id]
	lg.mu.Unlock()
	require.Equal(t, 2, starts, "serve ran on a, then on b")
	require.Equal(t, 1, handed)
	wantMessages(t, lg.messages(id), 10)
	require.Equal(t, uint64(1), b.h.Stats().TakenOver)
	noLostSession(t, ev)
}
