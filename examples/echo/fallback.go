package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

// runFallback is the -fallback demo: a tether.Handler echo server (session
// mode) behind a proxy that does not pass WebSocket. The client falls back
// to HTTP long polling, and moves back to WebSocket once the proxy is fixed.
func runFallback(ctx context.Context, w io.Writer) (err error) {
	out := &printer{w: w}

	px := &proxy{out: out, refused: make(chan struct{}, 16)}
	px.blocked.Store(true)
	h := tether.NewHandler(echoSession)
	px.next = h
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: px, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = hs.Serve(ln)
	}()
	// The Handler ends its sessions and waits for them; then the HTTP
	// server waits, within a bound, for requests still in flight.
	defer func() {
		err = errors.Join(err, h.Close())
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if serr := hs.Shutdown(sctx); serr != nil {
			err = errors.Join(err, fmt.Errorf("server: %w", serr), hs.Close())
		}
		<-served
	}()
	url := "ws://" + ln.Addr().String()
	out.printf("server: tether.Handler echo on %s, behind a proxy that strips the Upgrade header", ln.Addr())

	changes := make(chan tether.StateChange, 64)
	hook := func(sc tether.StateChange) {
		switch {
		case sc.From == tether.Connected && sc.To == tether.Connected:
			out.printf("tether: probe succeeded, session moved to %v", sc.Transport)
		case sc.To == tether.Connected && sc.Cause != nil:
			out.printf("tether: connected over %v (attempt %d): %v", sc.Transport, sc.Attempt, sc.Cause)
		case sc.To == tether.Connected:
			out.printf("tether: connected over %v (attempt %d)", sc.Transport, sc.Attempt)
		case sc.To == tether.Reconnecting:
			out.printf("tether: reconnecting (cause: %v)", sc.Cause)
		case sc.To == tether.Closed && sc.Cause != nil:
			out.printf("tether: closed (cause: %v)", sc.Cause)
		case sc.To == tether.Closed:
			out.printf("tether: closed")
		}
		select {
		case changes <- sc:
		default:
		}
	}

	out.printf("tether: connecting to %s, with fallback to long polling", url)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := tether.Dial(dctx, url,
		// "" derives the polling URL from the dial URL: http://same host/.
		tether.WithFallback(""),
		// Probe WebSocket again every 300 ms or so while on polling (the
		// default starts at 3 s and grows to a minute).
		tether.WithProbeBackoff(func() backoff.BackOff {
			return backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(300*time.Millisecond),
				backoff.WithMaxInterval(time.Second),
				backoff.WithMaxElapsedTime(0),
			)
		}),
		tether.WithBackoff(func() backoff.BackOff {
			return backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(100*time.Millisecond),
				backoff.WithMaxInterval(time.Second),
				backoff.WithMaxElapsedTime(0),
			)
		}),
		tether.WithHandshakeTimeout(2*time.Second),
		tether.WithStateHook(hook),
	)
	if err != nil {
		return err
	}
	defer c.CloseNow()

	for i := 1; i <= 3; i++ {
		if err := echo(ctx, out, c, fmt.Sprintf("hello %d over %v", i, c.Transport())); err != nil {
			return err
		}
	}

	// Let the proxy refuse one of the background probes, then fix it.
	out.printf("client: on polling; tether keeps probing WebSocket in the background")
	for n := 0; n < 2; n++ { // the handshake that moved the Conn, then one probe
		select {
		case <-px.refused:
		case <-ctx.Done():
			return fmt.Errorf("waiting for a probe: %w", ctx.Err())
		}
	}
	out.printf("proxy: fixed, WebSocket handshakes pass again")
	px.blocked.Store(false)

	if err := awaitTransport(ctx, changes, tether.WebSocket); err != nil {
		return err
	}
	for i := 1; i <= 3; i++ {
		if err := echo(ctx, out, c, fmt.Sprintf("hello %d over %v", i, c.Transport())); err != nil {
			return err
		}
	}

	st := c.Stats()
	out.printf("stats: dials=%d sent=%d received=%d transport=%v", st.Dials, st.MessagesSent, st.MessagesReceived, st.Transport)
	out.printf("client: closing")
	return c.Close(websocket.StatusNormalClosure, "bye")
}

// echoSession is the Handler's serve function, run once per session: it
// echoes the client's messages whichever transport carries them.
func echoSession(ctx context.Context, s *tether.Session) {
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		if err := s.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

// awaitTransport waits for the Conn to move, while connected, to t.
func awaitTransport(ctx context.Context, changes <-chan tether.StateChange, t tether.Transport) error {
	for {
		select {
		case sc := <-changes:
			if sc.To == tether.Connected && sc.Transport == t {
				return nil
			}
			if sc.To == tether.Closed {
				return fmt.Errorf("conn closed while waiting for %v: %w", t, sc.Cause)
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for %v: %w", t, ctx.Err())
		}
	}
}

// proxy plays a reverse proxy that, while blocked, does not pass WebSocket:
// it drops the Upgrade and Connection headers, as many proxies do, so the
// Handler sees a plain GET and answers 426 instead of 101. Polling requests
// are plain HTTP and go through.
type proxy struct {
	next    http.Handler
	out     *printer
	blocked atomic.Bool
	n       atomic.Int32
	refused chan struct{} // one value per refused handshake, if there is room
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Upgrade") != "" {
		n := p.n.Add(1)
		if p.blocked.Load() {
			r.Header.Del("Upgrade")
			r.Header.Del("Connection")
			p.out.printf("proxy: WebSocket handshake %d refused (Upgrade header stripped)", n)
			select {
			case p.refused <- struct{}{}:
			default:
			}
		} else {
			p.out.printf("proxy: WebSocket handshake %d passed", n)
		}
	}
	p.next.ServeHTTP(w, r)
}
