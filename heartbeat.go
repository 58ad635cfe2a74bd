package tether

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
)

type pingResult struct {
	start time.Time
	rtt   time.Duration
	err   error
}

// heartbeat watches a connected link until it fails or the Conn closes, and
// returns the cause. It runs on the supervisor goroutine from a timer: pings
// go out when the link has been quiet for the interval, each on a short-lived
// goroutine (coder/websocket's Ping blocks until the pong), and the verdict
// comes back here, so that only the supervisor closes a link.
func (c *Conn) heartbeat(l *liveLink) error {
	if l.transport == Polling {
		return c.watchPolling(l)
	}
	interval := c.opts.hbInterval
	if interval <= 0 {
		select {
		case <-c.ctx.Done():
			return errClosedLocally
		case <-l.dead:
			return l.err
		}
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	return c.heartbeatLoop(l, t, interval, c.opts.hbTimeout)
}

// maxPingsInFlight bounds the ping goroutines of one link when pongs do not
// come back.
const maxPingsInFlight = 64

// pingWait is how long one ping waits for its pong. coder/websocket closes a
// link whose ping ctx ends while the frame is still being written, and caps
// control frame writes at 5 s itself, so a ping's ctx never ends sooner than
// that: a tight interval or timeout cannot kill a link that is merely slow
// to take a frame. The heartbeat judges the timeout on its own clock.
func pingWait(interval, timeout time.Duration) time.Duration {
	return max(interval, timeout, 5*time.Second)
}

func (c *Conn) heartbeatLoop(l *liveLink, t *time.Timer, interval, timeout time.Duration) error {
	results := &pingResults{ready: make(chan struct{}, 1)}
	wait := pingWait(interval, timeout)
	var (
		inflight int
		lastPing time.Time // when the last ping went out
		oldest   time.Time // the first ping unanswered since the last sign of life
	)
	for {
		select {
		case <-c.ctx.Done():
			return errClosedLocally
		case <-l.dead:
			return l.err
		case <-results.ready:
			for _, r := range results.take() {
				inflight--
				c.judgePing(l, r)
				if r.err == nil {
					oldest = time.Time{} // a pong: the link is alive
				}
			}
			continue
		case <-t.C:
		}
		now := time.Now()
		seen := l.lastSeen()
		if !oldest.IsZero() && !seen.Before(oldest) {
			oldest = time.Time{} // the link has shown life since
		}
		if timeout > 0 && !oldest.IsZero() && now.Sub(oldest) >= timeout {
			if !c.rd.stalled() {
				c.stats.pingsFailed.Add(1)
				c.logf(slog.LevelWarn, "no pong within the heartbeat timeout", l.transport, 0, slog.Duration("timeout", timeout))
				l.fail(ErrHeartbeatTimeout)
				continue
			}
			oldest = time.Time{} // the application is not reading: do not judge
		}
		// Inbound traffic is proof of life: ping only a link quiet for an
		// interval, and at most once an interval.
		next := seen.Add(interval)
		if lastPing.Add(interval).After(next) {
			next = lastPing.Add(interval)
		}
		if !now.Before(next) && inflight < maxPingsInFlight && !c.rd.stalled() {
			inflight++
			lastPing = now
			if oldest.IsZero() {
				oldest = now
			}
			c.stats.pingsSent.Add(1)
			l.wg.Add(1)
			go c.ping(l, wait, results)
			next = now.Add(interval)
		}
		d := next.Sub(now)
		if timeout > 0 && !oldest.IsZero() {
			d = min(d, oldest.Add(timeout).Sub(now))
		}
		t.Reset(max(d, time.Millisecond))
	}
}

// pingResults collects the outcomes of a link's pings. A slice and a
// one-slot signal, rather than a channel with room for every ping in
// flight, keep an idle Conn small.
type pingResults struct {
	mu    sync.Mutex
	done  []pingResult
	ready chan struct{}
}

func (p *pingResults) put(r pingResult) {
	p.mu.Lock()
	p.done = append(p.done, r)
	p.mu.Unlock()
	select {
	case p.ready <- struct{}{}:
	default:
	}
}

func (p *pingResults) take() []pingResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := p.done
	p.done = nil
	return rs
}

// judgePing records a ping's outcome. A ping that timed out is counted but
// not judged here: the heartbeat loop keeps its own clock.
func (c *Conn) judgePing(l *liveLink, r pingResult) {
	switch {
	case r.err == nil:
		l.touch()
		c.stats.pingsOK.Add(1)
		c.stats.recordRTT(r.rtt)
	case l.ctx.Err() != nil || l.failed():
		// The link went away under the ping; l.dead says why.
	case errors.Is(r.err, context.DeadlineExceeded):
		c.stats.pingsFailed.Add(1)
	default:
		c.stats.pingsFailed.Add(1)
		l.fail(r.err)
	}
}

// ping sends one ping on l and reports how it went.
func (c *Conn) ping(l *liveLink, wait time.Duration, results *pingResults) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, wait)
	start := time.Now()
	err := l.Ping(ctx)
	cancel()
	results.put(pingResult{start: start, rtt: time.Since(start), err: err})
}

// errUpgrade ends the watch of a polling link when a WebSocket probe got
// through.
var errUpgrade = errors.New("tether: WebSocket is back")

// watchPolling watches a long-polling link (its polls are its heartbeat) and
// probes WebSocket in the background with backoff; when a probe gets
// through, the supervisor moves the session back onto it.
func (c *Conn) watchPolling(l *liveLink) error {
	b := c.opts.newProbeBackoff()
	t := time.NewTimer(b.NextBackOff())
	defer t.Stop()
	results := make(chan error, 1)
	probing := false
	for {
		select {
		case <-c.ctx.Done():
			return errClosedLocally
		case <-l.dead:
			if probing {
				// A probe that gets through moves the session off polling,
				// which is why polling failed: let it finish.
				select {
				case err := <-results:
					if err == nil {
						return errUpgrade
					}
				case <-c.ctx.Done():
					return errClosedLocally
				}
			}
			return l.err
		case <-t.C:
			probing = true
			c.stats.dials.Add(1)
			l.wg.Add(1)
			go c.probe(l, results)
		case err := <-results:
			probing = false
			if err == nil {
				return errUpgrade
			}
			c.logf(slog.LevelDebug, "WebSocket probe failed", WebSocket, 0, slog.Any("err", err))
			t.Reset(b.NextBackOff())
		}
	}
}

// probe tries one WebSocket handshake that resumes the session.
func (c *Conn) probe(l *liveLink, results chan<- error) {
	defer l.wg.Done()
	d, err := c.dial(l.ctx)
	if err == nil && (d.ws.Subprotocol() != Subprotocol || d.resp == nil || d.resp.Header.Get(headerProtocol) != Subprotocol) {
		_ = d.ws.CloseNow()
		err = errors.New("tether: probe: the server did not take up session mode")
	}
	if err == nil {
		c.probes <- d
	}
	results <- err
}

// defaultProbeBackoff spaces WebSocket probes while on long polling: the
// first within a few seconds, then growing to about a minute.
func defaultProbeBackoff() backoff.BackOff {
	return &fullJitter{exp: backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(3*time.Second),
		backoff.WithMaxInterval(time.Minute),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0),
		backoff.WithMaxElapsedTime(0),
	)}
}
