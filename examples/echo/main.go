// Command echo shows tether riding through dropped connections.
//
// It starts a coder/websocket echo server on 127.0.0.1 in the same process,
// dials it with tether, echoes a few messages, and then has the server drop
// the connection: first by closing it abruptly, then (with -drops 2 or more)
// by stopping and restarting the listener on the same port. Each time the
// client reconnects by itself, and a message written during the outage
// arrives once the link is back. It ends with the ping round-trip times from
// Stats and a clean close.
//
// With -fallback, the server is a tether.Handler behind a proxy that does not
// pass WebSocket: the client moves its session to HTTP long polling, and
// back to WebSocket once the proxy is fixed.
//
//	go run ./examples/echo
//	go run ./examples/echo -drops 4
//	go run ./examples/echo -fallback
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
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

func main() {
	drops := flag.Int("drops", 2, "how many times the server drops the connection")
	fallback := flag.Bool("fallback", false, "serve through a proxy that blocks WebSocket, then fix it")
	timeout := flag.Duration("timeout", 10*time.Second, "give up if the demo takes longer")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var err error
	if *fallback {
		err = runFallback(ctx, os.Stdout)
	} else {
		err = run(ctx, os.Stdout, *drops)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

// run is the whole demo; ctx bounds every step of it.
func run(ctx context.Context, w io.Writer, drops int) (err error) {
	out := &printer{w: w}

	srv, err := startServer()
	if err != nil {
		return err
	}
	// Shut the server down even when ctx has ended, within a bound of its own.
	defer func() { err = errors.Join(err, srv.stop(2*time.Second)) }()
	url := "ws://" + srv.addr
	out.printf("server: listening on %s", srv.addr)

	// The state hook runs on the Conn's supervisor goroutine and must return
	// quickly: print, then pass the change on without ever blocking.
	changes := make(chan tether.StateChange, 64)
	hook := func(sc tether.StateChange) {
		switch sc.To {
		case tether.Connected:
			out.printf("tether: connected (attempt %d)", sc.Attempt)
		case tether.Reconnecting:
			out.printf("tether: reconnecting (cause: %v)", sc.Cause)
		case tether.Closed:
			if sc.Cause != nil && !errors.Is(sc.Cause, net.ErrClosed) {
				out.printf("tether: closed (cause: %v)", sc.Cause)
			} else {
				out.printf("tether: closed")
			}
		}
		select {
		case changes <- sc:
		default:
		}
	}

	out.printf("tether: connecting to %s", url)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := tether.Dial(dctx, url,
		// Ping after 500 ms of quiet; replace a link whose pong takes over 1 s.
		tether.WithHeartbeat(500*time.Millisecond, time.Second),
		tether.WithHandshakeTimeout(2*time.Second),
		// A short exponential backoff, so that the demo reconnects quickly.
		tether.WithBackoff(func() backoff.BackOff {
			return backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(100*time.Millisecond),
				backoff.WithMaxInterval(time.Second),
				backoff.WithMaxElapsedTime(0),
			)
		}),
		tether.WithStateHook(hook),
	)
	if err != nil {
		return err
	}
	defer c.CloseNow() // after a successful Close, this is a no-op

	for i := 1; i <= 3; i++ {
		if err := echo(ctx, out, c, fmt.Sprintf("hello %d", i)); err != nil {
			return err
		}
	}

	for d := 1; d <= drops; d++ {
		// Odd drops close the server's side of the link abruptly; even ones
		// take the whole server down for a moment.
		restart := d%2 == 0
		if restart {
			out.printf("server: restarting on the same port")
			if err := srv.down(); err != nil {
				return err
			}
		} else {
			out.printf("server: dropping the connection")
			srv.dropAll()
		}

		if err := await(ctx, changes, tether.Reconnecting); err != nil {
			return err
		}
		// The Conn is between links: this Write waits in the send queue and
		// goes out, in order, on the next one.
		msg := fmt.Sprintf("written during outage %d", d)
		out.printf("client: writing %q while reconnecting", msg)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		if restart {
			// Let a few attempts find nobody listening before coming back.
			if err := pause(ctx, 400*time.Millisecond); err != nil {
				return err
			}
			if err := srv.up(); err != nil {
				return err
			}
			out.printf("server: listening again on %s", srv.addr)
		}
		if err := await(ctx, changes, tether.Connected); err != nil {
			return err
		}
		_, p, err := c.Read(ctx)
		if err != nil {
			return err
		}
		out.printf("echo %q arrived after the reconnect", p)
		if err := echo(ctx, out, c, fmt.Sprintf("hello again %d", d)); err != nil {
			return err
		}
	}

	// A quiet link gets a heartbeat ping every 500 ms; Ping sends one now.
	out.printf("client: idle; the heartbeat pings the quiet link")
	if err := awaitPing(ctx, c); err != nil {
		return err
	}
	start := time.Now()
	if err := c.Ping(ctx); err != nil {
		return err
	}
	out.printf("ping answered in %v", us(time.Since(start)))
	st := c.Stats()
	out.printf("rtt last=%v min=%v mean=%v max=%v", us(st.RTTLast), us(st.RTTMin), us(st.RTTMean), us(st.RTTMax))
	out.printf("stats: dials=%d reconnects=%d sent=%d received=%d heartbeat pings=%d answered=%d",
		st.Dials, st.Reconnects, st.MessagesSent, st.MessagesReceived, st.PingsSent, st.PingsAnswered)

	out.printf("client: closing")
	if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
		return err
	}
	return nil
}

// echo writes msg, reads the server's echo and prints the round trip.
func echo(ctx context.Context, out *printer, c *tether.Conn, msg string) error {
	start := time.Now()
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return err
	}
	_, p, err := c.Read(ctx)
	if err != nil {
		return err
	}
	if string(p) != msg {
		return fmt.Errorf("echo: sent %q, got %q", msg, p)
	}
	out.printf("echo %q in %v", p, us(time.Since(start)))
	return nil
}

// await waits for the Conn to reach state to.
func await(ctx context.Context, changes <-chan tether.StateChange, to tether.State) error {
	for {
		select {
		case sc := <-changes:
			if sc.To == to {
				return nil
			}
			if sc.To == tether.Closed {
				return fmt.Errorf("conn closed while waiting for %v: %w", to, sc.Cause)
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for %v: %w", to, ctx.Err())
		}
	}
}

// awaitPing waits until a heartbeat ping has been answered.
func awaitPing(ctx context.Context, c *tether.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	for c.Stats().PingsAnswered == 0 {
		if err := pause(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("waiting for a heartbeat ping: %w", err)
		}
	}
	return nil
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func us(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

// printer serialises lines from the main goroutine and the state hook.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// server is an echo server that can drop its connections and restart on the
// same port.
type server struct {
	addr string

	mu    sync.Mutex
	http  *http.Server // nil while down
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup // Serve loops and handlers
}

func startServer() (*server, error) {
	s := &server{conns: make(map[*websocket.Conn]struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

func (s *server) serve(ln net.Listener) {
	hs := &http.Server{Handler: http.HandlerFunc(s.handle), ReadHeaderTimeout: 5 * time.Second}
	s.mu.Lock()
	s.http = hs
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = hs.Serve(ln)
	}()
}

func (s *server) handle(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.CloseNow()
		s.wg.Done()
	}()
	// The request ctx is not tied to a hijacked connection: dropAll ends
	// this loop by closing c.
	ctx := context.Background()
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

// dropAll closes every connection without a close handshake, as a crashed
// server or a reset network would.
func (s *server) dropAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.CloseNow()
	}
}

// down stops listening and drops every connection.
func (s *server) down() error {
	s.mu.Lock()
	hs := s.http
	s.http = nil
	s.mu.Unlock()
	s.dropAll()
	if hs == nil {
		return nil
	}
	if err := hs.Close(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// up listens again on the same address.
func (s *server) up() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("server: listen again on %s: %w", s.addr, err)
	}
	s.serve(ln)
	return nil
}

// stop shuts the server down and waits, at most d, for its goroutines.
func (s *server) stop(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := s.down()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return err
	case <-ctx.Done():
		return errors.Join(err, fmt.Errorf("server: waiting for handlers: %w", ctx.Err()))
	}
}
