package tether_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
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

// The cluster tests run several Handlers in one process on one in-memory
// directory (clustertest.Store), each on its own loopback HTTP server, as
// separate instances behind a load balancer would be. The tetherredis
// module runs the same kind of tests on a real Redis and a real nginx.

// testLease is the liveness lease of the tests' directories: short, so
// that a crashed instance is found dead quickly, and long enough that a
// renewal every third of it is never late on a loaded machine.
const testLease = 900 * time.Millisecond

// node is one Handler instance of a test cluster.
type node struct {
	name string
	h    *tether.Handler
	srv  *httptest.Server
	dir  *testDirectory
	url  string // the Handler's URL, http://127.0.0.1:port/ws
}

func (n *node) addr() string { return n.srv.Listener.Addr().String() }

// newNode starts a Handler on store, at /ws on a loopback server.
func newNode(t *testing.T, name string, store *clustertest.Store, serve func(ctx context.Context, s *tether.Session), opts ...tether.HandlerOption) *node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n := &node{name: name, url: "http://" + ln.Addr().String() + "/ws"}
	n.dir = &testDirectory{Cluster: store.Join(n.url)}
	all := append([]tether.HandlerOption{tether.WithCluster(n.dir)}, opts...)
	n.h = tether.NewHandler(serve, all...)
	mux := http.NewServeMux()
	mux.Handle("/ws", n.h)
	n.srv = httptest.NewUnstartedServer(mux)
	n.srv.Listener = ln
	n.srv.Start()
	t.Cleanup(n.stop)
	return n
}

// stop closes the Handler (a no-op after Shutdown) and the server.
func (n *node) stop() {
	_ = n.h.Close()
	n.srv.CloseClientConnections()
	n.srv.Close()
}

// crash kills the instance as a crash would, without Shutdown: its
// directory calls fail from now on (so it renews nothing) and its server
// stops, cutting every link. Its Handler's memory is left as it was.
func (n *node) crash() {
	n.dir.dead.Store(true)
	n.srv.CloseClientConnections()
	n.srv.Close()
}

// testDirectory is an instance's tether.Cluster, counting the lookups it
// makes, and able to play dead.
type testDirectory struct {
	tether.Cluster
	lookups   atomic.Int64
	dead      atomic.Bool
	parkDelay time.Duration // each Park takes this long more
}

var errDead = fmt.Errorf("test: instance crashed: %w", tether.ErrClusterUnavailable)

func (d *testDirectory) Claim(ctx context.Context, id tether.SessionID) (tether.Lease, error) {
	if d.dead.Load() {
		return tether.Lease{}, errDead
	}
	return d.Cluster.Claim(ctx, id)
}

func (d *testDirectory) Lookup(ctx context.Context, id tether.SessionID) (tether.Owner, error) {
	d.lookups.Add(1)
	if d.dead.Load() {
		return tether.Owner{}, errDead
	}
	return d.Cluster.Lookup(ctx, id)
}

func (d *testDirectory) Renew(ctx context.Context, leases []tether.Lease) ([]tether.SessionID, error) {
	if d.dead.Load() {
		return nil, errDead
	}
	return d.Cluster.Renew(ctx, leases)
}

func (d *testDirectory) Release(ctx context.Context, l tether.Lease, note []byte, ttl time.Duration) error {
	if d.dead.Load() {
		return errDead
	}
	return d.Cluster.Release(ctx, l, note, ttl)
}

func (d *testDirectory) Park(ctx context.Context, l tether.Lease, state []byte, ttl time.Duration) error {
	if d.dead.Load() {
		return errDead
	}
	time.Sleep(d.parkDelay)
	return d.Cluster.Park(ctx, l, state, ttl)
}

func (d *testDirectory) TakeParked(ctx context.Context, id tether.SessionID) (tether.Lease, []byte, error) {
	if d.dead.Load() {
		return tether.Lease{}, nil, errDead
	}
	return d.Cluster.TakeParked(ctx, id)
}

func (d *testDirectory) Leave(ctx context.Context) error {
	if d.dead.Load() {
		return errDead
	}
	return d.Cluster.Leave(ctx)
}

// ledger records, across instances, what the serve functions of a test
// did: sessions started, and the client's messages each session read.
type ledger struct {
	mu      sync.Mutex
	starts  map[string]int
	handed  map[string]int      // starts with HandedOver
	read    map[string][]string // messages read, per session
	stopErr map[string]error    // the Read error that ended each serve, last
	order   []string            // sessions, in the order they first started
}

func newLedger() *ledger {
	return &ledger{starts: map[string]int{}, handed: map[string]int{}, read: map[string][]string{}, stopErr: map[string]error{}}
}

// echo is a serve function: it echoes every message with "echo " in
// front, and on Shutdown writes "bye" before it returns.
func (lg *ledger) echo(ctx context.Context, s *tether.Session) {
	lg.mu.Lock()
	if lg.starts[s.ID()] == 0 {
		lg.order = append(lg.order, s.ID())
	}
	lg.starts[s.ID()]++
	if s.HandedOver() {
		lg.handed[s.ID()]++
	}
	lg.mu.Unlock()
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			lg.mu.Lock()
			lg.stopErr[s.ID()] = err
			lg.mu.Unlock()
			if errors.Is(err, tether.ErrShuttingDown) {
				_ = s.Write(ctx, websocket.MessageText, []byte("bye"))
			}
			return
		}
		lg.mu.Lock()
		lg.read[s.ID()] = append(lg.read[s.ID()], string(p))
		lg.mu.Unlock()
		if s.Write(ctx, typ, append([]byte("echo "), p...)) != nil {
			return
		}
	}
}

// sessions returns the sessions started, in order.
func (lg *ledger) sessions() []string {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	return append([]string(nil), lg.order...)
}

// sessionID parses a Session.ID.
func sessionID(t *testing.T, s string) tether.SessionID {
	t.Helper()
	var id tether.SessionID
	_, err := hex.Decode(id[:], []byte(s))
	require.NoError(t, err)
	return id
}

func itoa(n int) string { return strconv.Itoa(n) }

// onlySession returns the one session the ledger knows, with how many
// times serve started for it and how many of those were handed over.
func (lg *ledger) onlySession(t *testing.T) (id string, starts, handed int) {
	t.Helper()
	lg.mu.Lock()
	defer lg.mu.Unlock()
	require.Len(t, lg.starts, 1, "sessions started: %v", lg.starts)
	for id, n := range lg.starts {
		return id, n, lg.handed[id]
	}
	return "", 0, 0
}

// stopped returns the Read error that ended the serve of session id, if
// it has ended.
func (lg *ledger) stopped(id string) (error, bool) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	err, ok := lg.stopErr[id]
	return err, ok
}

func (lg *ledger) messages(id string) []string {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	return append([]string(nil), lg.read[id]...)
}

// talker is a client that sends numbered messages and checks that the
// echoes come back exactly once, in order.
type talker struct {
	c    *tether.Conn
	sent int
	got  int
	byes int
}

// exchange sends n messages and reads their echoes (and any "bye" a
// server writes on shutdown in between).
func (tk *talker) exchange(t *testing.T, n int, within time.Duration) {
	t.Helper()
	ctx := ctxT(t, within)
	for range n {
		tk.sent++
		msg := fmt.Sprintf("m%d", tk.sent)
		require.NoError(t, tk.c.Write(ctx, websocket.MessageText, []byte(msg)))
	}
	for tk.got < tk.sent {
		_, p, err := tk.c.Read(ctx)
		require.NoError(t, err, "waiting for echo of m%d", tk.got+1)
		if string(p) == "bye" {
			tk.byes++
			continue
		}
		tk.got++
		require.Equal(t, fmt.Sprintf("echo m%d", tk.got), string(p), "echoes exactly once, in order")
	}
}

// wantMessages checks that the session read m1..mN exactly once, in order.
func wantMessages(t *testing.T, got []string, n int) {
	t.Helper()
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("m%d", i+1)
	}
	require.Equal(t, want, got, "the serve functions read every message once, in order")
}

// roundRobin is an HTTP load balancer in front of several instances: each
// request goes to the next, in turn. With noUpgrade it strips the
// WebSocket upgrade, as a proxy that does not pass it does, so clients
// fall back to long polling and every poll lands on another instance.
type roundRobin struct {
	srv   *httptest.Server
	mu    sync.Mutex
	nodes []*node
	next  int
	hits  map[string]int
}

func newRoundRobin(t *testing.T, noUpgrade bool, nodes ...*node) *roundRobin {
	t.Helper()
	rr := &roundRobin{nodes: nodes, hits: map[string]int{}}
	tr := &http.Transport{Proxy: nil}
	proxy := &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			rr.mu.Lock()
			n := rr.nodes[rr.next%len(rr.nodes)]
			rr.next++
			rr.hits[n.name]++
			rr.mu.Unlock()
			u, _ := url.Parse(n.url)
			pr.SetURL(&url.URL{Scheme: u.Scheme, Host: u.Host})
			pr.Out.Host = pr.In.Host
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "balancer: "+err.Error(), http.StatusBadGateway)
		},
	}
	rr.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if noUpgrade {
			r.Header.Del("Upgrade")
			r.Header.Del("Connection")
		}
		proxy.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	rr.srv.Listener = ln
	rr.srv.Start()
	t.Cleanup(func() {
		rr.srv.CloseClientConnections()
		rr.srv.Close()
		tr.CloseIdleConnections()
	})
	return rr
}

func (rr *roundRobin) wsURL() string { return "ws" + strings.TrimPrefix(rr.srv.URL, "http") + "/ws" }

func (rr *roundRobin) hitsOf(name string) int {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return rr.hits[name]
}

// noLostSession fails if any transition of ev reported a lost session.
func noLostSession(t *testing.T, ev *events) {
	t.Helper()
	for _, sc := range ev.list() {
		require.NotErrorIs(t, sc.Cause, tether.ErrSessionLost, "no session lost: %v", sc)
	}
}
