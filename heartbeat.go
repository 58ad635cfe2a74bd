package tether

import (
	"context"
	"errors"
	"log/slog"
	"time"
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
