package tetherredis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tetherws/tether"
)

// maxInFlight bounds the store calls a Cluster has running at once. While
// Redis answers, calls take well under a millisecond and a few are in
// flight; when it stops answering, a call abandoned at its timeout may go
// on until the client's own read timeout, and this bound keeps those from
// piling up.
const maxInFlight = 128

// do runs fn against Redis, bounded by ctx and the call timeout, and
// keeps track of the store's health:
//
//   - fn runs on a goroutine of its own, so that the caller gets its answer
//     at the timeout even when the client does not watch ctx (go-redis
//     ignores ctx deadlines on the socket unless ContextTimeoutEnabled is
//     set, and falls back to its ReadTimeout). fn shares nothing with the
//     caller but its result, which is dropped if it comes too late;
//   - once a call has failed, the store is "down": one call at a time goes
//     to Redis as a probe and the others fail at once, so an outage costs
//     no waiting and no goroutines; the first success ends it;
//   - the outage is logged once when it starts and once when it ends.
//
// Errors that fn returns wrapping tether.ErrNotOwner or tether.ErrNotParked
// are answers, not failures. op names the call in errors and logs.
func do[T any](c *Cluster, ctx context.Context, op string, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	if c.o.err != nil {
		return zero, fmt.Errorf("tether: redis: %s: %w", op, c.o.err)
	}
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("tether: redis: %s: %w", op, err)
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return zero, fmt.Errorf("tether: redis: %s: instance left: %w", op, net.ErrClosed)
	}
	return run(c, ctx, op, fn)
}

type result[T any] struct {
	v   T
	err error
}

// run is do without the closed check, for Leave.
func run[T any](c *Cluster, ctx context.Context, op string, fn func(ctx context.Context) (T, error)) (T, error) {
	c.mu.Lock()
	probe := false
	if c.down {
		if c.probing {
			since := c.downSince
			c.mu.Unlock()
			var zero T
			return zero, fmt.Errorf("tether: redis: %s: %w (down since %s)", op, tether.ErrClusterUnavailable, since.Format(time.RFC3339))
		}
		c.probing, probe = true, true
	}
	c.inFlight++
	c.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, c.o.callTimeout)
	defer cancel()
	var r result[T]
	select {
	case c.sem <- struct{}{}:
		done := make(chan result[T], 1)
		go func() {
			defer c.finished()
			v, err := fn(cctx)
			done <- result[T]{v, err}
		}()
		select {
		case r = <-done:
		case <-cctx.Done():
			r.err = cctx.Err()
		}
	case <-cctx.Done():
		c.ended()
		r.err = fmt.Errorf("too many calls in flight: %w", cctx.Err())
	}
	return r.v, c.outcome(ctx, op, probe, r.err)
}

// finished ends a call's goroutine.
func (c *Cluster) finished() {
	<-c.sem
	c.ended()
}

// ended counts a call out, and tells a waiting Leave when none is left.
func (c *Cluster) ended() {
	c.mu.Lock()
	c.inFlight--
	if c.inFlight == 0 && c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
	c.mu.Unlock()
}

// outcome classifies a call's error and updates the store's health.
func (c *Cluster) outcome(ctx context.Context, op string, probe bool, err error) error {
	answer := err == nil || errors.Is(err, tether.ErrNotOwner) || errors.Is(err, tether.ErrNotParked)
	caller := !answer && ctx.Err() != nil
	now := time.Now()
	c.mu.Lock()
	if probe {
		c.probing = false
	}
	var wasDown bool
	var downFor time.Duration
	switch {
	case answer:
		if c.down {
			wasDown, downFor = true, now.Sub(c.downSince)
			c.down = false
			// Other instances may not have written their records
			// again yet: Lookup stays unsure for a lease.
			c.trouble = now.Add(c.o.lease)
		}
	case caller:
		// The caller gave up: that says nothing about the store.
	default:
		c.trouble = now.Add(c.o.lease)
		if !c.down {
			c.down, c.downSince = true, now
			c.mu.Unlock()
			c.log.LogAttrs(context.Background(), slog.LevelWarn, "cluster store unavailable",
				slog.String("op", op), slog.Any("err", err))
			return fmt.Errorf("tether: redis: %s: %w: %w", op, tether.ErrClusterUnavailable, err)
		}
	}
	c.mu.Unlock()
	if wasDown {
		c.log.LogAttrs(context.Background(), slog.LevelInfo, "cluster store available again",
			slog.Duration("down", downFor))
	}
	switch {
	case answer:
		if err != nil {
			return fmt.Errorf("tether: redis: %s: %w", op, err)
		}
		return nil
	case caller:
		return fmt.Errorf("tether: redis: %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("tether: redis: %s: %w: %w", op, tether.ErrClusterUnavailable, err)
}

// unsure reports whether Lookup should answer "recovering" rather than
// "lost": this instance could not reach the store a moment ago, so owners
// may not have renewed since.
func (c *Cluster) unsure() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down || time.Now().Before(c.trouble)
}
