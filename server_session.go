package tether

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// Session is one client of a Handler, across links and transports. Read,
// Write and Close may be called from any goroutine; Read calls are served
// one at a time.
type Session struct {
	h      *Handler
	id     [16]byte
	secret [16]byte
	idStr  string
	plain  *websocket.Conn // plain mode: the client's only connection

	ctx    context.Context
	cancel context.CancelCauseFunc

	win    window     // the session's window, both ways (see window)
	seq    *seqState  // numbering, replay, and the order of transmissions
	wbuf   []byte     // frame encoding buffer, used under seq.wmu
	recvMu sync.Mutex // one receiver at a time, even while links change
	// rd serves Read: on the serve goroutine itself while it waits in Read
	// (no goroutine hop per message), by a background reader otherwise.
	// Messages from long polling are delivered into it.
	rd *reader

	linkMu    sync.Mutex    // guards the fields below
	ws        *liveLink     // the current WebSocket link, or nil
	wsDone    chan struct{} // closed when ws's watcher has returned
	poll      *pollLink
	transport Transport
	ttl       *time.Timer
	ackTimer  *time.Timer
	ackArmed  bool
	ended     bool
	endErr    error
	endCode   websocket.StatusCode // what the client is told, once ended
	endReason string
}

func newSession(h *Handler) *Session {
	s := &Session{h: h, win: window{h.opts.replayBytes, defaultWindowMsgs}, rd: newReader()}
	s.seq = newSeqState(s.win)
	s.rd.onTake = s.took
	_, _ = rand.Read(s.id[:])
	_, _ = rand.Read(s.secret[:])
	s.idStr = hex.EncodeToString(s.id[:])
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	s.ttl = time.AfterFunc(h.opts.sessionTTL, s.expire)
	s.ackTimer = time.AfterFunc(time.Hour, s.sendDelayedAck)
	s.ackTimer.Stop()
	return s
}

// hello returns the Hello that greets the client on a new link; s.seq.mu is
// held.
func (s *Session) hello(status frame.Status) frame.Frame {
	return frame.Frame{Kind: frame.Hello, Status: status, Session: s.id, Secret: s.secret, Ack: s.seq.taken,
		WindowBytes: uint64(s.win.bytes), WindowMessages: uint64(s.win.msgs)}
}

// ID returns the session id (32 hex digits; "plain-" and 16 hex digits for a
// plain WebSocket client).
func (s *Session) ID() string { return s.idStr }

// Transport returns the transport of the session's current (or last) link.
func (s *Session) Transport() Transport {
	if s.plain != nil {
		return WebSocket
	}
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return s.transport
}

// Read returns the client's next message. It fails when ctx ends or the
// session has ended: with ErrSessionLost when the client did not come back
// in time, with a websocket.CloseError when the client closed.
func (s *Session) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	if s.plain != nil {
		return s.plain.Read(ctx)
	}
	m := s.rd.read(ctx)
	if m.err != nil {
		if s.ctx.Err() != nil {
			// serve's own ctx ends with the session: say why.
			return 0, nil, s.endError()
		}
		return 0, nil, m.err
	}
	return m.typ, m.p, nil
}

// Write sends a message to the client. While the client is away it is kept
// for replay; while the client is connected but slow to acknowledge, Write
// waits for room in the replay buffer or for ctx to end.
func (s *Session) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if s.plain != nil {
		return s.plain.Write(ctx, typ, p)
	}
	for {
		if s.isEnded() {
			return s.endError()
		}
		s.seq.wmu.Lock()
		s.seq.mu.Lock()
		f, ok := s.seq.add(typ, p)
		if ok {
			l := s.prepare(&f)
			s.seq.mu.Unlock()
			s.send(l)
			s.seq.wmu.Unlock()
			return nil
		}
		room := s.seq.roomChan()
		s.seq.mu.Unlock()
		s.seq.wmu.Unlock()
		if !s.hasLink() {
			err := fmt.Errorf("tether: session %s: replay buffer full while the client is away: %w", s.idStr, ErrSessionLost)
			s.end(websocket.StatusPolicyViolation, "replay buffer overflow", err)
			return err
		}
		if err := waitRoom(ctx, room, s.ctx.Done()); err != nil {
			if errors.Is(err, errSessionDone) || s.ctx.Err() != nil {
				return s.endError()
			}
			return fmt.Errorf("tether: session write: %w", err)
		}
	}
}

// Close ends the session: the client's Conn is closed with code and reason
// and does not reconnect.
func (s *Session) Close(code websocket.StatusCode, reason string) error {
	if s.plain != nil {
		return s.plain.Close(code, reason)
	}
	if s.isEnded() {
		return fmt.Errorf("tether: session close: %w", net.ErrClosed)
	}
	s.end(code, reason, fmt.Errorf("tether: session closed: %w", net.ErrClosed))
	return nil
}

func (s *Session) isEnded() bool {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return s.ended
}

func (s *Session) hasLink() bool {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return s.ws != nil || s.poll != nil
}

func (s *Session) endError() error {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if s.endErr == nil {
		return errSessionDone
	}
	return s.endErr
}

// take handles one frame from the client, whichever transport, and returns
// the message to deliver, if any. s.recvMu is held: frames are numbered and
// delivered one at a time, so that an old link's last request and a new
// link's first frames cannot overtake each other.
func (s *Session) take(f *frame.Frame) (message, bool, error) {
	switch f.Kind {
	case frame.Data, frame.Ack:
	case frame.Close:
		s.end(websocket.StatusCode(f.Code), f.Reason, websocket.CloseError{Code: websocket.StatusCode(f.Code), Reason: f.Reason})
		return message{}, false, nil
	default:
		return message{}, false, fmt.Errorf("tether: unexpected %v frame from client", f.Kind)
	}
	s.seq.mu.Lock()
	deliver, err := s.seq.receive(f)
	s.seq.mu.Unlock()
	if err != nil || !deliver {
		return message{}, false, err
	}
	return message{typ: msgType(f.Binary), p: f.Payload, owner: s.seq}, true, nil
}

// took acknowledges a message of n bytes serve has read: at once every
// ackEvery messages or ackEveryBytes, after ackDelay otherwise, unless
// outgoing traffic carries the ack first. It runs on the Read's goroutine.
func (s *Session) took(seq *seqState, n int) {
	if due, now := seq.take(n); due && (!now || !s.sendAck(false)) {
		s.armAck()
	}
}

// armAck schedules a delayed ack-only frame, once per window.
func (s *Session) armAck() {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if !s.ackArmed && !s.ended {
		s.ackArmed = true
		s.ackTimer.Reset(ackDelay)
	}
}

// ackDelay is how long a side waits for outgoing traffic to carry an ack
// before it sends an ack-only frame.
const ackDelay = 20 * time.Millisecond

func (s *Session) sendDelayedAck() {
	s.linkMu.Lock()
	s.ackArmed = false
	s.linkMu.Unlock()
	s.sendAck(true)
}

// sendAck tells the client what serve has read, if it was not told yet: an
// ack-only frame on WebSocket, the waiting poll's answer on long polling.
// Unless wait is set, it gives up and reports false when a Write is
// transmitting (see lockWrites).
func (s *Session) sendAck(wait bool) bool {
	if !s.seq.lockWrites(wait) {
		return false
	}
	defer s.seq.wmu.Unlock()
	s.seq.mu.Lock()
	if !s.seq.ackDue() {
		s.seq.mu.Unlock()
		return true
	}
	s.linkMu.Lock()
	polling := s.poll != nil && s.ws == nil
	s.linkMu.Unlock()
	var l *liveLink
	if polling {
		// The poll's answer carries the ack (see unsent).
		l = s.prepare(nil)
	} else {
		f := s.seq.ackFrame()
		l = s.prepare(&f)
	}
	s.seq.mu.Unlock()
	s.send(l)
	return true
}

// expire ends a session whose client did not come back within the TTL.
func (s *Session) expire() {
	s.linkMu.Lock()
	l, poll := s.ws, s.poll
	s.linkMu.Unlock()
	if l != nil || (poll != nil && poll.busy()) {
		return
	}
	s.end(websocket.StatusGoingAway, "session expired", fmt.Errorf("tether: session %s expired: %w", s.idStr, ErrSessionLost))
}

// end ends the session once: its serve ctx is cancelled, Read and Write fail
// with err, and the client is told with code and reason.
func (s *Session) end(code websocket.StatusCode, reason string, err error) {
	s.linkMu.Lock()
	if s.ended {
		s.linkMu.Unlock()
		return
	}
	s.ended, s.endErr = true, err
	s.endCode, s.endReason = code, reason
	l, poll := s.ws, s.poll
	s.ws, s.wsDone, s.poll = nil, nil, nil
	s.ttl.Stop()
	s.ackTimer.Stop()
	s.linkMu.Unlock()
	// A lost session leaves no tombstone: the client is told it is lost.
	s.h.forget(s, code, reason, !errors.Is(err, ErrSessionLost))
	if l != nil {
		// Tell the client before the link's watcher wakes up and drops it.
		_ = l.Close(code, clipReason(reason))
		l.fail(err)
	}
	if poll != nil {
		poll.closeWith(code, reason)
	}
	s.rd.end(err)
	s.cancel(err)
}
