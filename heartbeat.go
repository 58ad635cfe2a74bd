package tether

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
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

func (c *Conn) heartbeatLoop(l *liveLink, t *time.Timer, interval, timeout time.Duration) error {
	results := make(chan pingResult, 2)
	inflight := 0
	maxInflight := 1
	wait := timeout
	if timeout == 0 {
		// No timeout: each ping waits one interval, and the next goes out
		// whether or not the last was answered.
		wait, maxInflight = interval, 2
	}
	for {
		select {
		case <-c.ctx.Done():
			return errClosedLocally
		case <-l.dead:
			return l.err
		case <-t.C:
			quiet := time.Since(l.lastSeen())
			switch {
			case quiet < interval:
				// Inbound traffic is proof of life: wait for a quiet interval.
				t.Reset(interval - quiet)
				continue
			case inflight >= maxInflight, c.rd.stalled():
				t.Reset(interval)
				continue
			}
			inflight++
			c.stats.pingsSent.Add(1)
			l.wg.Add(1)
			go c.ping(l, wait, results)
			t.Reset(interval)
		case r := <-results:
			inflight--
			switch {
			case r.err == nil:
				l.touch()
				c.stats.pingsOK.Add(1)
				c.stats.recordRTT(r.rtt)
			case l.ctx.Err() != nil || l.failed():
				// The link went away under the ping; l.dead says why.
			case !errors.Is(r.err, context.DeadlineExceeded):
				c.stats.pingsFailed.Add(1)
				l.fail(r.err)
			default:
				c.stats.pingsFailed.Add(1)
				if timeout > 0 && !l.lastSeen().After(r.start) && !c.rd.stalled() {
					c.logf(slog.LevelWarn, "no pong within the heartbeat timeout", l.transport, 0, slog.Duration("timeout", timeout))
					l.fail(ErrHeartbeatTimeout)
				}
			}
		}
	}
}

// ping sends one ping on l and reports how it went.
func (c *Conn) ping(l *liveLink, wait time.Duration, results chan<- pingResult) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, wait)
	start := time.Now()
	err := l.Ping(ctx)
	cancel()
	results <- pingResult{start: start, rtt: time.Since(start), err: err}
}

// errUpgrade ends the watch of a polling link when a WebSocket probe got
// through.
var errUpgrade = errors.New("tether: WebSocket is back")

type probeResult struct {
	ws   *websocket.Conn
	resp *http.Response
}

// watchPolling watches a long-polling link (its polls are its heartbeat) and
// probes WebSocket in the background with backoff; when a probe gets
// through, the supervisor moves the session back onto it.
func (c *Conn) watchPolling(l *liveLink) error {
	b := c.opts.newProbeBackoff()
	t := time.NewTimer(b.NextBackOff())
	defer t.Stop()
	results := make(chan error, 1)
	for {
		select {
		case <-c.ctx.Done():
			return errClosedLocally
		case <-l.dead:
			return l.err
		case <-t.C:
			l.wg.Add(1)
			go c.probe(l, results)
		case err := <-results:
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
	ws, resp, err := c.dial(l.ctx)
	if err == nil && (ws.Subprotocol() != Subprotocol || resp == nil || resp.Header.Get(headerProtocol) != Subprotocol) {
		_ = ws.CloseNow()
		err = errors.New("tether: probe: the server did not take up session mode")
	}
	if err == nil {
		c.probes <- &probeResult{ws: ws, resp: resp}
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
