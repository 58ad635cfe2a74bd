package tether

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The Handler's heartbeat (WithHandlerHeartbeat) looks after its clients'
// WebSocket links as the client's heartbeat looks after the client's: a
// link that has been quiet for the interval is pinged, and a link whose
// pong does not come within the timeout is closed. It also closes a link
// whose client has not taken a write for the timeout: a client that keeps
// its TCP connection open and stops reading would otherwise hold serve,
// blocked in Write, for ever. Like the client's, it runs from a timer, with
// a short-lived goroutine per ping (coder/websocket's Ping waits for the
// pong), and does not judge a link whose reader is held back because serve
// has not taken what it read. Long polling needs none of this: every poll
// ends within the poll wait.

var (
	// errWriteTimeout is the cause of a link closed because its client did
	// not take a write within the heartbeat timeout.
	errWriteTimeout = errors.New("tether: the client took no write within the heartbeat timeout")
	// errPongTimeout is the cause of a link closed because its client did
	// not answer a ping within the heartbeat timeout.
	errPongTimeout = errors.New("tether: the client answered no ping within the heartbeat timeout")
)

// linkHeartbeat is the Handler's heartbeat on one WebSocket link.
type linkHeartbeat struct {
	l                 *liveLink
	rd                *reader     // the session's reader, to see whether serve holds it back
	writing           *writeClock // the link's write in progress
	interval, timeout time.Duration

	mu       sync.Mutex
	stopped  bool
	pingSent time.Time // when the ping in flight went out; zero when none
	timer    *time.Timer
}

// startHeartbeat starts the Handler's heartbeat on l, or returns nil when it
// is off.
func (h *Handler) startHeartbeat(l *liveLink, rd *reader, writing *writeClock) *linkHeartbeat {
	interval, timeout := h.opts.hbInterval, h.opts.hbTimeout
	if interval <= 0 && timeout <= 0 {
		return nil
	}
	hb := &linkHeartbeat{l: l, rd: rd, writing: writing, interval: interval, timeout: timeout}
	hb.mu.Lock()
	hb.timer = time.AfterFunc(hb.nextCheck(time.Now()), hb.check)
	hb.mu.Unlock()
	return hb
}

// stop stops the heartbeat; its ping, if one is in flight, is counted in
// l.wg, which the caller waits for.
func (hb *linkHeartbeat) stop() {
	if hb == nil {
		return
	}
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.stopped = true
	hb.timer.Stop()
}

// nextCheck is how long until the heartbeat looks again; hb.mu is held.
func (hb *linkHeartbeat) nextCheck(now time.Time) time.Duration {
	d := time.Duration(1<<63 - 1)
	if hb.interval > 0 {
		d = hb.interval
		if hb.pingSent.IsZero() {
			d = max(hb.l.lastSeen().Add(hb.interval).Sub(now), time.Millisecond)
		}
	}
	if hb.timeout > 0 {
		// A write that began just after this look is caught by the look
		// after, within half a timeout of its own.
		d = min(d, hb.timeout/2)
		if !hb.pingSent.IsZero() {
			d = min(d, max(hb.pingSent.Add(hb.timeout).Sub(now), time.Millisecond))
		}
	}
	return d
}

// check runs from the timer.
func (hb *linkHeartbeat) check() {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	l := hb.l
	if hb.stopped || l.failed() {
		return
	}
	now := time.Now()
	if hb.timeout > 0 && hb.writing.stuck(now, hb.timeout) {
		hb.fail(errWriteTimeout)
		return
	}
	stalled := hb.rd.stalled()
	if !hb.pingSent.IsZero() {
		switch {
		case l.lastSeen().After(hb.pingSent), stalled:
			// The link has shown life since, or serve holds its reader
			// back and the pong may wait behind what it has not read.
			hb.pingSent = time.Time{}
		case hb.timeout > 0 && now.Sub(hb.pingSent) >= hb.timeout:
			hb.fail(errPongTimeout)
			return
		}
	}
	if hb.interval > 0 && hb.pingSent.IsZero() && !stalled && now.Sub(l.lastSeen()) >= hb.interval {
		hb.pingSent = now
		l.wg.Add(1)
		go hb.ping(pingWait(hb.interval, hb.timeout))
	}
	hb.timer.Reset(hb.nextCheck(now))
}

// fail closes the link; its watcher then takes it out of use. hb.mu is
// held.
func (hb *linkHeartbeat) fail(err error) {
	hb.l.fail(err)
	_ = hb.l.CloseNow()
}

// ping sends one ping; its pong is proof of life.
func (hb *linkHeartbeat) ping(wait time.Duration) {
	l := hb.l
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, wait)
	defer cancel()
	if l.Ping(ctx) == nil {
		l.touch()
	}
}

// lifeSigns makes a client's pings and pongs count as proof of life for
// the Handler's heartbeat, whatever the link's reader is doing. It wraps
// the application's own callbacks.
type lifeSigns struct {
	l atomic.Pointer[liveLink] // set once the link exists
}

func (ls *lifeSigns) touch() {
	if l := ls.l.Load(); l != nil {
		l.touch()
	}
}

// hook adds the callbacks to ao, keeping those already there.
func (ls *lifeSigns) hook(ao *websocket.AcceptOptions) {
	onPing, onPong := ao.OnPingReceived, ao.OnPongReceived
	ao.OnPingReceived = func(ctx context.Context, p []byte) bool {
		ls.touch()
		if onPing != nil {
			return onPing(ctx, p)
		}
		return true
	}
	ao.OnPongReceived = func(ctx context.Context, p []byte) {
		ls.touch()
		if onPong != nil {
			onPong(ctx, p)
		}
	}
}

// atomicTime is a time.Time that may be read and written concurrently; the
// zero value holds the zero time.
type atomicTime struct{ ns atomic.Int64 }

func (t *atomicTime) store(v time.Time) {
	if v.IsZero() {
		t.ns.Store(0)
		return
	}
	t.ns.Store(v.UnixNano())
}

func (t *atomicTime) load() time.Time {
	ns := t.ns.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
