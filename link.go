package tether

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// link is one transport connection under a Conn's supervisor. A
// *websocket.Conn is one; a session or polling transport is another.
type link interface {
	Read(ctx context.Context) (websocket.MessageType, []byte, error)
	Write(ctx context.Context, typ websocket.MessageType, p []byte) error
	Ping(ctx context.Context) error
	Close(code websocket.StatusCode, reason string) error
	CloseNow() error
}

// liveLink is a link while the supervisor holds it: its failure signal, the
// goroutines working on it, and when it last showed life.
type liveLink struct {
	link
	transport Transport
	session   bool      // link is a *sessionLink
	seq       *seqState // the session whose messages the link carries, if any
	readAhead window    // what the reader may hold unread (see readsAhead)

	// ctx ends when the link is retired; pings derive from it.
	ctx    context.Context
	cancel context.CancelFunc

	// dead is closed, once, when anyone sees the link fail; err says why.
	// foreign is the error err wraps when it was not tether's own.
	dead     chan struct{}
	deadOnce sync.Once
	err      error
	foreign  error

	// The peer's close, when a write failed the link first (see settle):
	// closeErr is the reader's error, closeSeen is closed when it is set.
	closeMu   sync.Mutex
	closeErr  error
	closeSeen chan struct{}

	// wg counts the goroutines working on this link (background reader,
	// pings). The supervisor waits for them before the next link is used.
	wg sync.WaitGroup

	lastRecv atomic.Int64 // unix nanoseconds of the last inbound message or pong

	// watch, when tether made the socket, lets a Read with a cancellable
	// ctx read on the caller's goroutine (see interrupt.go).
	watch *watchConn
	// On a plain link, wsem lets one message Write at a time reach the
	// link, and gate, when tether made the socket, lets ctx bound it (see
	// writegate.go).
	wsem chan struct{}
	gate *writeGate
}

func newLiveLink(parent context.Context, l link, t Transport) *liveLink {
	ll := &liveLink{link: l, transport: t, dead: make(chan struct{})}
	switch l := l.(type) {
	case *sessionLink:
		ll.session, ll.seq = true, l.s.seq
	case *serverWS:
		ll.seq = l.s.seq
	}
	ll.ctx, ll.cancel = context.WithCancel(parent)
	ll.touch()
	return ll
}

// fail records the first error seen on the link and wakes the supervisor.
// The peer's close frame, seen after a write found the link closed, is kept
// beside it (see settle).
func (l *liveLink) fail(err error) {
	first := false
	l.deadOnce.Do(func() {
		first = true
		if !strings.HasPrefix(err.Error(), "tether: ") {
			l.foreign = err
			err = fmt.Errorf("tether: %v link lost: %w", l.transport, err)
		}
		l.err = err
		close(l.dead)
	})
	if !first && websocket.CloseStatus(err) != -1 && closedUnder(l.err) {
		l.closeMu.Lock()
		if l.closeErr == nil {
			l.closeErr = err
			if l.closeSeen != nil {
				close(l.closeSeen)
			}
		}
		l.closeMu.Unlock()
	}
}

// closeGrace is how long a link that failed because a write found it closed
// waits for its reader to say why (see settle).
const closeGrace = 100 * time.Millisecond

// closedUnder reports whether err is a write's, or a ping's, that found the
// connection closed under it.
func closedUnder(err error) bool { return errors.Is(err, net.ErrClosed) }

// settle returns the peer's close frame when a write, or a ping, failed the
// link first because the connection was closed under it, waiting closeGrace
// at most for the reader; nil otherwise. coder/websocket closes the
// connection as soon as it has read the peer's close frame, before its
// reader returns that frame: a write in between fails with net.ErrClosed,
// and the close code, which decides whether to reconnect or whether a
// session has ended, would be lost. l has failed.
func (l *liveLink) settle() error {
	if !closedUnder(l.err) {
		return nil
	}
	l.closeMu.Lock()
	if l.closeErr != nil {
		err := l.closeErr
		l.closeMu.Unlock()
		return err
	}
	if l.closeSeen == nil {
		l.closeSeen = make(chan struct{})
	}
	seen := l.closeSeen
	l.closeMu.Unlock()
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-seen:
	case <-t.C:
	}
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	return l.closeErr
}

// untilDead returns a ctx that ends with parent or when l fails, for a
// write that must not outlive the link (a replay). Passed to
// coder/websocket, its end closes the link.
func untilDead(parent context.Context, l *liveLink) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-l.dead:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (l *liveLink) failed() bool {
	select {
	case <-l.dead:
		return true
	default:
		return false
	}
}

// writeCtx is the ctx a Write passes down: a session link honours the
// caller's ctx while it waits for acknowledgements; a plain WebSocket must
// never see it, since coder/websocket closes a link whose Write ctx ends.
func (l *liveLink) writeCtx(ctx context.Context) context.Context {
	if l.session {
		return ctx
	}
	return context.Background()
}

// write writes a message on l. On a plain link ctx bounds the call (see
// writePlain); a session link waits for room in its replay buffer with ctx.
func (l *liveLink) write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if ws, ok := l.link.(*websocket.Conn); ok && l.wsem != nil {
		return l.writePlain(ctx, ws, typ, p)
	}
	return l.Write(l.writeCtx(ctx), typ, p)
}

func (l *liveLink) touch() { l.lastRecv.Store(time.Now().UnixNano()) }

func (l *liveLink) lastSeen() time.Time { return time.Unix(0, l.lastRecv.Load()) }
