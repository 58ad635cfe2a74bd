package tether

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// NetConn returns a net.Conn that carries a byte stream over c, as
// websocket.NetConn does over a *websocket.Conn: every Write sends a
// message of type typ (in session mode, perhaps several; see below), and
// Read reads the bytes of the messages that come,
// one after another. It is for running another protocol (HTTP/2, gRPC, SSH,
// your own) over a WebSocket. NetConn sets c's read limit to none (-1), and
// the net.Conn owns c: its Close closes c with StatusNormalClosure, and
// Read and Write fail from then on with an error wrapping net.ErrClosed,
// as a net.Conn's do. ctx bounds the net.Conn's life: once it ends, Read
// and Write fail.
//
// In session mode (a server that uses tether's Handler) the stream survives
// what c survives: dropped links, reconnects and moves between WebSocket and
// long polling. Every byte is delivered exactly once and in order, in both
// directions, for as long as the server keeps the session. If the session
// is lost (ErrSessionLost), the stream is broken: Read and Write fail from
// then on, and never carry bytes into the new session. A byte stream has no
// message boundaries, so a Write larger than the Handler takes in one
// message (WithHandlerReadLimit) goes as several messages, each within it.
// A text NetConn (MessageText) sends only valid UTF-8, since the Handler
// ends the Conn for a text message that is not: each Write must hold whole
// runes, or it fails with an error wrapping ErrInvalidUTF8 and sends
// nothing, and a Write cut into messages is cut between runes. Use
// MessageBinary for arbitrary bytes.
//
// In plain mode the stream lives as long as the first link it runs on:
// bytes in flight when a link drops may be lost, so the stream cannot go on
// over the next link. Once that link is lost, Read returns the bytes that
// had arrived and then io.EOF if the server closed it with StatusNormalClosure
// or StatusGoingAway, else an error wrapping ErrLinkLost; Write fails with an
// error wrapping ErrLinkLost. c itself reconnects as usual.
//
// Deadlines work as on coder/websocket's NetConn: a Read or Write waiting
// when its deadline passes returns an error that is a net.Error whose
// Timeout is true, and that wraps os.ErrDeadlineExceeded and
// context.DeadlineExceeded; later calls fail at once until the deadline is
// moved. Unlike coder/websocket's, a deadline never closes the link, and a
// call cut short by its deadline loses nothing: a Read returns before any
// byte of a new message is taken, and a message that has begun to arrive is
// read to its end first; a Write that has not begun to send sends nothing,
// while one caught in the middle of sending finishes in the background (its
// error then wraps ErrInFlight too, and reports all of p written). In
// session mode a Write cut into several messages whose deadline passes
// between two of them reports the bytes of those already numbered, which
// are delivered, and sends nothing of the rest.
//
// A Read with a message of another type closes c with
// StatusUnsupportedData and fails, as coder/websocket's does. LocalAddr and
// RemoteAddr are those of coder/websocket's NetConn for a dialed Conn: the
// network "websocket" and the address "websocket/unknown-addr".
func NetConn(ctx context.Context, c *Conn, typ websocket.MessageType) net.Conn {
	c.SetReadLimit(-1)
	nc := &netConn{c: c, typ: typ}
	nc.ctx, nc.cancel = context.WithCancelCause(ctx)
	nc.rdl.init(nc.ctx)
	nc.wdl.init(nc.ctx)
	return nc
}

type netConn struct {
	c      *Conn
	typ    websocket.MessageType
	ctx    context.Context
	cancel context.CancelCauseFunc // with net.ErrClosed, by Close

	rdl, wdl deadline

	// What the stream is pinned to, set by the first Read or Write: the
	// session in session mode, the link in plain mode.
	pinMu  sync.Mutex
	pinned bool
	seq    *seqState
	link   *liveLink

	rmu  sync.Mutex
	cur  io.Reader // the message being read, until io.EOF
	rerr error     // sticky: why Read can go no further

	wmu  sync.Mutex
	werr error // sticky: why Write can go no further
}

var _ net.Conn = (*netConn)(nil)

func (nc *netConn) Read(p []byte) (int, error) {
	nc.rmu.Lock()
	defer nc.rmu.Unlock()
	for {
		if err := nc.closed("read"); err != nil {
			return 0, err
		}
		if nc.rerr != nil {
			return 0, nc.rerr
		}
		ctx, err := nc.rdl.check("read")
		if err != nil {
			return 0, err
		}
		if nc.cur == nil {
			if err := nc.pin(ctx); err != nil {
				return 0, nc.readErr(ctx, err)
			}
			typ, r, err := nc.c.nextMessage(ctx, nc.link)
			if err != nil {
				return 0, nc.readErr(ctx, err)
			}
			if typ != nc.typ {
				err := fmt.Errorf("tether: NetConn: read a %v message, want %v", typ, nc.typ)
				nc.rerr = err
				_ = nc.c.Close(websocket.StatusUnsupportedData, err.Error())
				return 0, err
			}
			nc.cur = r
		}
		n, err := nc.cur.Read(p)
		if errors.Is(err, io.EOF) {
			nc.cur = nil
			err = nil
		}
		if err != nil {
			// A message cut by a dropped plain link: the stream has a hole.
			nc.rerr = fmt.Errorf("tether: NetConn: %w", err)
			return n, nc.rerr
		}
		if n > 0 || len(p) == 0 {
			return n, nil
		}
	}
}

// readErr turns why no message came, to a Read that waited with ctx, into
// its error, and keeps it when the stream can go no further.
func (nc *netConn) readErr(ctx context.Context, err error) error {
	if err2 := nc.deadlineErr(ctx, &nc.rdl, "read"); err2 != nil {
		return err2
	}
	switch {
	case errors.Is(err, errPinLost):
		cause := errors.New("link closed")
		if nc.link.failed() {
			cause = nc.link.err
		}
		if code := websocket.CloseStatus(cause); code == websocket.StatusNormalClosure || code == websocket.StatusGoingAway {
			nc.rerr = io.EOF
		} else {
			nc.rerr = fmt.Errorf("tether: NetConn: %w: %w", ErrLinkLost, cause)
		}
	case errors.Is(err, ErrSessionLost):
		nc.rerr = fmt.Errorf("tether: NetConn: the byte stream is broken: %w", err)
	case nc.c.isFinal(err):
		if code := websocket.CloseStatus(err); code == websocket.StatusNormalClosure || code == websocket.StatusGoingAway {
			nc.rerr = io.EOF
		} else {
			nc.rerr = fmt.Errorf("tether: NetConn: %w", err)
		}
	default:
		return fmt.Errorf("tether: NetConn: %w", err)
	}
	return nc.rerr
}

func (nc *netConn) Write(p []byte) (int, error) {
	nc.wmu.Lock()
	defer nc.wmu.Unlock()
	if err := nc.closed("write"); err != nil {
		return 0, err
	}
	if nc.werr != nil {
		return 0, nc.werr
	}
	ctx, err := nc.wdl.check("write")
	if err != nil {
		return 0, err
	}
	if err := nc.pin(ctx); err != nil {
		return 0, nc.writeErr(ctx, err)
	}
	if nc.seq != nil && nc.typ == websocket.MessageText && !utf8.Valid(p) {
		// The Handler would close the Conn for it (1007).
		return 0, fmt.Errorf("tether: NetConn write: %w: in session mode a text NetConn takes whole runes in each Write", ErrInvalidUTF8)
	}
	n, err := nc.c.writeOn(ctx, nc.typ, p, nc.accept)
	if err == nil {
		return n, nil
	}
	if errors.Is(err, ErrInFlight) {
		// The rest of the message goes out behind what is in the socket.
		return len(p), &timeoutError{op: "write", err: ErrInFlight}
	}
	return n, nc.writeErr(ctx, err)
}

// writeErr turns why a Write that waited with ctx failed into its error,
// and keeps it when the stream can go no further.
func (nc *netConn) writeErr(ctx context.Context, err error) error {
	if err2 := nc.deadlineErr(ctx, &nc.wdl, "write"); err2 != nil {
		return err2
	}
	if errors.Is(err, ErrLinkLost) || errors.Is(err, ErrSessionLost) || nc.c.isFinal(err) {
		nc.werr = fmt.Errorf("tether: NetConn: %w", err)
		return nc.werr
	}
	return fmt.Errorf("tether: NetConn: %w", err)
}

// accept reports whether l carries the stream, for writeOn.
func (nc *netConn) accept(l *liveLink) error {
	switch {
	case nc.link != nil && l != nc.link:
		cause := error(errors.New("link replaced"))
		if nc.link.failed() {
			cause = nc.link.err
		}
		return fmt.Errorf("%w: %w", ErrLinkLost, cause)
	case nc.seq != nil && l.seq != nc.seq:
		return fmt.Errorf("tether: the byte stream is broken: %w", ErrSessionLost)
	}
	return nil
}

// pin ties the stream to the Conn's session, or in plain mode to its link,
// once there is a live link.
func (nc *netConn) pin(ctx context.Context) error {
	nc.pinMu.Lock()
	defer nc.pinMu.Unlock()
	for !nc.pinned {
		l := nc.c.live.Load()
		if l == nil {
			if err := nc.c.awaitLink(ctx); err != nil {
				return err
			}
			continue
		}
		if l.seq != nil {
			nc.seq = l.seq
		} else {
			nc.link = l
		}
		nc.pinned = true
	}
	return nil
}

// deadlineErr returns the deadline's error if ctx, a call's, was ended by
// its deadline, or the deadline has passed, or the net.Conn's ctx has
// ended.
func (nc *netConn) deadlineErr(ctx context.Context, d *deadline, op string) error {
	if errors.Is(context.Cause(ctx), errDeadline) {
		// Even if the deadline has been moved since.
		return &timeoutError{op: op}
	}
	_, err := d.check(op)
	return err
}

// closed returns an error wrapping net.ErrClosed once Close has been
// called, as a net.Conn's calls do (HTTP/2 and gRPC look for it).
func (nc *netConn) closed(op string) error {
	if errors.Is(context.Cause(nc.ctx), net.ErrClosed) {
		return fmt.Errorf("tether: NetConn %s: %w", op, net.ErrClosed)
	}
	return nil
}

func (nc *netConn) Close() error {
	nc.cancel(net.ErrClosed)
	nc.rdl.stop()
	nc.wdl.stop()
	return nc.c.Close(websocket.StatusNormalClosure, "")
}

func (nc *netConn) LocalAddr() net.Addr  { return websocketAddr{} }
func (nc *netConn) RemoteAddr() net.Addr { return websocketAddr{} }

func (nc *netConn) SetDeadline(t time.Time) error {
	nc.rdl.set(t)
	nc.wdl.set(t)
	return nil
}

func (nc *netConn) SetReadDeadline(t time.Time) error {
	nc.rdl.set(t)
	return nil
}

func (nc *netConn) SetWriteDeadline(t time.Time) error {
	nc.wdl.set(t)
	return nil
}

type websocketAddr struct{}

func (websocketAddr) Network() string { return "websocket" }
func (websocketAddr) String() string  { return "websocket/unknown-addr" }

// deadline is one direction's deadline: a ctx for the calls that its timer
// cancels when the deadline passes, made anew when the deadline is moved
// after that.
type deadline struct {
	mu      sync.Mutex
	parent  context.Context
	ctx     context.Context
	cancel  context.CancelCauseFunc // with errDeadline when the deadline passes
	timer   stopper
	expired bool // ctx was ended by the deadline

	// afterFunc is time.AfterFunc, unless a test sets it.
	afterFunc func(time.Duration, func()) stopper
}

// stopper is the part of *time.Timer that deadline uses.
type stopper interface{ Stop() bool }

// errDeadline is the cause of a call's ctx ended by its deadline.
var errDeadline = errors.New("tether: NetConn: deadline exceeded")

func (d *deadline) init(parent context.Context) {
	d.parent = parent
	d.ctx, d.cancel = context.WithCancelCause(parent)
}

// check returns the ctx for a call, or its error when the deadline has
// passed or the net.Conn's ctx has ended.
func (d *deadline) check(op string) (context.Context, error) {
	d.mu.Lock()
	ctx, expired := d.ctx, d.expired
	d.mu.Unlock()
	if expired {
		return nil, &timeoutError{op: op}
	}
	if d.parent.Err() != nil {
		return nil, fmt.Errorf("tether: NetConn %s: %w", op, context.Cause(d.parent))
	}
	return ctx, nil
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fresh := d.expired || d.ctx.Err() != nil
	if d.timer != nil {
		if !d.timer.Stop() {
			// The old deadline's callback has run, or waits for d.mu, and
			// ends the ctx it was given: the calls under the new deadline
			// need another.
			fresh = true
		}
		d.timer = nil
	}
	if fresh {
		d.ctx, d.cancel = context.WithCancelCause(d.parent)
		d.expired = false
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		d.expired = true
		d.cancel(errDeadline)
		return
	}
	ctx, cancel := d.ctx, d.cancel
	after := d.afterFunc
	if after == nil {
		after = func(dur time.Duration, f func()) stopper { return time.AfterFunc(dur, f) }
	}
	d.timer = after(dur, func() {
		d.mu.Lock()
		if d.ctx == ctx {
			d.expired = true
		}
		d.mu.Unlock()
		cancel(errDeadline)
	})
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.cancel(net.ErrClosed)
}

// timeoutError is a NetConn call cut short by its deadline.
type timeoutError struct {
	op  string
	err error // ErrInFlight, for a Write caught while sending
}

func (e *timeoutError) Error() string {
	if e.err != nil {
		return "tether: NetConn " + e.op + ": deadline exceeded: " + e.err.Error()
	}
	return "tether: NetConn " + e.op + ": deadline exceeded"
}

func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() error   { return e.err }

// Is makes the error match os.ErrDeadlineExceeded, as a net.Conn's does,
// and context.DeadlineExceeded, as coder/websocket's NetConn's does.
func (e *timeoutError) Is(target error) bool {
	return target == os.ErrDeadlineExceeded || target == context.DeadlineExceeded
}

// nextMessage is Reader for NetConn: pinned to pin when it is set.
func (c *Conn) nextMessage(ctx context.Context, pin *liveLink) (websocket.MessageType, io.Reader, error) {
	m := c.rd.next(ctx, true, pin)
	if m.err != nil {
		return 0, nil, m.err
	}
	c.stats.msgsIn.Add(1)
	return m.typ, c.rd.sr, nil
}

// isFinal reports whether err is the error that ended the Conn for good.
func (c *Conn) isFinal(err error) bool {
	c.mu.Lock()
	final := c.final
	c.mu.Unlock()
	return final != nil && errors.Is(err, final)
}

// writeOn writes p on a live link that accept takes, waiting for one while
// the Conn reconnects, and never through the send queue: the queue goes to
// the next link whatever it is, and a byte stream must not. On a plain link
// p is one message. On a session link p is cut into messages no larger
// than the server told it takes (see streamChunk), since a message over
// that limit would end the Conn. It returns how much of p was sent, or
// numbered in session mode.
func (c *Conn) writeOn(ctx context.Context, typ websocket.MessageType, p []byte, accept func(*liveLink) error) (int, error) {
	off := 0
	for {
		l := c.live.Load()
		if l == nil {
			if err := c.awaitLink(ctx); err != nil {
				return off, err
			}
			continue
		}
		if err := accept(l); err != nil {
			return off, err
		}
		chunk := p[off:]
		if sl, ok := l.link.(*sessionLink); ok {
			chunk = streamChunk(typ, chunk, sl.limits.messageLimit())
		}
		err := l.write(ctx, typ, chunk)
		if err == nil {
			c.stats.msgsOut.Add(1)
			c.stats.bytesOut.Add(uint64(len(chunk)))
			off += len(chunk)
			if off == len(p) {
				return off, nil
			}
			continue
		}
		if refused(err) || ctx.Err() != nil {
			return off, err
		}
		l.fail(err)
		if !l.session {
			// Part of the message may have gone.
			return off, fmt.Errorf("%w: %w", ErrLinkLost, err)
		}
		// In session mode a failed Write was not numbered: the next link
		// takes it, once the supervisor has retired this one.
		select {
		case <-l.ctx.Done():
		case <-ctx.Done():
			return off, ctx.Err()
		}
	}
}

// streamChunk returns the first part of p that goes as one message of a
// byte stream to a peer that takes messages of limit bytes at most (-1:
// any): p whole when it fits, else limit bytes, cut in text at the start of
// a rune so that each message is valid UTF-8. A first rune longer than
// limit is returned whole, for the link to refuse.
func streamChunk(typ websocket.MessageType, p []byte, limit int64) []byte {
	if limit < 0 || int64(len(p)) <= limit {
		return p
	}
	n := int(limit)
	if typ != websocket.MessageText {
		return p[:n]
	}
	for i := n; i > 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			return p[:i]
		}
	}
	_, size := utf8.DecodeRune(p)
	return p[:size]
}
