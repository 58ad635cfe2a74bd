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

	ackMu    sync.Mutex
	ackArmed bool
	ackTimer *time.Timer
}

// frameTransport carries session frames: a WebSocket or HTTP long polling.
type frameTransport interface {
	readFrame(ctx context.Context) (frame.Frame, error)
	// writeFrame sends f; the session's seq.mu is held, which keeps frames in
	// order.
	writeFrame(f *frame.Frame) error
	Ping(ctx context.Context) error
	Close(code websocket.StatusCode, reason string) error
	CloseNow() error
}

// sessionLink is a link in session mode: messages are numbered, acknowledged
// and replayed over whichever transport is below.
type sessionLink struct {
	lost error // set when this link opened a new session in place of a lost one
	c    *Conn
	s    *clientSession
	t    frameTransport
	live *liveLink // set once the link is live
}

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
		var ackErr error
		ackNow := deliver && s.seq.needAck(ackEvery)
		if ackNow {
			af := s.seq.ackFrame()
			ackErr = l.t.writeFrame(&af)
		}
		s.seq.mu.Unlock()
		if err != nil {
			return 0, nil, err
		}
		if ackErr != nil && l.live != nil {
			// The message is ours already; the next read finds the link dead.
			l.live.fail(ackErr)
		}
		if deliver {
			if !ackNow {
				l.c.armAck(s)
			}
			return msgType(f.Binary), f.Payload, nil
		}
	}
}

// Write numbers the message, keeps it for replay and sends it. A transport
// error fails the link but not the Write: the message is replayed on the
// next link.
func (l *sessionLink) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	s := l.s
	s.seq.mu.Lock()
	defer s.seq.mu.Unlock()
	for {
		f, ok := s.seq.add(typ, p)
		if ok {
			if err := l.t.writeFrame(&f); err != nil && l.live != nil {
				l.live.fail(err)
			}
			return nil
		}
		var dead <-chan struct{}
		if l.live != nil {
			dead = l.live.dead
		}
		if err := s.seq.waitRoom(ctx, dead); err != nil {
			return fmt.Errorf("tether: waiting for acknowledgements: %w", err)
		}
	}
}

func (l *sessionLink) Ping(ctx context.Context) error { return l.t.Ping(ctx) }

func (l *sessionLink) Close(code websocket.StatusCode, reason string) error {
	return l.t.Close(code, reason)
}

func (l *sessionLink) CloseNow() error { return l.t.CloseNow() }

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
	l := c.live.Load()
	if l == nil {
		return
	}
	sl, ok := l.link.(*sessionLink)
	if !ok || sl.s != s {
		return
	}
	s.seq.mu.Lock()
	defer s.seq.mu.Unlock()
	if s.seq.recv == s.seq.ackSent {
		return
	}
	f := s.seq.ackFrame()
	if err := sl.t.writeFrame(&f); err != nil {
		l.fail(err)
	}
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
	ack := s.seq.recv
	s.seq.mu.Unlock()
	h.Set(headerSession, fmt.Sprintf("%x", s.id))
	h.Set(headerSecret, fmt.Sprintf("%x", s.secret))
	h.Set(headerAck, strconv.FormatUint(ack, 10))
}

// startSession takes the server's Hello on a new link: it resumes the
// Conn's session, or starts a new one (reporting the old one lost), and
// replays what the server has not acknowledged.
func (c *Conn) startSession(t frameTransport, hello frame.Frame) (*sessionLink, error) {
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
		s = &clientSession{seq: newSeqState(DefaultReplayBytes), id: hello.Session, secret: hello.Secret}
		c.sess = s
	}
	c.mu.Unlock()

	s.seq.mu.Lock()
	var err error
	for _, f := range s.seq.unacked(hello.Ack) {
		if err = t.writeFrame(&f); err != nil {
			break
		}
	}
	s.seq.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("tether: replaying to the server: %w", err)
	}
	sl := &sessionLink{c: c, s: s, t: t}
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
	buf []byte // encoding buffer, used under the session's seq.mu
}

func (w *wsFrames) readFrame(ctx context.Context) (frame.Frame, error) {
	typ, b, err := w.ws.Read(ctx)
	if err != nil {
		return frame.Frame{}, err
	}
	if typ != websocket.MessageBinary {
		return frame.Frame{}, errors.New("tether: text message on a tether.v1 link")
	}
	return frame.Decode(b)
}

func (w *wsFrames) writeFrame(f *frame.Frame) error {
	w.buf = frame.Append(w.buf[:0], f)
	err := w.ws.Write(context.Background(), websocket.MessageBinary, w.buf)
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
