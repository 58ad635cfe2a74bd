// Command chat shows session mode keeping a conversation whole while the
// server restarts.
//
// It starts, in one process, a chat room on a tether.Handler and three
// clients, alice, bob and carol, who take turns writing lines. Every line
// goes to the room, which numbers it and sends it to everyone. Midway the
// server restarts: its http.Server is shut down (the listener closes and
// every client's connection is cut) and started again on the same address,
// while the Handler, and the sessions it holds, live on. A line written
// while the server is down waits in its client's send queue; the clients
// reconnect and resume their sessions, each side replays what the other has
// not acknowledged, and in the end every client has every line exactly
// once, in the same order.
//
// (A process that restarts loses a Handler that lives in its memory: its
// clients are told, with ErrSessionLost. Keeping sessions across a
// process restart needs several instances sharing a directory.)
//
//	go run ./examples/chat
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

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/wsjson"
)

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "give up if the demo takes longer")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// line is what the room sends to every member: a numbered line.
type line struct {
	N    int    `json:"n"`
	From string `json:"from"`
	Text string `json:"text"`
}

// said is what a client sends to the room.
type said struct {
	From string `json:"from"`
	Text string `json:"text"`
}

var script = [][2]string{
	{"alice", "hi all"},
	{"bob", "hello alice"},
	{"carol", "hey both"},
	{"alice", "the server restarts in a moment"},
	// The server restarts here; these three are written while it is down.
	{"bob", "written while the server was down"},
	{"carol", "so was this"},
	{"alice", "and this"},
	{"bob", "all there?"},
	{"carol", "all there"},
}

const restartAfter = 4

func run(ctx context.Context, w io.Writer) (err error) {
	out := &printer{w: w}
	r := &room{members: make(map[*tether.Session]bool)}
	h := tether.NewHandler(r.serve)
	srv, err := listen(h)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.Close(), srv.down()) }()
	url := "ws://" + srv.addr
	out.printf("server: chat room on %s", srv.addr)

	names := []string{"alice", "bob", "carol"}
	clients := make(map[string]*client, len(names))
	for _, name := range names {
		cl, err := join(ctx, out, url, name, len(script))
		if err != nil {
			return err
		}
		defer cl.c.CloseNow()
		clients[name] = cl
	}

	for i, s := range script {
		if i == restartAfter {
			// Wait until everyone has the lines so far, so that the
			// restart comes at a known point of the conversation.
			for _, name := range names {
				if err := clients[name].await(ctx, i); err != nil {
					return err
				}
			}
			out.printf("server: restarting: listener closed, every connection cut; the Handler and its sessions live on")
			if err := srv.down(); err != nil {
				return err
			}
			for _, name := range names {
				if err := clients[name].awaitState(ctx, tether.Reconnecting); err != nil {
					return err
				}
			}
		}
		if i == restartAfter+3 {
			if err := srv.up(h); err != nil {
				return err
			}
			out.printf("server: listening again on %s", srv.addr)
			// The lines written during the outage come first.
			for _, name := range names {
				if err := clients[name].await(ctx, i); err != nil {
					return err
				}
			}
		}
		from, text := s[0], s[1]
		if err := wsjson.Write(ctx, clients[from].c, said{From: from, Text: text}); err != nil {
			return fmt.Errorf("%s: %w", from, err)
		}
		if i < restartAfter || i >= restartAfter+3 {
			// Turns are taken in order: the next line is written once this
			// one is back.
			if err := clients[from].await(ctx, i+1); err != nil {
				return err
			}
		}
	}

	for _, name := range names {
		if err := clients[name].await(ctx, len(script)); err != nil {
			return err
		}
	}
	want := clients[names[0]].transcript()
	for _, name := range names[1:] {
		if got := clients[name].transcript(); got != want {
			return fmt.Errorf("%s saw another conversation:\n%s\nthan %s:\n%s", name, got, names[0], want)
		}
	}
	out.printf("the conversation, as every client saw it:\n%s", want)
	out.printf("every client got all %d lines, each once, in the same order", len(script))
	for _, name := range names {
		if err := clients[name].c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
			return err
		}
		clients[name].wait()
	}
	return nil
}

// room is the chat room: every line a member says is numbered and sent to
// every member. A Session.Write while a member is away is kept for replay.
type room struct {
	mu      sync.Mutex
	n       int
	members map[*tether.Session]bool
}

func (r *room) serve(ctx context.Context, s *tether.Session) {
	r.mu.Lock()
	r.members[s] = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.members, s)
		r.mu.Unlock()
	}()
	for {
		var m said
		if err := wsjson.Read(ctx, s, &m); err != nil {
			if errors.Is(err, wsjson.ErrInvalidJSON) || errors.Is(err, wsjson.ErrNotText) {
				continue
			}
			return
		}
		r.mu.Lock()
		r.n++
		l := line{N: r.n, From: m.From, Text: m.Text}
		for member := range r.members {
			// Under the lock, so that every member gets the lines in the
			// same order.
			_ = wsjson.Write(ctx, member, l)
		}
		r.mu.Unlock()
	}
}

// client is one member of the room.
type client struct {
	name    string
	c       *tether.Conn
	out     *printer
	changes chan tether.StateChange
	done    chan struct{}

	mu    sync.Mutex
	lines []line
	more  chan struct{} // closed when a line arrives
}

func join(ctx context.Context, out *printer, url, name string, expect int) (*client, error) {
	cl := &client{name: name, out: out, changes: make(chan tether.StateChange, 64), done: make(chan struct{}), more: make(chan struct{})}
	hook := func(sc tether.StateChange) {
		switch {
		case sc.To == tether.Reconnecting:
			out.printf("%s: reconnecting (%v)", name, sc.Cause)
		case sc.From == tether.Reconnecting && sc.To == tether.Connected && sc.Cause == nil:
			out.printf("%s: reconnected, session resumed", name)
		case sc.To == tether.Connected && sc.Cause != nil:
			out.printf("%s: connected: %v", name, sc.Cause)
		}
		select {
		case cl.changes <- sc:
		default:
		}
	}
	c, err := tether.Dial(ctx, url,
		tether.WithStateHook(hook),
		// Quick retries, so that the demo does not wait long.
		tether.WithBackoff(func() backoff.BackOff {
			return backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(50*time.Millisecond),
				backoff.WithMaxInterval(500*time.Millisecond),
				backoff.WithMaxElapsedTime(0),
			)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if c.Subprotocol() != tether.Subprotocol {
		c.CloseNow()
		return nil, fmt.Errorf("%s: the server did not take session mode", name)
	}
	cl.c = c
	out.printf("%s: joined (session mode)", name)
	go cl.read()
	return cl, nil
}

// read takes the room's lines until the Conn is closed.
func (cl *client) read() {
	defer close(cl.done)
	for {
		var l line
		if err := wsjson.Read(context.Background(), cl.c, &l); err != nil {
			if errors.Is(err, wsjson.ErrInvalidJSON) || errors.Is(err, wsjson.ErrNotText) {
				continue
			}
			return
		}
		cl.mu.Lock()
		cl.lines = append(cl.lines, l)
		close(cl.more)
		cl.more = make(chan struct{})
		cl.mu.Unlock()
		if cl.name == "alice" {
			cl.out.printf("  #%d %s: %s", l.N, l.From, l.Text)
		}
	}
}

// await waits until the client has n lines.
func (cl *client) await(ctx context.Context, n int) error {
	for {
		cl.mu.Lock()
		have, more := len(cl.lines), cl.more
		cl.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-more:
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for line %d: %w", cl.name, n, ctx.Err())
		}
	}
}

// awaitState waits for the client's Conn to reach state to.
func (cl *client) awaitState(ctx context.Context, to tether.State) error {
	for {
		select {
		case sc := <-cl.changes:
			if sc.To == to {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %v: %w", cl.name, to, ctx.Err())
		}
	}
}

func (cl *client) transcript() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var b strings.Builder
	for _, l := range cl.lines {
		fmt.Fprintf(&b, "  #%d %s: %s\n", l.N, l.From, l.Text)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func (cl *client) wait() { <-cl.done }

// printer serialises lines from several goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// server is the http.Server in front of the Handler: it can go down, cutting
// every connection, and come back on the same address.
type server struct {
	addr string

	mu    sync.Mutex
	hs    *http.Server // nil while down
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func listen(h http.Handler) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{addr: ln.Addr().String(), conns: make(map[net.Conn]struct{})}
	s.serve(ln, h)
	return s, nil
}

func (s *server) serve(ln net.Listener, h http.Handler) {
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		// WebSocket connections are hijacked: the http.Server forgets them,
		// so the server tracks every connection itself, to cut it.
		ConnState: func(c net.Conn, st http.ConnState) {
			s.mu.Lock()
			defer s.mu.Unlock()
			switch st {
			case http.StateNew:
				s.conns[c] = struct{}{}
			case http.StateClosed:
				delete(s.conns, c)
			}
		},
	}
	s.mu.Lock()
	s.hs = hs
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = hs.Serve(ln)
	}()
}

// down closes the listener and cuts every connection.
func (s *server) down() error {
	s.mu.Lock()
	hs := s.hs
	s.hs = nil
	conns := s.conns
	s.conns = make(map[net.Conn]struct{})
	s.mu.Unlock()
	if hs == nil {
		return nil
	}
	err := hs.Close()
	for c := range conns {
		_ = c.Close()
	}
	s.wg.Wait()
	return err
}

// up listens again on the same address.
func (s *server) up(h http.Handler) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("server: listen again on %s: %w", s.addr, err)
	}
	s.serve(ln, h)
	return nil
}
