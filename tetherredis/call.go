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

// do runs fn against Redis, bounded by ctx and the call timeout, and keeps
// track of the store's health:
//
//   - fn runs on a goroutine of its own, so that the caller gets its answer
//     at the timeout even when the client does not watch ctx (go-redis
//     ignores ctx deadlines on the socket unless ContextTimeoutEnabled is
//     set, and waits for its ReadTimeout, 5 s by default). fn shares
//     nothing with the caller but its result, dropped if it comes late;
//   - once a call has failed, the store is "down": one call at a time goes
//     to Redis as a probe, and the others fail at once. The probe keeps its
//     slot until its goroutine returns, even past the caller's timeout, so
//     an outage costs no waiting and holds at most one goroutine; the first
//     answer, even a late one, ends the outage;
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
	return run(c, ctx, op, false, fn)
}

type result[T any] struct {
	v   T
	err error
}

// run is do after the checks that need no lock. leaving lets Leave's own
// call through.
func run[T any](c *Cluster, ctx context.Context, op string, leaving bool, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	c.mu.Lock()
	if c.closed && !leaving {
		c.mu.Unlock()
		return zero, fmt.Errorf("tether: redis: %s: instance left: %w", op, net.ErrClosed)
	}
	probe := false
	if c.down {
		if c.probing {
			since := c.downSince
			c.mu.Unlock()
			return zero, fmt.Errorf("tether: redis: %s: %w (down since %s)", op, tether.ErrClusterUnavailable, since.Format(time.RFC3339))
		}
		c.probing, probe = true, true
	}
	c.inFlight++
	c.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, c.o.callTimeout)
	defer cancel()
	select {
	case c.sem <- struct{}{}:
	case <-cctx.Done():
		c.ended(probe)
		return zero, c.gaveUp(ctx, op, errors.New("too many calls in flight"))
	}
	done := make(chan result[T], 1)
	go func() {
		v, err := fn(cctx)
		switch {
		case isAnswer(err):
			c.answered()
		case ctx.Err() == nil && cctx.Err() == nil:
			c.failed(op, err)
		}
		// Otherwise the caller gave up first, and has said so.
		done <- result[T]{v, err}
		<-c.sem
		c.ended(probe)
	}()
	select {
	case r := <-done:
		switch {
		case isAnswer(r.err):
			if r.err != nil {
				return r.v, fmt.Errorf("tether: redis: %s: %w", op, r.err)
			}
			return r.v, nil
		case ctx.Err() != nil:
			return r.v, fmt.Errorf("tether: redis: %s: %w", op, ctx.Err())
		}
		return r.v, fmt.Errorf("tether: redis: %s: %w: %w", op, tether.ErrClusterUnavailable, r.err)
	case <-cctx.Done():
		return zero, c.gaveUp(ctx, op, errors.New("no answer in time"))
	}
}

func isAnswer(err error) bool {
	return err == nil || errors.Is(err, tether.ErrNotOwner) || errors.Is(err, tether.ErrNotParked)
}

// gaveUp is the error of a call that ended before Redis answered: the
// caller's, if its ctx ended, or else the store's.
func (c *Cluster) gaveUp(ctx context.Context, op string, why error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("tether: redis: %s: %w", op, err)
	}
	err := fmt.Errorf("%w after %v", why, c.o.callTimeout)
	c.failed(op, err)
	return fmt.Errorf("tether: redis: %s: %w: %w", op, tether.ErrClusterUnavailable, err)
}

// ended counts a call out, frees the probe slot it held, and tells a
// waiting Leave when no call is left.
func (c *Cluster) ended(probe bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if probe {
		c.probing = false
	}
	c.inFlight--
	if c.inFlight == 0 && c.drained != nil {
		close(c.drained)
		c.drained = nil
	}
}

// failed records a call the store did not answer, and logs the start of an
// outage.
func (c *Cluster) failed(op string, err error) {
	now := time.Now()
	c.mu.Lock()
	c.trouble = now.Add(c.o.lease)
	if c.down {
		c.mu.Unlock()
		return
	}
	c.down, c.downSince = true, now
	c.mu.Unlock()
	c.log.LogAttrs(context.Background(), slog.LevelWarn, "cluster store unavailable",
		slog.String("op", op), slog.Any("err", err))
}

// answered records an answer from the store, and logs the end of an
// outage.
func (c *Cluster) answered() {
	c.mu.Lock()
	if !c.down {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	down := now.Sub(c.downSince)
	c.down = false
	// Other instances may not have written their records again yet:
	// Lookup stays unsure for a lease.
	c.trouble = now.Add(c.o.lease)
	c.mu.Unlock()
	c.log.LogAttrs(context.Background(), slog.LevelInfo, "cluster store available again",
		slog.Duration("down", down))
}

// unsure reports whether Lookup should answer "recovering" rather than
// "lost": this instance could not reach the store a moment ago, so owners
// may not have renewed since.
func (c *Cluster) unsure() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.down || time.Now().Before(c.trouble)
}
