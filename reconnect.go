package tether

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
	l, err := c.connect(fctx, Connecting, nil)
	stop()
	cancel(nil)
	if err != nil {
		c.finish(err)
		first <- err
		return
	}
	first <- nil

	for {
		cause := c.heartbeat(l)
		if c.ctx.Err() != nil {
			c.retire(l, true)
			c.finish(errClosedLocally)
			return
		}
		c.retire(l, false)
		if !c.shouldRetry(cause) {
			c.logf(slog.LevelWarn, "link lost for good", l.transport, 0, slog.Any("cause", cause))
			c.finish(cause)
			return
		}
		c.logf(slog.LevelInfo, "link lost, reconnecting", l.transport, 0, slog.Any("cause", cause))
		c.setState(Reconnecting, cause, 0)
		if l, err = c.connect(c.ctx, Reconnecting, cause); err != nil {
			c.finish(err)
			return
		}
	}
}

// connect makes attempts, with backoff between them, until a link is up and
// its OnConnect hook has run and the send queue has been flushed. ctx bounds
// it. After a lost link (cause non-nil) the first attempt waits one backoff
// step too, so that a crowd of clients dropped together spreads out.
func (c *Conn) connect(ctx context.Context, from State, cause error) (*liveLink, error) {
	b := c.opts.newBackoff()
	b.Reset()
	var lastErr error
	for attempt := 1; ; attempt++ {
		if cause != nil || attempt > 1 {
			d := b.NextBackOff()
			if d == backoff.Stop {
				return nil, &GiveUpError{Attempts: attempt - 1, Err: firstErr(lastErr, cause)}
			}
			var he *HandshakeError
			if errors.As(lastErr, &he) && he.RetryAfter > d {
				d = he.RetryAfter
			}
			if err := sleep(ctx, d); err != nil {
				return nil, c.abortErr(ctx, lastErr)
			}
		}
		c.stats.dials.Add(1)
		l, err := c.attempt(ctx, attempt)
		if err == nil {
			if from == Reconnecting {
				c.stats.reconnects.Add(1)
			}
			c.setState(Connected, nil, attempt)
			c.logf(slog.LevelInfo, "connected", l.transport, attempt)
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, c.abortErr(ctx, err)
		}
		lastErr = err
		c.stats.countFailure(err)
		retry := c.shouldRetry(err)
		c.logf(slog.LevelWarn, "connect attempt failed", WebSocket, attempt, slog.Bool("retry", retry), slog.Any("err", err))
		if !retry {
			return nil, err
		}
		if max := c.opts.maxRetries; max > 0 && attempt >= max {
			return nil, &GiveUpError{Attempts: attempt, Err: err}
		}
	}
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
		return fmt.Errorf("tether: connect to %s: %w (last attempt: %v)", c.url, context.Cause(ctx), last)
	}
	return fmt.Errorf("tether: connect to %s: %w", c.url, context.Cause(ctx))
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

// attempt dials once, runs the OnConnect hook, and flushes the send queue.
func (c *Conn) attempt(ctx context.Context, attempt int) (*liveLink, error) {
	ws, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	ws.SetReadLimit(c.readLimit)
	c.subproto = ws.Subprotocol()
	c.transport = WebSocket
	c.mu.Unlock()

	l := newLiveLink(c.ctx, ws, WebSocket)
	c.setReadLink(l)
	if fn := c.opts.onConnect; fn != nil {
		hctx := context.WithValue(ctx, onConnectKey{}, l)
		if err := fn(hctx, c); err != nil {
			c.retire(l, false)
			return nil, &hookError{hook: "OnConnect", err: err}
		}
	}
	if err := c.flush(l); err != nil {
		c.retire(l, false)
		return nil, fmt.Errorf("tether: sending queued messages: %w", err)
	}
	return l, nil
}

// dial makes one WebSocket handshake, bounded by the handshake timeout.
func (c *Conn) dial(ctx context.Context) (*websocket.Conn, error) {
	if d := c.opts.handshakeTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var (
		ws   *websocket.Conn
		resp *http.Response
		err  error
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
		if c.opts.header != nil {
			h, herr := c.opts.header(ctx)
			if herr != nil {
				return nil, &hookError{hook: "WithHeader", err: herr}
			}
			for k, vs := range h {
				for _, v := range vs {
					do.HTTPHeader.Add(k, v)
				}
			}
		}
		do.HTTPHeader.Set(ConnIDHeader, c.id)
		ws, resp, err = websocket.Dial(ctx, c.url, &do)
	}
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, &HandshakeError{
				StatusCode: resp.StatusCode,
				RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
				Err:        err,
			}
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return nil, fmt.Errorf("tether: %w after %v: %w", errHandshakeTimeout, c.opts.handshakeTimeout, err)
		}
		return nil, fmt.Errorf("tether: dial: %w", err)
	}
	return ws, nil
}

// shouldRetry applies the classification and the user's override.
func (c *Conn) shouldRetry(err error) bool {
	retry := retryable(err)
	if c.opts.retryHook != nil && !isClosedLocally(err) {
		retry = c.opts.retryHook(err, retry)
	}
	return retry
}

// retryable is tether's default verdict on a failed attempt or a lost link.
func retryable(err error) bool {
	if err == nil || isClosedLocally(err) {
		return false
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		switch he.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return false
		}
		return true
	}
	if code := websocket.CloseStatus(err); code != -1 {
		return retryableClose(code)
	}
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verify           *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verify) {
		return false
	}
	return true
}

// retryableClose says whether a close code from the server is worth a
// reconnect.
func retryableClose(code websocket.StatusCode) bool {
	switch {
	case code == websocket.StatusNormalClosure:
		return false // the server ended the conversation
	case code == websocket.StatusGoingAway,
		code == websocket.StatusAbnormalClosure,
		code == websocket.StatusInternalError,
		code == websocket.StatusServiceRestart,
		code == websocket.StatusTryAgainLater,
		code == websocket.StatusBadGateway,
		code == websocket.StatusNoStatusRcvd:
		return true
	case code == websocket.StatusProtocolError,
		code == websocket.StatusUnsupportedData,
		code == websocket.StatusInvalidFramePayloadData,
		code == websocket.StatusPolicyViolation,
		code == websocket.StatusMessageTooBig,
		code == websocket.StatusMandatoryExtension:
		return false
	case code >= 4000 && code <= 4999:
		return false
	}
	return true
}

// retire takes l out of use: no Read or Write reaches it any more, it is
// closed (gracefully when the Conn is closing), and its goroutines have
// returned.
func (c *Conn) retire(l *liveLink, closing bool) {
	c.live.CompareAndSwap(l, nil)
	c.rd.mu.Lock()
	c.rd.clearLinkLocked(l)
	c.rd.mu.Unlock()
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
}

// finish ends the Conn: Read and Write fail with err from now on.
func (c *Conn) finish(err error) {
	c.cancel()
	c.mu.Lock()
	c.final = err
	c.queue.wake()
	c.mu.Unlock()
	c.rd.end(err)
	c.setState(Closed, err, 0)
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
