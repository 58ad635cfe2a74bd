package tether

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
)

// run is the supervisor: it owns the link's life from the first connect to
// the end of the Conn. Every state change happens here. first receives the
// outcome of the first connect, which dialCtx bounds.
func (c *Conn) run(dialCtx context.Context, first chan<- error) {
	defer close(c.done)

	fctx, cancel := context.WithCancelCause(c.ctx)
	stop := context.AfterFunc(dialCtx, func() { cancel(dialCtx.Err()) })
	l, err := c.connect(fctx, Connecting, nil, true)
	stop()
	cancel(nil)
	if err != nil {
		c.finish(err)
		first <- err
		return
	}
	first <- nil

	up := time.Now() // when the current link came up
	for {
		cause := c.heartbeat(l)
		if l.failed() && cause == l.err {
			if closed := l.settle(); closed != nil {
				// The server's close, which a write that raced it hid.
				cause = newLostError(l.transport, closed)
			} else if l.foreign != nil {
				// In the words of the network, with 1006 for a link that
				// ended without a close frame.
				cause = newLostError(l.transport, l.foreign)
			}
		}
		if errors.Is(cause, websocket.ErrMessageTooBig) {
			// The message is gone with its link; the application is told
			// once, and the reconnects that follow are spaced by the
			// backoff, since such a link does not prove itself.
			c.rd.reportTooBig(l, fmt.Errorf("tether: read: a message from the server was over the read limit of %d bytes and was dropped with its link: %w",
				c.currentReadLimit(), websocket.ErrMessageTooBig))
		}
		if c.ctx.Err() != nil {
			c.retire(l, true)
			if p := c.takeProbe(); p != nil {
				_ = p.ws.CloseNow()
			}
			c.finish(errClosedLocally)
			return
		}
		c.retire(l, false)
		if ws := c.takeProbe(); ws != nil {
			nl, err := c.upgrade(ws)
			if err == nil {
				l, up = nl, time.Now()
				continue
			}
			cause = err
		}
		if v := c.decide(cause); !v.retry {
			c.logf(slog.LevelWarn, "link lost for good", l.transport, 0, slog.Any("cause", cause), slog.String("rule", v.rule))
			c.finish(cause)
			return
		}
		c.logf(slog.LevelInfo, "link lost, reconnecting", l.transport, 0, slog.Any("cause", cause))
		c.setState(Reconnecting, cause, 0)
		proven := time.Since(up) >= linkProven
		if l, err = c.connect(c.ctx, Reconnecting, cause, proven); err != nil {
			c.finish(err)
			return
		}
		up = time.Now()
	}
}

// linkProven is how long a link must stay up for the backoff to start over
// after it is lost. A server that accepts links and drops them at once (a
// retryable close code, a crash loop) sees the delays grow instead of a
// reconnect a second from every client.
const linkProven = 10 * time.Second

// tryAgainLater is the least delay after a 1013 close (Try Again Later), the
// WebSocket form of a Retry-After; the delay is drawn up to twice that, so
// that clients told together come back apart.
const tryAgainLater = 5 * time.Second

// connect makes attempts, with backoff between them, until a link is up and
// its OnConnect hook has run and the send queue has been flushed. ctx bounds
// it. After a lost link (cause non-nil) the first attempt waits one backoff
// step too, so that a crowd of clients dropped together spreads out. The
// backoff goes on from where the last outage left it, unless fresh: the
// first connect, or the lost link had proved itself (see linkProven).
func (c *Conn) connect(ctx context.Context, from State, cause error, fresh bool) (*liveLink, error) {
	if c.backoff == nil {
		c.backoff = c.opts.newBackoff()
		fresh = true
	}
	b := c.backoff
	if fresh {
		b.Reset()
	}
	var lastErr error
	blocked := 0
	now := false // the next attempt goes at once: it is over another transport
	for attempt := 1; ; attempt++ {
		if (cause != nil || attempt > 1) && !now {
			d := b.NextBackOff()
			if d == backoff.Stop {
				return nil, &GiveUpError{Attempts: attempt - 1, Err: firstErr(lastErr, cause)}
			}
			var he *HandshakeError
			if errors.As(lastErr, &he) && he.RetryAfter > 0 {
				if he.handler && he.StatusCode == http.StatusServiceUnavailable {
					// A tether Handler's own "try again": a session moving
					// between instances, a directory catching up, an owner
					// that stopped answering. It passes in moments, and
					// the client of a crashed instance learns its session
					// is lost only by asking again once the owner's lease
					// has run out: the Handler's delay, drawn up to twice
					// it so that its clients come back apart, replaces a
					// backoff grown meanwhile.
					d = he.RetryAfter + rand.N(he.RetryAfter)
				} else if he.RetryAfter > d {
					d = he.RetryAfter
				}
			}
			if websocket.CloseStatus(firstErr(lastErr, cause)) == websocket.StatusTryAgainLater {
				d = max(d, tryAgainLater+rand.N(tryAgainLater))
			}
			if err := sleep(ctx, d); err != nil {
				return nil, c.abortErr(ctx, lastErr)
			}
		}
		c.stats.dials.Add(1)
		viaPolling := c.onPolling()
		l, err := aside(func() (*liveLink, error) { return c.attempt(ctx) })
		if err == nil {
			if from == Reconnecting {
				c.stats.reconnects.Add(1)
			}
			c.setState(Connected, c.connectCause(l), attempt)
			c.logf(slog.LevelInfo, "connected", l.transport, attempt)
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, c.abortErr(ctx, err)
		}
		lastErr = err
		now = false
		c.stats.countFailure(err)
		if c.opts.fallback && !viaPolling {
			switch {
			case fallsBackAtOnce(err):
				c.logf(slog.LevelWarn, "WebSocket is refused on this path: moving to long polling", WebSocket, attempt, slog.Any("err", err))
				c.setPolling(true)
				c.fallbackCause = fmt.Errorf("tether: moved to long polling: %w", err)
				blocked, now = 0, true
			case blocksWebSocket(err):
				blocked++
			default:
				blocked = 0
			}
			if blocked >= fallbackAfter {
				c.logf(slog.LevelWarn, "WebSocket looks blocked on this path: moving to long polling", WebSocket, attempt, slog.Any("err", err))
				c.setPolling(true)
				c.fallbackCause = fmt.Errorf("tether: moved to long polling after %d blocked handshakes: %w", fallbackAfter, err)
				blocked = 0
			}
		}
		var he *HandshakeError
		if viaPolling && errors.As(err, &he) && he.StatusCode >= 400 && he.StatusCode < 500 &&
			he.StatusCode != http.StatusTooManyRequests {
			// The polling path answers but refuses: try WebSocket again.
			c.setPolling(false)
		}
		v := c.decide(err)
		tr := WebSocket
		if viaPolling {
			tr = Polling
		}
		c.logf(slog.LevelWarn, "connect attempt failed", tr, attempt, slog.Bool("retry", v.retry), slog.Any("err", err), slog.String("rule", v.rule))
		if !v.retry {
			return nil, err
		}
		if max := c.opts.maxRetries; max > 0 && attempt >= max {
			return nil, &GiveUpError{Attempts: attempt, Err: err}
		}
	}
}

// connectCause is what a Connected transition reports: a lost session, or
// the move to long polling.
func (c *Conn) connectCause(l *liveLink) error {
	if sl, ok := l.link.(*sessionLink); ok && sl.lost != nil {
		return sl.lost
	}
	if l.transport == Polling && c.fallbackCause != nil {
		err := c.fallbackCause
		c.fallbackCause = nil
		return err
	}
	return nil
}

// takeProbe returns a WebSocket that a probe opened while the Conn was on
// long polling, if any.
func (c *Conn) takeProbe() *dialed {
	select {
	case p := <-c.probes:
		return p
	default:
		return nil
	}
}

// aside runs fn on a goroutine of its own and waits for it. Dialing goes
// deep (HTTP, TLS, the hooks); done aside, it leaves the supervisor, which
// lives as long as the Conn, with a small stack.
func aside(fn func() (*liveLink, error)) (*liveLink, error) {
	type result struct {
		l   *liveLink
		err error
	}
	ch := make(chan result, 1)
	go func() {
		l, err := fn()
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// upgrade moves the session from long polling back onto the WebSocket a
// probe opened.
func (c *Conn) upgrade(p *dialed) (*liveLink, error) {
	return aside(func() (*liveLink, error) { return c.upgradeTo(p) })
}

func (c *Conn) upgradeTo(p *dialed) (*liveLink, error) {
	l, err := c.adopt(c.ctx, p)
	if err != nil {
		return nil, err
	}
	if err := c.bringUp(c.ctx, l); err != nil {
		return nil, err
	}
	c.setPolling(false)
	c.logf(slog.LevelInfo, "moved back to WebSocket", WebSocket, 0)
	c.transportChanged(WebSocket)
	return l, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// abortErr is the error of a connect cut short by its ctx.
func (c *Conn) abortErr(ctx context.Context, last error) error {
	if c.ctx.Err() != nil {
		return errClosedLocally
	}
	if last != nil {
		return fmt.Errorf("tether: connect to %s: %w (last attempt: %v)", redactURL(c.url), context.Cause(ctx), last)
	}
	return fmt.Errorf("tether: connect to %s: %w", redactURL(c.url), context.Cause(ctx))
}

// logf writes a record with the conn id (already on c.log), the transport
// and the attempt.
func (c *Conn) logf(level slog.Level, msg string, t Transport, attempt int, attrs ...slog.Attr) {
	if !c.log.Enabled(context.Background(), level) {
		return
	}
	attrs = append(attrs, slog.String("transport", t.String()), slog.Int("attempt", attempt))
	c.log.LogAttrs(context.Background(), level, msg, attrs...)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// attempt opens one link, runs the OnConnect hook, and flushes the send
// queue.
func (c *Conn) attempt(ctx context.Context) (*liveLink, error) {
	var (
		l   *liveLink
		err error
	)
	if c.onPolling() {
		l, err = c.openPolling(ctx)
	} else {
		var d *dialed
		if d, err = c.dial(ctx); err == nil {
			l, err = c.adopt(ctx, d)
		}
	}
	if err != nil {
		return nil, err
	}
	return l, c.bringUp(ctx, l)
}

// bringUp makes l the link that Read uses, runs the OnConnect hook, and
// sends the queue before l takes direct writes.
func (c *Conn) bringUp(ctx context.Context, l *liveLink) error {
	c.mu.Lock()
	c.transport = l.transport
	c.mu.Unlock()
	c.rd.setLink(l)
	if sl, ok := l.link.(*sessionLink); ok {
		if err := sl.replay(l.ctx); err != nil {
			c.retire(l, false)
			return err
		}
	}
	if fn := c.opts.onConnect; fn != nil {
		hctx := context.WithValue(ctx, onConnectKey{}, l)
		if err := fn(hctx, c); err != nil {
			c.retire(l, false)
			return &hookError{hook: "OnConnect", err: err}
		}
	}
	if err := c.flush(l); err != nil {
		c.retire(l, false)
		return fmt.Errorf("tether: sending queued messages: %w", err)
	}
	return nil
}

// adopt turns a fresh WebSocket into a link: in session mode it takes the
// server's Hello and resumes the session.
func (c *Conn) adopt(ctx context.Context, d *dialed) (*liveLink, error) {
	ws, resp := d.ws, d.resp
	session := ws.Subprotocol() == Subprotocol && resp != nil && resp.Header.Get(headerProtocol) == Subprotocol
	c.mu.Lock()
	limit := c.readLimit
	c.subproto = ws.Subprotocol()
	if !session && c.subproto == Subprotocol {
		// A server that echoed tether.v1 without speaking it (one that
		// picks the first subprotocol offered): plain mode, and no
		// subprotocol the application could act on.
		c.subproto = ""
	}
	c.mu.Unlock()
	if !session {
		c.server.Store(nil)
		ws.SetReadLimit(limit)
		l := newLiveLink(c.ctx, ws, WebSocket)
		l.watch, l.gate = d.watch, d.gate
		l.wsem = make(chan struct{}, 1)
		l.readAhead = window{bytes: plainReadAhead, msgs: plainReadAheadMsgs}
		return l, nil
	}
	ws.SetReadLimit(sessionReadLimit(limit))
	wf := &wsFrames{ws: ws}
	hctx := ctx
	if d := c.opts.handshakeTimeout; d > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	hello, err := wf.readFrame(hctx)
	if err != nil {
		_ = ws.CloseNow()
		if code := websocket.CloseStatus(err); code != -1 && code != websocket.StatusTryAgainLater {
			// The server closed instead of greeting: the session it was
			// asked to resume has ended. (1013 says it is busy: try again
			// later, with the session.)
			c.dropSession()
			return nil, fmt.Errorf("tether: session ended by the server: %w", err)
		}
		return nil, fmt.Errorf("%w: %w", errNoHello, err)
	}
	sl, err := c.startSession(wf, hello, parseLimits(resp.Header))
	if err != nil {
		_ = ws.CloseNow()
		return nil, err
	}
	l := newLiveLink(c.ctx, sl, WebSocket)
	l.watch = d.watch
	l.readAhead = sl.s.ahead
	sl.live = l
	return l, nil
}

// openPolling opens a long-polling link for the Conn's session.
func (c *Conn) openPolling(ctx context.Context) (*liveLink, error) {
	t, hello, err := c.openPoll(ctx)
	if err != nil {
		return nil, err
	}
	sl, err := c.startSession(t, hello, t.limits)
	if err != nil {
		return nil, err
	}
	seq := sl.s.seq
	t.start(func() uint64 {
		seq.mu.Lock()
		defer seq.mu.Unlock()
		return seq.taken
	}, func(ack uint64) {
		seq.mu.Lock()
		defer seq.mu.Unlock()
		seq.acked(ack)
	})
	l := newLiveLink(c.ctx, sl, Polling)
	l.readAhead = sl.s.ahead
	sl.live = l
	return l, nil
}

func (c *Conn) onPolling() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.polling
}

func (c *Conn) setPolling(on bool) {
	c.mu.Lock()
	c.polling = on
	c.mu.Unlock()
}

// addHeaders adds WithHeader's headers, the conn id and, in session mode,
// what resumes the session.
func (c *Conn) addHeaders(ctx context.Context, h http.Header) error {
	if c.opts.header != nil {
		extra, err := c.opts.header(ctx)
		if err != nil {
			return &hookError{hook: "WithHeader", err: err}
		}
		for k, vs := range extra {
			for _, v := range vs {
				h.Add(k, v)
			}
		}
	}
	h.Set(ConnIDHeader, c.id)
	if !c.opts.noSession {
		// A Handler refuses, at Session.Write, what the client would
		// refuse on every link.
		if limit := c.currentReadLimit(); limit >= 0 {
			h.Set(headerReadLimit, strconv.FormatInt(limit, 10))
		}
	}
	c.resumeHeaders(h)
	return nil
}

// dialed is the outcome of a WebSocket handshake.
type dialed struct {
	ws    *websocket.Conn
	resp  *http.Response
	watch *watchConn // nil when the dial was not tether's own
	gate  *writeGate // nil when the dial was not tether's own
}

// dial makes one WebSocket handshake, bounded by the handshake timeout.
func (c *Conn) dial(ctx context.Context) (*dialed, error) {
	if d := c.opts.handshakeTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var (
		ws   *websocket.Conn
		resp *http.Response
		err  error
		slot *watchSlot
	)
	if c.opts.dialFunc != nil {
		ws, resp, err = c.opts.dialFunc(ctx, c.url)
	} else {
		var do websocket.DialOptions
		if c.opts.dialOpts != nil {
			do = *c.opts.dialOpts
		}
		do.HTTPHeader = do.HTTPHeader.Clone()
		if do.HTTPHeader == nil {
			do.HTTPHeader = http.Header{}
		}
		if err := c.addHeaders(ctx, do.HTTPHeader); err != nil {
			return nil, err
		}
		if do.HTTPClient == nil {
			if u, perr := url.Parse(c.url); perr == nil {
				slot = &watchSlot{target: watchTarget(u)}
				ctx = context.WithValue(ctx, watchKey{}, slot)
				do.HTTPClient = watchClient
			}
		} else {
			do.HTTPClient = guardedClient(do.HTTPClient)
		}
		if !c.opts.noSession {
			// Offered last: some servers pick the client's first
			// subprotocol.
			do.Subprotocols = append(append([]string(nil), do.Subprotocols...), Subprotocol)
		}
		ws, resp, err = websocket.Dial(ctx, c.url, &do)
	}
	if err != nil {
		err = redactErr(err)
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, &HandshakeError{
				StatusCode: resp.StatusCode,
				RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
				Err:        err,
				handler:    resp.Header.Get(headerProtocol) == Subprotocol,
			}
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return nil, fmt.Errorf("tether: %w after %v: %w", errHandshakeTimeout, c.opts.handshakeTimeout, err)
		}
		return nil, fmt.Errorf("tether: dial: %w", err)
	}
	d := &dialed{ws: ws, resp: resp}
	if slot != nil {
		d.watch, d.gate = slot.conn, slot.gate
	}
	return d, nil
}

// retire takes l out of use: no Read or Write reaches it any more, it is
// closed (gracefully when the Conn is closing), and its goroutines have
// returned.
func (c *Conn) retire(l *liveLink, closing bool) {
	c.live.CompareAndSwap(l, nil)
	c.rd.clearLink(l)
	c.mu.Lock()
	code, why, now := c.closeCode, c.closeWhy, c.closeNow
	c.mu.Unlock()
	if closing && !now && !l.failed() {
		_ = l.Close(code, why)
	} else {
		_ = l.CloseNow()
	}
	l.cancel()
	l.wg.Wait()
	if l.watch != nil {
		l.watch.release()
	}
	if l.gate != nil {
		l.gate.release()
	}
}

// finish ends the Conn: Read and Write fail with err from now on.
func (c *Conn) finish(err error) {
	c.cancel()
	c.mu.Lock()
	c.final = err
	c.queue.wake()
	c.mu.Unlock()
	c.rd.end(err)
	c.stopAcks()
	if isClosedLocally(err) {
		err = nil // a local Close has no cause
	}
	c.setState(Closed, err, 0)
}

// transportChanged reports a move between transports while connected.
func (c *Conn) transportChanged(t Transport) {
	if fn := c.opts.stateHook; fn != nil {
		fn(StateChange{From: Connected, To: Connected, Transport: t, At: time.Now()})
	}
}

// setState records a transition and reports it to the state hook.
func (c *Conn) setState(to State, cause error, attempt int) {
	now := time.Now()
	from := State(c.state.Swap(int32(to)))
	c.mu.Lock()
	c.stats.addStateTime(from, now.Sub(c.stateSince))
	c.stateSince = now
	tr := c.transport
	c.mu.Unlock()
	if from == to {
		return
	}
	if fn := c.opts.stateHook; fn != nil {
		fn(StateChange{From: from, To: to, Cause: cause, Attempt: attempt, Transport: tr, At: now})
	}
}
