package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tetherws/tether"
)

const serveUsage = `Usage: tether serve [flags]

Runs a local echo server on tether.Handler: tether clients get session mode
(over WebSocket, or HTTP long polling with "tether connect -fallback"),
plain WebSocket clients an echo over their connection. It prints the URL it
listens on to stdout, and what happens (sessions, drops) to stderr.

-drop and -strip-upgrade make it misbehave, to watch a client recover:
-drop 5s cuts every client connection every 5 s, as a flaky network would;
-strip-upgrade removes the Upgrade header from every request before the
Handler sees it, as a proxy that blocks WebSocket does.

SIGINT or SIGTERM shut it down gracefully: sessions are ended, clients told.

Flags:
`

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "`host:port` to listen on (port 0: any free port)")
	drop := fs.Duration("drop", 0, "cut every client connection at this interval; 0: never")
	strip := fs.Bool("strip-upgrade", false, "act as a proxy that blocks WebSocket: strip the Upgrade header")
	ttl := fs.Duration("session-ttl", tether.DefaultSessionTTL, "how long a session waits for its client to come back")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), serveUsage)
		fs.PrintDefaults()
	}
	pos, code := parseFlags(fs, args, stderr)
	if code >= 0 {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected arguments: %s", strings.Join(pos, " "))
	}
	if *drop < 0 || *ttl < 0 {
		return usageError(fs, stderr, "durations must not be negative")
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "tether serve: %v\n", err)
		return exitFailure
	}
	s := newEchoServer(stderr, *strip, *ttl)
	fmt.Fprintf(stdout, "listening on ws://%s/\n", ln.Addr())
	return s.run(ctx, ln, *drop)
}

// echoServer is the Handler behind "tether serve", with what it needs to
// drop connections and shut down.
type echoServer struct {
	log   *lineLog
	h     *tether.Handler
	strip bool

	mu    sync.Mutex
	conns map[net.Conn]struct{}        // every client connection, hijacked or not
	plain map[*tether.Session]struct{} // plain clients, which Handler.Close leaves open
}

func newEchoServer(stderr io.Writer, strip bool, ttl time.Duration) *echoServer {
	s := &echoServer{
		log:   &lineLog{w: stderr},
		strip: strip,
		conns: make(map[net.Conn]struct{}),
		plain: make(map[*tether.Session]struct{}),
	}
	s.h = tether.NewHandler(s.serve, tether.WithSessionTTL(ttl))
	return s
}

// serve echoes one client's messages for as long as its session lives.
func (s *echoServer) serve(ctx context.Context, ss *tether.Session) {
	plain := strings.HasPrefix(ss.ID(), "plain-")
	if plain {
		s.mu.Lock()
		s.plain[ss] = struct{}{}
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.plain, ss)
			s.mu.Unlock()
		}()
		s.log.printf("plain WebSocket client %s connected", ss.ID())
	} else {
		s.log.printf("session %s opened over %v", ss.ID(), ss.Transport())
	}
	n := 0
	for {
		typ, p, err := ss.Read(ctx)
		if err != nil {
			s.log.printf("session %s ended after %d messages: %v", ss.ID(), n, err)
			return
		}
		n++
		if err := ss.Write(ctx, typ, p); err != nil {
			s.log.printf("session %s ended after %d messages: %v", ss.ID(), n, err)
			return
		}
	}
}

func (s *echoServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.strip && r.Header.Get("Upgrade") != "" {
		r.Header.Del("Upgrade")
		r.Header.Del("Connection")
		s.log.printf("stripped the Upgrade header of a WebSocket handshake from %s", r.RemoteAddr)
	}
	s.h.ServeHTTP(w, r)
}

func (s *echoServer) run(ctx context.Context, ln net.Listener, drop time.Duration) int {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(&trackListener{Listener: ln, s: s}) }()

	var tick <-chan time.Time
	if drop > 0 {
		t := time.NewTicker(drop)
		defer t.Stop()
		tick = t.C
	}
	code := exitOK
loop:
	for {
		select {
		case <-tick:
			if n := s.dropAll(); n > 0 {
				s.log.printf("dropped %d client connections", n)
			}
		case err := <-served:
			s.log.printf("serve: %v", err)
			code = exitFailure
			break loop
		case <-ctx.Done():
			break loop
		}
	}
	s.log.printf("shutting down")
	s.shutdown(hs)
	s.log.printf("stopped")
	return code
}

// shutdown ends every session (clients are told the server is going away),
// then stops the HTTP server, waiting at most 5 s for requests in flight.
func (s *echoServer) shutdown(hs *http.Server) {
	s.mu.Lock()
	plain := make([]*tether.Session, 0, len(s.plain))
	for ss := range s.plain {
		plain = append(plain, ss)
	}
	s.mu.Unlock()
	for _, ss := range plain {
		_ = ss.Close(1001, "server shutting down")
	}
	_ = s.h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		_ = hs.Close()
	}
	s.dropAll()
}

// dropAll closes every client connection without a word, and returns how
// many there were.
func (s *echoServer) dropAll() int {
	s.mu.Lock()
	all := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	// Closed without the lock: a trackedConn takes it to leave the set.
	for _, c := range all {
		_ = c.Close()
	}
	return len(all)
}

// trackListener records the connections it accepts, so that they can be
// dropped even after the HTTP server has handed them to a WebSocket.
type trackListener struct {
	net.Listener
	s *echoServer
}

func (l *trackListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s    *echoServer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// lineLog prints timestamped lines, one writer at a time.
type lineLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}
