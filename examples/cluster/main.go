// Command cluster runs three tether Handler instances in one process, on
// one Redis, behind a small load balancer, and a client that talks to them
// through it while its link hops from instance to instance and every
// instance is restarted in turn, as a rolling deploy does. The session
// survives all of it: no message is lost or repeated, and the client never
// learns which instance it is on.
//
// A request that lands on an instance that does not hold its session is
// forwarded to the one that does; an instance that shuts down hands its
// sessions over through Redis, and the instance the client reaches next
// takes the session and runs serve for it again, with HandedOver true.
//
//	redis-server --port 6380 --save '' &
//	go run . -redis 127.0.0.1:6380
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/redis/go-redis/v9"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/tetherredis"
)

func main() {
	addr := flag.String("redis", "localhost:6379", "the Redis the instances share, host:port")
	timeout := flag.Duration("timeout", 10*time.Second, "give up if the demo takes longer")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, os.Stdout, *addr); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

// serve echoes every message, saying which instance answers and whether
// the session was handed over to it. On Shutdown it says goodbye: what
// serve writes before it returns is kept.
func serve(name string) func(ctx context.Context, s *tether.Session) {
	return func(ctx context.Context, s *tether.Session) {
		how := "new here"
		if s.HandedOver() {
			how = "handed over"
		}
		for {
			_, p, err := s.Read(ctx)
			if errors.Is(err, tether.ErrShuttingDown) {
				_ = s.Write(ctx, websocket.MessageText, []byte(name+": shutting down, handing the session over"))
				return
			}
			if err != nil {
				return
			}
			reply := fmt.Sprintf("%s: %s [session %s, %s]", name, p, s.ID()[:8], how)
			if s.Write(ctx, websocket.MessageText, []byte(reply)) != nil {
				return
			}
		}
	}
}

// instance is one Handler on its own HTTP server.
type instance struct {
	name string
	h    *tether.Handler
	srv  *http.Server
	ln   net.Listener
}

// start starts an instance at addr ("127.0.0.1:0" for a new port).
func start(name, addr string, rdb redis.UniversalClient) (*instance, error) {
	var ln net.Listener
	var err error
	for range 50 { // a restarted instance takes its old port back
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	// In a deployment this is the instance's own address as the others
	// reach it: the pod IP on Kubernetes.
	url := "http://" + ln.Addr().String() + "/ws"
	h := tether.NewHandler(serve(name), tether.WithCluster(tetherredis.New(rdb, url)))
	mux := http.NewServeMux()
	mux.Handle("/ws", h)
	in := &instance{name: name, h: h, ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = in.srv.Serve(ln) }()
	return in, nil
}

// shutdown hands the instance's sessions over, then stops its server.
func (in *instance) shutdown(ctx context.Context) (time.Duration, error) {
	begin := time.Now()
	err := in.h.Shutdown(ctx)
	took := time.Since(begin)
	_ = in.srv.Close()
	return took, err
}

func run(ctx context.Context, w io.Writer, redisAddr string) error {
	out := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis at %s: %w", redisAddr, err)
	}

	names := []string{"a", "b", "c"}
	ins := make([]*instance, len(names))
	for i, name := range names {
		in, err := start(name, "127.0.0.1:0", rdb)
		if err != nil {
			return err
		}
		ins[i] = in
	}
	defer func() {
		for _, in := range ins {
			_ = in.h.Close()
			_ = in.srv.Close()
		}
	}()
	out("three instances on the Redis at %s: a, b and c", redisAddr)

	lb, err := newBalancer()
	if err != nil {
		return err
	}
	defer lb.close()
	lb.route(ins[0].ln.Addr().String())

	c, err := tether.Dial(ctx, "ws://"+lb.addr()+"/ws",
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }))
	if err != nil {
		return err
	}
	defer c.CloseNow()
	n := 0
	talk := func() error {
		n++
		msg := fmt.Sprintf("hello %d", n)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		for {
			_, p, err := c.Read(ctx)
			if err != nil {
				return err
			}
			out("client: %q -> %s", msg, p)
			if strings.Contains(string(p), ": "+msg+" [") {
				return nil // the answer; a goodbye may come before it
			}
		}
	}

	out("\nthe balancer sends the client to a")
	if err := talk(); err != nil {
		return err
	}

	out("\nthe link drops; the balancer sends the client to b now")
	lb.route(ins[1].ln.Addr().String())
	lb.cut()
	if err := talk(); err != nil {
		return err
	}
	out("b forwarded the client's requests to a, which holds the session (b: %d forwarded)", ins[1].h.Stats().Forwarded)

	out("\nrolling restart, one instance at a time")
	for i := range ins {
		next := (i + 1) % len(ins)
		lb.route(ins[next].ln.Addr().String())
		old := ins[i]
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		took, err := old.shutdown(sctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: shutdown: %w", old.name, err)
		}
		out("%s: shut down in under %v, %d session handed over", old.name, roundUp(took), old.h.Stats().HandedOver)
		if ins[i], err = start(old.name, old.ln.Addr().String(), rdb); err != nil {
			return err
		}
		out("%s: started again", old.name)
		if err := talk(); err != nil {
			return err
		}
	}

	st := c.Stats()
	out("\n%d messages each way, each delivered once; the client reconnected %d times, and its session was never lost", n, st.Reconnects)
	return c.Close(websocket.StatusNormalClosure, "")
}

// roundUp rounds d up to a readable bound: 10 ms, 100 ms, 1 s, 10 s.
func roundUp(d time.Duration) time.Duration {
	for b := 10 * time.Millisecond; ; b *= 10 {
		if d < b {
			return b
		}
	}
}

// balancer is a minimal TCP load balancer: new connections go to the
// backend route set last, and cut drops every connection, as a balancer
// that moves a client between instances does.
type balancer struct {
	ln net.Listener

	mu      sync.Mutex
	backend string
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

func newBalancer() (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &balancer{ln: ln, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

func (b *balancer) addr() string { return b.ln.Addr().String() }

func (b *balancer) route(backend string) {
	b.mu.Lock()
	b.backend = backend
	b.mu.Unlock()
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

func (b *balancer) carry(c net.Conn) {
	defer b.wg.Done()
	b.mu.Lock()
	backend := b.backend
	b.conns[c] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		c.Close()
	}()
	up, err := net.DialTimeout("tcp", backend, time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

func (b *balancer) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		c.Close()
	}
}

func (b *balancer) close() {
	b.ln.Close()
	b.cut()
	b.wg.Wait()
}
