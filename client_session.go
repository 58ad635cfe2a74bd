package tether

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// headerProtocol is set by the Handler on its 101 answer, so that a client
// knows a server that echoed tether.v1 really speaks it (some servers pick
// the client's first subprotocol, whatever it is).
const headerProtocol = "Tether-Protocol"

// clientSession is the client's side of a session, kept across links.
type clientSession struct {
	seq    *seqState
	id     [16]byte
	secret [16]byte
	ahead  window // what a link reads ahead: the server's window (helloWindow)

	ackMu    sync.Mutex
	ackArmed bool
	ackTimer *time.Timer
}

// frameTransport carries session frames: a WebSocket or HTTP long polling.
type frameTransport interface {
	readFrame(ctx context.Context) (frame.Frame, error)
	// prepare encodes f, or queues a copy of it, for the next send; the
	// session's seq.mu is held, and its seq.wmu once the link is live, so the
	// payload (the replay buffer's copy) is read under seq.mu only.
	prepare(f frame.Frame)
	// send transmits what prepare prepared; the session's seq.wmu is held. A
	// ctx that can end closes a WebSocket link when it ends during the write
	// (coder/websocket's rule), so the hot path passes context.Background().
	send(ctx context.Context) error
	Ping(ctx context.Context) error
	Close(code websocket.StatusCode, reason string) error
	CloseNow() error
}

// sessionLink is a link in session mode: messages are numbered, acknowledged
// and replayed over whichever transport is below.
type sessionLink struct {
	lost    error // set when this link opened a new session in place of a lost one
	c       *Conn
	s       *clientSession
	t       frameTransport
	live    *liveLink  // set once the link is live
	peerAck uint64     // the server's ack in its Hello: replay what follows
	limits  peerLimits // what the server told on this link's handshake
}

// Read returns the next new message from the server. Acknowledging it is
// left to the Conn's reader, once the application has read it (see took).
func (l *sessionLink) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	s := l.s
	for {
		f, err := l.t.readFrame(ctx)
		if err != nil {
			return 0, nil, err
		}
		switch f.Kind {
		case frame.Data, frame.Ack:
		case frame.Close:
			return 0, nil, fmt.Errorf("tether: session closed by the server: %w",
				websocket.CloseError{Code: websocket.StatusCode(f.Code), Reason: f.Reason})
		default:
			return 0, nil, fmt.Errorf("tether: unexpected %v frame from the server", f.Kind)
		}
		s.seq.mu.Lock()
		deliver, err := s.seq.receive(&f)
		s.seq.mu.Unlock()
		if err != nil {
			return 0, nil, err
		}
		if deliver {
			return msgType(f.Binary), f.Payload, nil
		}
	}
}

// Write numbers the message, keeps it for replay and sends it. A transport
// error fails the link but not the Write: the message is replayed on the
// next link. A message the server told this link it would refuse is never
// numbered, whatever path it came by: it fails with a *refusedError, and the
// link is unharmed.
func (l *sessionLink) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if err := checkNumbered(typ, p, l.limits.messageLimit(), "server"); err != nil {
		return &refusedError{err: err}
	}
	s := l.s
	for {
		s.seq.wmu.Lock()
		if l.live != nil && (l.live.failed() || l.live.ctx.Err() != nil) {
			// Not numbered on a dead link, nor on one taken out of use (a
			// move between transports retires a link that has not failed):
			// the Write goes to the next link, after that link's replay. A
			// Write numbered here after that replay would never be sent.
			s.seq.wmu.Unlock()
			if l.live.failed() {
				return l.live.err
			}
			return errLinkRetired
		}
		s.seq.mu.Lock()
		f, ok := s.seq.add(typ, p)
		if ok {
			l.t.prepare(f)
			s.seq.mu.Unlock()
			err := l.t.send(context.Background())
			s.seq.wmu.Unlock()
			if err != nil && l.live != nil {
				l.live.fail(err)
			}
			return nil
		}
		room := s.seq.roomChan()
		s.seq.mu.Unlock()
		s.seq.wmu.Unlock()
		var dead <-chan struct{}
		if l.live != nil {
			dead = l.live.dead
		}
		if err := waitRoom(ctx, room, dead); err != nil {
			return fmt.Errorf("tether: waiting for acknowledgements: %w", err)
		}
	}
}

// refusedError is a message a session link would not number (see
// checkNumbered): the link is sound and the message must not be retried on
// another.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// refused reports whether err is a session link's refusal of a message.
func refused(err error) bool {
	var r *refusedError
	return errors.As(err, &r)
}

// errLinkRetired is what a Write gets from a link taken out of use.
var errLinkRetired = errors.New("tether: link retired")

func (l *sessionLink) Ping(ctx context.Context) error { return l.t.Ping(ctx) }

func (l *sessionLink) Close(code websocket.StatusCode, reason string) error {
	return l.t.Close(code, reason)
}

func (l *sessionLink) CloseNow() error { return l.t.CloseNow() }

// replay sends what the server has not acknowledged, before anything else
// is sent on the link. It runs once the link is read: the server replays to
// the client at the same time, and a side that wrote megabytes without
// reading would wait for the other for ever. The payloads are copied, since
// they are sent outside seq.mu; seq.wmu keeps new Writes behind them. ctx ends
// the replay, closing the link, when the Conn closes; so does the link
// failing meanwhile.
func (l *sessionLink) replay(ctx context.Context) error {
	s := l.s
	s.seq.wmu.Lock()
	defer s.seq.wmu.Unlock()
	s.seq.mu.Lock()
	fs := s.seq.unacked(l.peerAck)
	for i := range fs {
		fs[i].Payload = append([]byte(nil), fs[i].Payload...)
	}
	// Messages read since the handshake told the server how far we were
	// are acknowledged soon, even if nothing else is sent.
	due := s.seq.ackDue()
	s.seq.mu.Unlock()
	if due {
		l.c.armAck(s)
	}
	if len(fs) == 0 {
		return nil
	}
	ctx, cancel := untilDead(ctx, l.live)
	defer cancel()
	for _, f := range fs {
		l.t.prepare(f)
		if err := l.t.send(ctx); err != nil {
			return fmt.Errorf("tether: replaying to the server: %w", err)
		}
	}
	return nil
}

// took acknowledges a message of n bytes the application has read: at once
// every ackEvery messages or ackEveryBytes, after ackDelay otherwise, unless
// outgoing traffic carries the ack first. It runs on the Read's goroutine.
func (c *Conn) took(seq *seqState, n int) {
	due, now := seq.take(n)
	if !due {
		return
	}
	var s *clientSession
	if l := c.live.Load(); l != nil {
		if sl, ok := l.link.(*sessionLink); ok {
			s = sl.s // the common case, without taking c.mu
		}
	}
	if s == nil || s.seq != seq {
		c.mu.Lock()
		s = c.sess
		c.mu.Unlock()
	}
	if s == nil || s.seq != seq {
		return // a message of a session lost since
	}
	if !now || !c.sendAck(s, false) {
		c.armAck(s)
	}
}

// armAck schedules an ack-only frame after ackDelay unless outgoing traffic
// carries the ack first.
func (c *Conn) armAck(s *clientSession) {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	if s.ackArmed {
		return
	}
	s.ackArmed = true
	if s.ackTimer == nil {
		s.ackTimer = time.AfterFunc(ackDelay, func() { c.sendDelayedAck(s) })
		return
	}
	s.ackTimer.Reset(ackDelay)
}

func (c *Conn) sendDelayedAck(s *clientSession) {
	s.ackMu.Lock()
	s.ackArmed = false
	s.ackMu.Unlock()
	c.sendAck(s, true)
}

// sendAck sends an ack-only frame on the live link if the application has
// read messages the server was not told of. Unless wait is set, it gives up
// and reports false when a Write is transmitting (see lockWrites).
func (c *Conn) sendAck(s *clientSession, wait bool) bool {
	l := c.live.Load()
	if l == nil {
		return true // the next link's handshake carries the ack
	}
	sl, ok := l.link.(*sessionLink)
	if !ok || sl.s != s {
		return true
	}
	if !s.seq.lockWrites(wait) {
		return false
	}
	defer s.seq.wmu.Unlock()
	s.seq.mu.Lock()
	if !s.seq.ackDue() {
		s.seq.mu.Unlock()
		return true
	}
	sl.t.prepare(s.seq.ackFrame())
	s.seq.mu.Unlock()
	if err := sl.t.send(context.Background()); err != nil {
		l.fail(err)
	}
	return true
}

// stopAcks stops the delayed-ack timer of the current session.
func (c *Conn) stopAcks() {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s == nil {
		return
	}
	s.ackMu.Lock()
	if s.ackTimer != nil {
		s.ackTimer.Stop()
	}
	s.ackMu.Unlock()
}

// dropSession forgets a session the server has ended, so that the next link
// opens a new one; the application is told it was lost.
func (c *Conn) dropSession() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil {
		c.sess.ackMu.Lock()
		if c.sess.ackTimer != nil {
			c.sess.ackTimer.Stop()
		}
		c.sess.ackMu.Unlock()
		c.sess = nil
		c.sessDropped = true
	}
}

// resumeHeaders adds what a server needs to resume the Conn's session.
func (c *Conn) resumeHeaders(h http.Header) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s == nil {
		return
	}
	s.seq.mu.Lock()
	ack := s.seq.taken
	s.seq.mu.Unlock()
	h.Set(headerSession, fmt.Sprintf("%x", s.id))
	h.Set(headerSecret, fmt.Sprintf("%x", s.secret))
	h.Set(headerAck, strconv.FormatUint(ack, 10))
}

// startSession takes the server's Hello on a new link: it resumes the
// Conn's session, or starts a new one (reporting the old one lost), and
// replays what the server has not acknowledged.
func (c *Conn) startSession(t frameTransport, hello frame.Frame, limits peerLimits) (*sessionLink, error) {
	switch {
	case hello.Kind == frame.Close:
		c.dropSession()
		return nil, fmt.Errorf("tether: session closed by the server: %w",
			websocket.CloseError{Code: websocket.StatusCode(hello.Code), Reason: hello.Reason})
	case hello.Kind != frame.Hello:
		return nil, fmt.Errorf("tether: expected a Hello frame, got %v", hello.Kind)
	}
	c.mu.Lock()
	s := c.sess
	lost := c.sessDropped
	c.sessDropped = false
	if s == nil || hello.Status != frame.StatusResumed || hello.Session != s.id {
		lost = lost || s != nil
		if s != nil {
			s.ackMu.Lock()
			if s.ackTimer != nil {
				s.ackTimer.Stop()
			}
			s.ackMu.Unlock()
		}
		s = &clientSession{seq: newSeqState(window{}), id: hello.Session, secret: hello.Secret}
		c.sess = s
	}
	c.mu.Unlock()
	// Every Hello says the session's window: keep to it.
	replay, ahead := helloWindow(&hello)
	s.seq.mu.Lock()
	s.seq.setWindow(replay)
	s.seq.mu.Unlock()
	s.ahead = ahead

	// What the server has not acknowledged is replayed once the link is
	// read (see replay).
	sl := &sessionLink{c: c, s: s, t: t, peerAck: hello.Ack, limits: limits}
	c.server.Store(&sl.limits)
	if lost {
		c.logf(slog.LevelWarn, "session lost: the server did not resume it", WebSocket, 0)
		sl.lost = fmt.Errorf("tether: the server could not resume the session; messages may be missing: %w", ErrSessionLost)
		c.rd.mu.Lock()
		c.rd.lost = sl.lost
		c.rd.mu.Unlock()
	}
	return sl, nil
}

// wsFrames carries session frames over a WebSocket.
type wsFrames struct {
	ws  *websocket.Conn
	rb  readBuf // used by one reader at a time
	buf []byte  // encoding buffer, used under the session's seq.wmu
}

func (w *wsFrames) readFrame(ctx context.Context) (frame.Frame, error) {
	typ, b, owned, err := w.rb.read(ctx, w.ws)
	if err != nil {
		return frame.Frame{}, err
	}
	if typ != websocket.MessageBinary {
		return frame.Frame{}, errors.New("tether: text message on a tether.v1 link")
	}
	f, err := frame.Decode(b)
	f.Payload = payloadCopy(f.Payload, owned)
	return f, err
}

func (w *wsFrames) prepare(f frame.Frame) { w.buf = frame.Append(w.buf[:0], &f) }

func (w *wsFrames) send(ctx context.Context) error {
	err := w.ws.Write(ctx, websocket.MessageBinary, w.buf)
	if cap(w.buf) > 64<<10 {
		w.buf = nil
	}
	return err
}

func (w *wsFrames) Ping(ctx context.Context) error { return w.ws.Ping(ctx) }

func (w *wsFrames) Close(code websocket.StatusCode, reason string) error {
	return w.ws.Close(code, reason)
}

func (w *wsFrames) CloseNow() error { return w.ws.CloseNow() }
