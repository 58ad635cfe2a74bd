package tether

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
)

// ConnIDHeader is the request header that carries a Conn's id on every
// handshake, so that server logs can be matched with the client's.
const ConnIDHeader = "Tether-Conn-Id"

// Conn is a managed WebSocket connection. It has the methods of a
// *websocket.Conn, and keeps a link to the server alive underneath: a
// heartbeat finds dead links and a reconnect loop replaces them.
//
// A Conn is safe for concurrent use: Read calls are served one at a time,
// Write, Ping, State, Stats and Close may be called from any goroutine. One
// supervisor goroutine owns the link's life; at any instant at most one link
// carries data, and an old link is closed, its goroutines returned, before
// the next one is used.
type Conn struct {
	id   string
	url  string
	opts *options
	log  *slog.Logger

	// ctx lives as long as the Conn; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the supervisor has returned

	live atomic.Pointer[liveLink] // set while Writes may go straight through
	// server is what the server of a session told of its limits on the
	// last link's handshake; nil in plain mode.
	server atomic.Pointer[peerLimits]
	state  atomic.Int32

	rd *reader

	mu          sync.Mutex
	queue       sendQueue
	final       error // why the Conn ended; set once
	closing     bool  // Close or CloseNow was called
	closeCode   websocket.StatusCode
	closeWhy    string
	closeNow    bool
	readLimit   int64
	subproto    string
	transport   Transport
	stateSince  time.Time
	sess        *clientSession // session mode: the session, kept across links
	sessDropped bool           // the server ended sess: report it lost
	polling     bool           // the Conn has fallen back to long polling
	pollURL     *url.URL
	probes      chan *dialed // a successful WebSocket probe, while polling

	fallbackCause error           // why the Conn moved to polling; supervisor only
	backoff       backoff.BackOff // the delays between attempts; supervisor only

	closeReadCtx context.Context // set by the first CloseRead

	// wslot is held while a Writer is open (see Writer); writerOpen says
	// so without a lock, for Write.
	wslot      chan struct{}
	writerOpen atomic.Bool
	mw         *msgWriter // the Writer's, made on first use

	stats counters
}

// Dial connects to the WebSocket server at rawURL (ws, wss, http or https)
// and returns a Conn once the first link is up. ctx bounds the whole first
// connect, retries included. Dial returns early on a permanent error (a
// handshake answered 401, 403, 404 or 400, say) or when the retry policy
// gives up. ctx does not bound the Conn after Dial returns.
func Dial(ctx context.Context, rawURL string, opts ...Option) (*Conn, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	u, err := checkURL(rawURL)
	if err != nil {
		return nil, err
	}
	c := newConn(u, o)
	if o.fallback {
		if c.pollURL, err = pollURLFor(u, o.pollURL); err != nil {
			return nil, err
		}
	}
	first := make(chan error, 1)
	go c.run(ctx, first)
	if err := <-first; err != nil {
		<-c.done
		return nil, err
	}
	return c, nil
}

func newConn(u string, o *options) *Conn {
	c := &Conn{
		id:        newID(),
		url:       u,
		opts:      o,
		done:      make(chan struct{}),
		probes:    make(chan *dialed, 1),
		readLimit: o.readLimit,
	}
	c.log = o.logger.With(slog.String("conn_id", c.id))
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.queue.max = o.queueBytes
	c.rd = newReader()
	c.rd.onTake = c.took
	c.rd.conn = c
	c.stateSince = time.Now()
	return c
}

func checkURL(raw string) (string, error) {
	if strings.TrimSpace(raw) == "" {
		return "", fmt.Errorf("tether: Dial: empty URL: %w", ErrInvalidURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("tether: Dial: %w: %w", ErrInvalidURL, redactErr(err))
	}
	shown := redactURL(raw)
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	case "":
		return "", fmt.Errorf("tether: Dial: URL %q has no scheme (want ws, wss, http or https): %w", shown, ErrInvalidURL)
	default:
		return "", fmt.Errorf("tether: Dial: URL %q has unsupported scheme %q (want ws, wss, http or https): %w", shown, u.Scheme, ErrInvalidURL)
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", fmt.Errorf("tether: Dial: URL %q has no host: %w", shown, ErrInvalidURL)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("tether: Dial: URL %q has invalid port %q: %w", shown, p, ErrInvalidURL)
		}
	}
	return u.String(), nil
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ID returns the Conn's id: 16 hex digits, on every log record and sent to
// the server in the Tether-Conn-Id header of every handshake.
func (c *Conn) ID() string { return c.id }

// State returns the Conn's current state.
func (c *Conn) State() State { return State(c.state.Load()) }

// Transport returns the transport of the current (or last) link.
func (c *Conn) Transport() Transport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transport
}

// Subprotocol returns the subprotocol the server chose for the current (or
// last) link. It is tether.v1 only in session mode: a server that echoed
// tether.v1 without the Handler's Tether-Protocol mark does not speak it, and
// the link is plain, with no subprotocol.
func (c *Conn) Subprotocol() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subproto
}

// SetReadLimit sets the largest message Read accepts, on the current link
// and every later one, as websocket.Conn.SetReadLimit does.
func (c *Conn) SetReadLimit(n int64) {
	c.mu.Lock()
	c.readLimit = n
	c.mu.Unlock()
	if l := c.live.Load(); l != nil {
		switch ln := l.link.(type) {
		case *websocket.Conn:
			ln.SetReadLimit(n)
		case *sessionLink:
			if wf, ok := ln.t.(*wsFrames); ok {
				wf.ws.SetReadLimit(sessionReadLimit(n))
			}
		}
	}
}

func (c *Conn) currentReadLimit() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readLimit
}

// sessionReadLimit leaves room for the frame header in session mode.
func sessionReadLimit(n int64) int64 {
	if n < 0 {
		return n
	}
	return n + 64
}

// Ping sends a ping on the current link and waits for its pong. While the
// Conn is reconnecting, it waits for the next link. ctx bounds the call; a
// ping that times out does not close the link.
func (c *Conn) Ping(ctx context.Context) error {
	hook, _ := ctx.Value(onConnectKey{}).(*liveLink)
	for {
		l := c.live.Load()
		if l == nil && hook != nil && !hook.failed() {
			l = hook
		}
		if l == nil {
			if err := c.awaitLink(ctx); err != nil {
				return fmt.Errorf("tether: ping: %w", err)
			}
			continue
		}
		pctx, cancel := context.WithCancel(l.ctx)
		stop := context.AfterFunc(ctx, cancel)
		start := time.Now()
		err := l.Ping(pctx)
		stop()
		cancel()
		if err == nil {
			c.stats.recordRTT(time.Since(start))
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("tether: ping: %w", ctx.Err())
		}
		if l.ctx.Err() == nil && !l.failed() {
			return fmt.Errorf("tether: ping: %w", err)
		}
		// The link went away under the ping: try the next one.
	}
}

// CloseRead is for an application that writes and never reads. From now
// on, every message from the server is read and discarded, on this link and
// on every later one, so that pings are answered, pongs reach the heartbeat
// and the server's close frames are seen at once; Read fails. In session
// mode the discarded messages are acknowledged as if read.
//
// The returned ctx is derived from ctx and ends when the Conn is closed for
// good: by Close, by a permanent error (a close code such as 1008, say), or
// when the retry policy gives up. Unlike *websocket.Conn's CloseRead, a data
// message does not close the Conn, and ctx ending does not close it either.
// CloseRead may be called more than once; later calls return the first
// call's ctx.
//
// Without CloseRead, an application that never calls Read still gets its
// control frames handled while fewer than 1 MiB or 1024 messages wait unread
// (in session mode, up to the session's window); beyond that, the server is
// pushed back through TCP, the frames it sends after them wait until Read is
// called, and the heartbeat does not judge the link meanwhile.
func (c *Conn) CloseRead(ctx context.Context) context.Context {
	c.mu.Lock()
	if c.closeReadCtx != nil {
		rctx := c.closeReadCtx
		c.mu.Unlock()
		return rctx
	}
	rctx, cancel := context.WithCancel(ctx)
	c.closeReadCtx = rctx
	c.mu.Unlock()
	stop := context.AfterFunc(c.ctx, cancel)
	context.AfterFunc(rctx, func() { stop() })
	c.rd.closeRead()
	return rctx
}

// awaitLink waits until a link is live, the Conn ends, or ctx ends.
func (c *Conn) awaitLink(ctx context.Context) error {
	for {
		c.mu.Lock()
		if c.final != nil {
			err := c.final
			c.mu.Unlock()
			return err
		}
		if c.live.Load() != nil {
			c.mu.Unlock()
			return nil
		}
		room := c.queue.roomChan()
		c.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close closes the Conn with a close handshake on the current link, stops
// every goroutine, and waits for them. It is safe to call more than once and
// from several goroutines: later calls wait for the first and return an error
// wrapping net.ErrClosed. After Close, Read and Write return errors.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	return c.shutdown(code, reason, false)
}

// CloseNow closes the Conn without a close handshake, like Close otherwise.
func (c *Conn) CloseNow() error {
	return c.shutdown(websocket.StatusNormalClosure, "", true)
}

func (c *Conn) shutdown(code websocket.StatusCode, reason string, now bool) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		<-c.done
		return fmt.Errorf("tether: close: %w", net.ErrClosed)
	}
	c.closing = true
	c.closeCode, c.closeWhy, c.closeNow = code, reason, now
	c.mu.Unlock()
	c.cancel()
	<-c.done
	return nil
}

// errClosedLocally is the cause of a Conn ended by Close or CloseNow.
var errClosedLocally = fmt.Errorf("tether: closed: %w", net.ErrClosed)

// isClosedLocally reports whether err ended the Conn because of Close.
func isClosedLocally(err error) bool { return errors.Is(err, errClosedLocally) }
