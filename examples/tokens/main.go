// Command tokens shows short-lived credentials with tether: a fresh token
// for every connection attempt, through WithHeader.
//
// An issuer hands out bearer tokens that live 400 ms. The server (plain
// coder/websocket) checks the token on every handshake, answering 401 to
// one it does not know or that has expired, and closes a link with the
// application's code 4001 ("token expired") when its token expires.
//
// The client asks the issuer for a token in WithHeader, which tether calls
// before every attempt, so a reconnect never presents a stale token. Close
// codes 4000-4999 are permanent by default; WithRetryPolicy makes 4001 a
// reason to reconnect. The link is renewed twice this way, with no message
// lost in between. Then the issuer revokes the client: the next token it
// hands out is already expired, the server answers 401, and the Conn stops
// at once, without retrying: Read returns the *tether.HandshakeError.
//
//	go run ./examples/tokens
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "give up if the demo takes longer")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tokens:", err)
		os.Exit(1)
	}
}

const (
	tokenTTL        = 400 * time.Millisecond
	codeTokenExpiry = websocket.StatusCode(4001)
	renewals        = 2
)

func run(ctx context.Context, w io.Writer) (err error) {
	out := &printer{w: w}
	iss := &issuer{expiries: make(map[string]time.Time)}
	srv, err := startServer(iss, out)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, srv.close()) }()
	out.printf("server: checks a bearer token on every handshake, on %s", srv.addr)

	// A fresh token for every attempt; an error here would count as a
	// failed attempt.
	var tokens atomic.Int32
	header := func(ctx context.Context) (http.Header, error) {
		tok := iss.issue()
		out.printf("client: token %d issued", tokens.Add(1))
		return http.Header{"Authorization": {"Bearer " + tok}}, nil
	}
	// The server's "token expired" close is worth a reconnect; everything
	// else keeps tether's verdict (a 401 stays permanent).
	retry := func(err error, retry bool) bool {
		if websocket.CloseStatus(err) == codeTokenExpiry {
			return true
		}
		return retry
	}
	changes := make(chan tether.StateChange, 16)
	hook := func(sc tether.StateChange) {
		switch sc.To {
		case tether.Connected:
			out.printf("tether: connected (attempt %d)", sc.Attempt)
		case tether.Reconnecting:
			out.printf("tether: reconnecting (%v)", sc.Cause)
		case tether.Closed:
			out.printf("tether: closed (%v)", sc.Cause)
		}
		changes <- sc
	}
	c, err := tether.Dial(ctx, "ws://"+srv.addr,
		tether.WithHeader(header),
		tether.WithRetryPolicy(retry),
		tether.WithStateHook(hook),
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }),
	)
	if err != nil {
		return err
	}
	defer c.CloseNow()

	// Echo a message on every link, the last one written while reconnecting.
	for i := 1; i <= renewals; i++ {
		if err := echo(ctx, c, out, fmt.Sprintf("hello %d", i)); err != nil {
			return err
		}
		if err := await(ctx, changes, tether.Reconnecting); err != nil {
			return err
		}
		if err := c.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf("written while renewing %d", i))); err != nil {
			return err
		}
		if err := await(ctx, changes, tether.Connected); err != nil {
			return err
		}
		_, p, err := c.Read(ctx)
		if err != nil {
			return err
		}
		out.printf("echo %q", p)
	}

	out.printf("issuer: revoking the client: its next token is already expired")
	iss.revoke()
	if err := await(ctx, changes, tether.Closed); err != nil {
		return err
	}
	_, _, err = c.Read(ctx)
	var he *tether.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("read after the revocation: got %v, want a 401 HandshakeError", err)
	}
	out.printf("read: %v", err)
	out.printf("server: refused %d handshake(s): no retry after a 401", srv.refused.Load())
	out.printf("tokens issued: %d, links: %d", tokens.Load(), srv.accepted.Load())
	return nil
}

func echo(ctx context.Context, c *tether.Conn, out *printer, msg string) error {
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return err
	}
	_, p, err := c.Read(ctx)
	if err != nil {
		return err
	}
	out.printf("echo %q", p)
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

// issuer hands out random bearer tokens that expire after tokenTTL.
type issuer struct {
	mu       sync.Mutex
	expiries map[string]time.Time
	revoked  bool
}

func (iss *issuer) issue() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	iss.mu.Lock()
	defer iss.mu.Unlock()
	exp := time.Now().Add(tokenTTL)
	if iss.revoked {
		exp = time.Now().Add(-time.Minute)
	}
	iss.expiries[tok] = exp
	return tok
}

func (iss *issuer) revoke() {
	iss.mu.Lock()
	iss.revoked = true
	iss.mu.Unlock()
}

// expiry returns when tok expires, or false for a token never issued.
func (iss *issuer) expiry(tok string) (time.Time, bool) {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	exp, ok := iss.expiries[tok]
	return exp, ok
}

// server is an echo server that wants a valid token.
type server struct {
	addr     string
	iss      *issuer
	out      *printer
	hs       *http.Server
	done     chan struct{}
	wg       sync.WaitGroup
	refused  atomic.Int32
	accepted atomic.Int32
}

func startServer(iss *issuer, out *printer) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{addr: ln.Addr().String(), iss: iss, out: out, done: make(chan struct{})}
	s.hs = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.hs.Serve(ln)
	}()
	return s, nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	exp, ok := s.iss.expiry(tok)
	if !ok || time.Now().After(exp) {
		s.refused.Add(1)
		s.out.printf("server: 401, the token has expired")
		http.Error(w, "token expired", http.StatusUnauthorized)
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	s.accepted.Add(1)
	s.wg.Add(1)
	defer s.wg.Done()
	defer c.CloseNow()
	// Echo on a goroutine of its own; the link lives as long as its token.
	ctx := context.Background()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, p); err != nil {
				return
			}
		}
	}()
	expired := time.NewTimer(time.Until(exp))
	defer expired.Stop()
	select {
	case <-expired.C:
		s.out.printf("server: token expired, closing the link with %d", codeTokenExpiry)
		_ = c.Close(codeTokenExpiry, "token expired")
		<-ended
	case <-ended:
	}
}

func (s *server) close() error {
	err := s.hs.Close()
	s.wg.Wait()
	<-s.done
	return err
}

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
