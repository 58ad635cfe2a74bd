package tether

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// A Write on a plain link must return when its ctx ends, but coder/websocket
// closes a link whose Write ctx ends, and a frame cut in the middle would
// corrupt the stream anyway. So the ctx never reaches coder/websocket.
// Instead, on a socket tether dialed itself, a writeGate sits right above
// TCP (below TLS, where there is TLS). When the ctx of the Write in progress
// ends while the socket does not take the bytes (a server that stopped
// reading), the gate sets a write deadline in the past; the blocked write
// returns, and the gate hands what is left of it to a goroutine of its own,
// which writes it out, in order, before anything else. The Write returns at
// once; the message may still be delivered. Nothing is ever cut: the link
// stays whole, or fails as a whole.
//
// Message Writes take the link's write semaphore first, with their ctx, so a
// Write waiting behind another, or behind the tail of one that was cut,
// waits on its ctx and sends nothing if it ends. Where tether did not dial
// the socket (an http.Client of your own), a Write whose ctx can end is made
// on a goroutine of its own instead.

// writeGate is the socket below a plain link's frames, seen from the write
// side.
type writeGate struct {
	net.Conn

	mu           sync.Mutex
	guarded      bool            // a message Write that ctx may cut short is in progress
	guardCtx     context.Context // its ctx
	interrupting bool            // the write deadline is set in the past
	cut          bool            // a write was handed to the flusher during the guard
	armedCtx     context.Context // the ctx watched for interrupts
	disarm       func() bool
	lastCtx      context.Context
	repeated     bool          // the guarded Write's ctx is the previous one's
	tail         [][]byte      // what cut writes left, for the flusher
	flushing     chan struct{} // closed when the flusher has written the tail
	flushErr     error         // why the flusher failed; later writes fail with it
	releaseSem   chan struct{} // the semaphore the flusher releases when done
	wg           sync.WaitGroup
}

func newWriteGate(c net.Conn) *writeGate { return &writeGate{Conn: c} }

func (g *writeGate) Write(p []byte) (int, error) {
	g.mu.Lock()
	for g.flushing != nil {
		if g.guarded && g.guardCtx.Err() != nil {
			// The guarded Write's ctx has ended: these bytes go after the
			// tail being written, whichever write they belong to.
			g.tail = append(g.tail, append([]byte(nil), p...))
			g.cut = true
			g.mu.Unlock()
			return len(p), nil
		}
		// The tail of a cut write goes first. A control frame (a pong, a
		// ping, a close) waits here; coder/websocket bounds such writes and
		// closes the link when they take too long, which ends the flusher.
		fl := g.flushing
		var ended <-chan struct{}
		if g.guarded {
			ended = g.guardCtx.Done()
		}
		g.mu.Unlock()
		select {
		case <-fl:
		case <-ended:
		}
		g.mu.Lock()
	}
	if err := g.flushErr; err != nil {
		g.mu.Unlock()
		return 0, err
	}
	g.mu.Unlock()
	n, err := g.Conn.Write(p)
	if err == nil {
		return n, nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.interrupting || !isTimeout(err) {
		return n, err
	}
	// Interrupted: hand the rest on, and tell the caller all was taken.
	g.interrupting = false
	_ = g.Conn.SetWriteDeadline(time.Time{})
	g.cut = true
	g.tail = append(g.tail, append([]byte(nil), p[n:]...))
	fl := make(chan struct{})
	g.flushing = fl
	g.wg.Add(1)
	go g.flush(fl)
	return len(p), nil
}

// flush writes the tails of cut writes, in order.
func (g *writeGate) flush(fl chan struct{}) {
	defer g.wg.Done()
	g.mu.Lock()
	for len(g.tail) > 0 && g.flushErr == nil {
		b := g.tail[0]
		g.tail[0] = nil
		g.tail = g.tail[1:]
		g.mu.Unlock()
		_, err := g.Conn.Write(b)
		g.mu.Lock()
		if err != nil {
			g.flushErr = err
		}
	}
	g.tail = nil
	g.flushing = nil
	sem := g.releaseSem
	g.releaseSem = nil
	g.mu.Unlock()
	close(fl)
	if sem != nil {
		<-sem
	}
}

// guard marks the start of a message Write that ctx may cut short. Like a
// watchConn's guard, it keeps watching a ctx passed again and again.
func (g *writeGate) guard(ctx context.Context) {
	g.mu.Lock()
	g.guarded, g.cut, g.guardCtx = true, false, ctx
	g.repeated = ctx == g.lastCtx
	g.lastCtx = ctx
	if g.armedCtx == ctx {
		g.mu.Unlock()
		return
	}
	old := g.disarm
	g.armedCtx, g.disarm = nil, nil
	g.mu.Unlock()
	if old != nil {
		old()
	}
	stop := context.AfterFunc(ctx, func() { g.interrupt(ctx) })
	g.mu.Lock()
	g.armedCtx, g.disarm = ctx, stop
	g.mu.Unlock()
}

// unguard ends the guard, reports whether the Write was cut, and releases
// sem: at once, or when the flusher is done.
func (g *writeGate) unguard(sem chan struct{}) (cut bool) {
	g.mu.Lock()
	if !g.repeated && g.disarm != nil {
		stop := g.disarm
		g.armedCtx, g.disarm = nil, nil
		g.mu.Unlock()
		stop()
		g.mu.Lock()
	}
	if g.interrupting {
		g.interrupting = false
		_ = g.Conn.SetWriteDeadline(time.Time{})
	}
	cut = g.cut
	g.guarded, g.cut, g.guardCtx = false, false, nil
	if g.flushing != nil {
		g.releaseSem = sem
		sem = nil
	}
	g.mu.Unlock()
	if sem != nil {
		<-sem
	}
	return cut
}

// interrupt makes the guarded Write's blocked socket write return.
func (g *writeGate) interrupt(ctx context.Context) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.guarded && g.guardCtx == ctx && !g.interrupting && g.flushing == nil {
		g.interrupting = true
		_ = g.Conn.SetWriteDeadline(aLongTimeAgo)
	}
}

// release stops watching ctxs and waits for the flusher: the link is closed.
func (g *writeGate) release() {
	g.mu.Lock()
	stop := g.disarm
	g.armedCtx, g.disarm, g.lastCtx = nil, nil, nil
	g.mu.Unlock()
	if stop != nil {
		stop()
	}
	g.wg.Wait()
}

// writePlain writes a message on a plain link, bounded by ctx (see above).
func (l *liveLink) writePlain(ctx context.Context, ws *websocket.Conn, typ websocket.MessageType, p []byte) error {
	done := ctx.Done()
	select {
	case l.wsem <- struct{}{}:
	default:
		select {
		case l.wsem <- struct{}{}:
		case <-done:
			return ctx.Err() // nothing was sent
		}
	}
	if done == nil {
		err := ws.Write(context.Background(), typ, p)
		<-l.wsem
		return err
	}
	if g := l.gate; g != nil {
		g.guard(ctx)
		if ctx.Err() != nil {
			g.unguard(l.wsem)
			return ctx.Err() // nothing was sent
		}
		err := ws.Write(context.Background(), typ, p)
		if g.unguard(l.wsem) && err == nil {
			return fmt.Errorf("%w; %w", ctx.Err(), ErrInFlight)
		}
		return err
	}
	// Not tether's socket: write aside, with a copy, since the caller may
	// reuse p as soon as Write returns.
	p = append([]byte(nil), p...)
	res := make(chan error, 1)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		err := ws.Write(context.Background(), typ, p)
		<-l.wsem
		res <- err
	}()
	select {
	case err := <-res:
		return err
	case <-done:
		select {
		case err := <-res:
			return err
		default:
			return fmt.Errorf("%w; %w", ctx.Err(), ErrInFlight)
		}
	}
}
