package tetherredis_test

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
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/tetherredis"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// The Handler tests run several tether Handlers in one process, each an
// instance with its own HTTP server on a loopback port and its own Redis
// client, on a real redis-server, behind a real balancer: a round-robin
// TCP balancer here, or nginx (handler_nginx_test.go).

// instance is one Handler of a test cluster.
type instance struct {
	name string
	h    *tether.Handler
	srv  *httptest.Server
	rdb  *redis.Client
	url  string // http://127.0.0.1:port/ws

	stopOnce sync.Once
}

func (in *instance) addr() string { return in.srv.Listener.Addr().String() }

// startInstance starts a Handler on srv's Redis, serving lg.echo.
func startInstance(t testing.TB, srv *redistest.Server, name string, lg *ledger, opts ...tether.HandlerOption) *instance {
	t.Helper()
	return startInstanceAt(t, srv, name, "127.0.0.1:0", lg, opts...)
}

// startInstanceAt is startInstance on the address addr: a new instance in
// the place of one that stopped, as a deploy restarts a server.
func startInstanceAt(t testing.TB, srv *redistest.Server, name, addr string, lg *ledger, opts ...tether.HandlerOption) *instance {
	t.Helper()
	return startServing(t, srv, name, addr, lg.echo, opts...)
}

// startServing starts an instance at addr that serves sessions with serve.
func startServing(t testing.TB, srv *redistest.Server, name, addr string, serve func(context.Context, *tether.Session), opts ...tether.HandlerOption) *instance {
	t.Helper()
	return startWith(t, srv, name, addr, []tetherredis.Option{tetherredis.WithLease(testLease), tetherredis.WithCallTimeout(testCallTimeout)}, serve, opts...)
}

// startLeased is startServing with a liveness lease of its own.
func startLeased(t testing.TB, srv *redistest.Server, name, addr string, lease time.Duration, serve func(context.Context, *tether.Session), opts ...tether.HandlerOption) *instance {
	t.Helper()
	return startWith(t, srv, name, addr, []tetherredis.Option{tetherredis.WithLease(lease), tetherredis.WithCallTimeout(testCallTimeout)}, serve, opts...)
}

// startDefaults is startServing with tetherredis's defaults (10 s lease,
// 1 s call timeout), as deployed: for the benchmarks.
func startDefaults(t testing.TB, srv *redistest.Server, name string, serve func(context.Context, *tether.Session)) *instance {
	t.Helper()
	return startWith(t, srv, name, "127.0.0.1:0", nil, serve)
}

// startWith starts an instance at addr, its tetherredis.Cluster made with
// copts, that serves sessions with serve.
func startWith(t testing.TB, srv *redistest.Server, name, addr string, copts []tetherredis.Option, serve func(context.Context, *tether.Session), opts ...tether.HandlerOption) *instance {
	t.Helper()
	var (
		ln  net.Listener
		err error
	)
	for range 50 { // the port was in use a moment ago
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{name: name, url: "http://" + ln.Addr().String() + "/ws"}
	in.rdb = redis.NewClient(&redis.Options{Addr: srv.Addr})
	c := tetherredis.New(in.rdb, in.url, copts...)
	all := append([]tether.HandlerOption{
		tether.WithCluster(c),
		tether.WithPollLimits(0, 0, 2*time.Second),
		tether.WithSessionTTL(time.Minute),
	}, opts...)
	in.h = tether.NewHandler(serve, all...)
	mux := http.NewServeMux()
	mux.Handle("/ws", in.h)
	in.srv = httptest.NewUnstartedServer(mux)
	in.srv.Listener = ln
	in.srv.Start()
	t.Cleanup(in.stop)
	return in
}

// stop closes the Handler (after a Shutdown, what it left), the server
// and the Redis client.
func (in *instance) stop() {
	in.stopOnce.Do(func() {
		_ = in.h.Close()
		in.srv.CloseClientConnections()
		in.srv.Close()
		_ = in.rdb.Close()
	})
}

// crash ends the instance as a crash would: no Shutdown, no goodbye to
// Redis. Its Redis client is closed, so it renews nothing from now on, and
// its server stops; the test cuts its links at the balancer.
func (in *instance) crash() {
	_ = in.rdb.Close()
	in.srv.CloseClientConnections()
	in.srv.Close()
}

// ledger records, across instances, what the serve functions did.
type ledger struct {
	mu     sync.Mutex
	starts map[string]int
	handed map[string]int
	read   map[string][]string
}

func newLedger() *ledger {
	return &ledger{starts: map[string]int{}, handed: map[string]int{}, read: map[string][]string{}}
}

// echo echoes every message with "echo " in front.
func (lg *ledger) echo(ctx context.Context, s *tether.Session) {
	lg.mu.Lock()
	lg.starts[s.ID()]++
	if s.HandedOver() {
		lg.handed[s.ID()]++
	}
	lg.mu.Unlock()
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
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

// check verifies every session the serve functions saw: started once plus
// once per handoff, and every message read exactly once, in order, from
// its client's first.
func (lg *ledger) check(t *testing.T, maxHandoffs int) map[string]int {
	return lg.checkFrom(t, maxHandoffs, true)
}

// checkFrom is check; unless fromOne, a session's messages may begin
// anywhere (a session opened in place of a lost one).
func (lg *ledger) checkFrom(t *testing.T, maxHandoffs int, fromOne bool) map[string]int {
	t.Helper()
	lg.mu.Lock()
	defer lg.mu.Unlock()
	for id, n := range lg.starts {
		if n != 1+lg.handed[id] {
			t.Errorf("session %s: serve started %d times, %d of them handed over", id, n, lg.handed[id])
		}
		if lg.handed[id] > maxHandoffs {
			t.Errorf("session %s: handed over %d times, at most %d expected", id, lg.handed[id], maxHandoffs)
		}
		msgs := lg.read[id]
		first := 1
		if len(msgs) > 0 && !fromOne {
			_, num, _ := strings.Cut(msgs[0], "-")
			first, _ = strconv.Atoi(num)
		}
		for i, m := range msgs {
			_, num, ok := strings.Cut(m, "-")
			if !ok || num != strconv.Itoa(first+i) {
				t.Errorf("session %s: message %d is %q, want number %d", id, i+1, m, first+i)
				break
			}
		}
	}
	return lg.starts
}

// talker is a client that writes numbered messages at a steady pace while
// another goroutine reads the echoes and checks they come back exactly
// once, in order.
type talker struct {
	name string
	c    *tether.Conn
	ev   *events

	mu      sync.Mutex
	sent    int
	got     int
	readErr error
	lost    int  // ErrSessionLost reported by Read
	resync  bool // a session was lost: the next echo sets the count

	stop chan struct{}
	wg   sync.WaitGroup
}

// fastRetry reconnects quickly: the tests cut links many times.
func fastRetry() backoff.BackOff { return backoff.NewConstantBackOff(30 * time.Millisecond) }

func newTalker(t *testing.T, name, url string, opts ...tether.Option) *talker {
	t.Helper()
	tk := &talker{name: name, ev: newEvents(), stop: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all := append([]tether.Option{tether.WithBackoff(fastRetry), tk.ev.option()}, opts...)
	c, err := tether.Dial(ctx, url, all...)
	if err != nil {
		t.Fatalf("%s: dial: %v", name, err)
	}
	tk.c = c
	t.Cleanup(func() { _ = c.CloseNow() })
	return tk
}

// run starts writing one message every pace, and reading.
func (tk *talker) run(pace time.Duration) {
	tk.wg.Add(2)
	go func() {
		defer tk.wg.Done()
		t := time.NewTicker(pace)
		defer t.Stop()
		for {
			select {
			case <-tk.stop:
				return
			case <-t.C:
			}
			tk.mu.Lock()
			tk.sent++
			msg := tk.name + "-" + strconv.Itoa(tk.sent)
			tk.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := tk.c.Write(ctx, websocket.MessageText, []byte(msg))
			cancel()
			if err != nil {
				tk.fail(fmt.Errorf("write %s: %w", msg, err))
				return
			}
		}
	}()
	go func() {
		defer tk.wg.Done()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, p, err := tk.c.Read(ctx)
			cancel()
			if errors.Is(err, tether.ErrSessionLost) {
				tk.mu.Lock()
				tk.lost++
				tk.resync = true
				tk.mu.Unlock()
				continue
			}
			if err != nil {
				select {
				case <-tk.stop:
				default:
					tk.fail(fmt.Errorf("read: %w", err))
				}
				return
			}
			tk.mu.Lock()
			if tk.resync {
				// What the client wrote to the lost session is lost with
				// it: the count goes on from the first echo of the new one.
				tk.resync = false
				_, num, _ := strings.Cut(string(p), "-")
				if n, err := strconv.Atoi(num); err == nil && n > tk.got {
					tk.got = n - 1
				}
			}
			tk.got++
			want := "echo " + tk.name + "-" + strconv.Itoa(tk.got)
			tk.mu.Unlock()
			if string(p) != want {
				tk.fail(fmt.Errorf("read %q, want %q", p, want))
				return
			}
		}
	}()
}

func (tk *talker) fail(err error) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if tk.readErr == nil {
		tk.readErr = err
	}
}

// finish stops writing, waits for the echoes of everything sent, and
// stops.
func (tk *talker) finish(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	tk.stopWriting()
	for {
		tk.mu.Lock()
		done, err, sent, got := tk.got >= tk.sent, tk.readErr, tk.sent, tk.got
		tk.mu.Unlock()
		if err != nil {
			t.Fatalf("%s: %v", tk.name, err)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d echoes within %v", tk.name, got, sent, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = tk.c.CloseNow()
	tk.wg.Wait()
}

var stopMu sync.Mutex

func (tk *talker) stopWriting() {
	stopMu.Lock()
	defer stopMu.Unlock()
	select {
	case <-tk.stop:
	default:
		close(tk.stop)
	}
}

// counts returns what was sent and echoed so far.
func (tk *talker) counts() (sent, got int) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	return tk.sent, tk.got
}

// lostCount returns how many lost sessions Read and the state hook
// reported.
func (tk *talker) lostCount() (read, hook int) {
	tk.mu.Lock()
	read = tk.lost
	tk.mu.Unlock()
	for _, sc := range tk.ev.list() {
		if errors.Is(sc.Cause, tether.ErrSessionLost) {
			hook++
		}
	}
	return read, hook
}

// events records state transitions.
type events struct {
	mu  sync.Mutex
	all []tether.StateChange
}

func newEvents() *events { return &events{} }

func (e *events) option() tether.Option {
	return tether.WithStateHook(func(sc tether.StateChange) {
		e.mu.Lock()
		e.all = append(e.all, sc)
		e.mu.Unlock()
	})
}

func (e *events) list() []tether.StateChange {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]tether.StateChange(nil), e.all...)
}

// balancer is a round-robin TCP load balancer: each new connection goes to
// the next backend in turn. Cut resets every link it carries, as a
// balancer restarting or a network blip does.
type balancer struct {
	ln net.Listener

	mu       sync.Mutex
	backends []string
	next     int
	links    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

func newBalancer(t testing.TB, backends ...string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, backends: backends, links: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *balancer) wsURL() string { return "ws://" + b.ln.Addr().String() + "/ws" }

// setBackends replaces the backends new connections go to; the links up
// stay.
func (b *balancer) setBackends(addrs ...string) {
	b.mu.Lock()
	b.backends = addrs
	b.mu.Unlock()
}

func (b *balancer) pick() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.backends) == 0 {
		return ""
	}
	a := b.backends[b.next%len(b.backends)]
	b.next++
	return a
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go b.carry(c)
	}
}

func (b *balancer) track(c net.Conn, on bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		if b.closed {
			return false
		}
		b.links[c] = struct{}{}
	} else {
		delete(b.links, c)
	}
	return true
}

func (b *balancer) carry(c net.Conn) {
	defer b.wg.Done()
	defer c.Close()
	var up net.Conn
	for range 3 { // a backend that refuses: the next one
		addr := b.pick()
		if addr == "" {
			return
		}
		var err error
		if up, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	if !b.track(c, true) {
		return
	}
	defer b.track(c, false)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = up.Close()
	<-done
}

// cut resets every link the balancer carries.
func (b *balancer) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.links {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

func (b *balancer) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cut()
	b.wg.Wait()
}
