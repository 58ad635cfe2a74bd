package tether

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// Session is one client of a Handler, across links and transports. Read,
// Write and Close may be called from any goroutine; Read calls are served
// one at a time.
type Session struct {
	h         *Handler
	id        [16]byte
	secret    [16]byte
	idStr     string
	plain     bool   // a plain WebSocket client: no resume, one link
	clientKey string // for WithSessionsPerClient; under h.mu
	reserved  int64  // what the session holds of the buffer budget; under h.mu

	ctx    context.Context
	cancel context.CancelCauseFunc

	win    window     // the session's window, both ways (see window)
	seq    *seqState  // numbering, replay, and the order of transmissions
	wbuf   []byte     // frame encoding buffer, used under seq.wmu
	wout   []byte     // the frame prepare encoded for send, under seq.wmu
	wbig   *[]byte    // wout's pooled buffer, for a large frame
	recvMu sync.Mutex // one receiver at a time, even while links change
	// gapAt and gaps count the links that showed a gap in the client's
	// numbering while it stood at gapAt (see gapped); under recvMu.
	gapAt uint64
	gaps  int
	// rd serves Read: on the serve goroutine itself while it waits in Read
	// (no goroutine hop per message), by a background reader otherwise.
	// Messages from long polling are delivered into it.
	rd *reader

	used atomic.Bool // a message went either way (see WithUnusedSessionTTL)
	// clientLimit is the client's read limit plus one, as its last link's
	// handshake told it (see Write); 0 when it told none.
	clientLimit atomic.Int64

	handedOver bool        // taken over from another instance's Shutdown
	lease      Lease       // the session's lease in the cluster; under h.cl.mu
	frozen     bool        // parked for a handoff: Writes fail; under seq.wmu
	sawStop    atomic.Bool // Read returned ErrShuttingDown
	served     atomic.Bool // serve returned after that: Shutdown takes over

	rcMu   sync.Mutex
	rc     *readCtx // the ctx the last Read ran with (see readCtx)
	rcDone bool     // the session has ended: Reads need no readCtx

	linkMu    sync.Mutex    // guards the fields below
	ws        *liveLink     // the current WebSocket link, or nil
	wsDone    chan struct{} // closed when ws's watcher has returned
	poll      *pollLink
	transport Transport
	ttl       *time.Timer
	awaySince time.Time // when the session last had no link
	ackTimer  *time.Timer
	ackArmed  bool
	ended     bool
	endErr    error
	endCode   websocket.StatusCode // what the client is told, once ended
	endReason string
}

// newSession returns a session with window w, whose serve ctx carries the
// values of parent, the ctx of the request that opened it, but not its end.
func newSession(h *Handler, parent context.Context, w window, plain bool) *Session {
	var id, secret [16]byte
	_, _ = rand.Read(id[:])
	_, _ = rand.Read(secret[:])
	return initSession(h, parent, w, plain, id, secret)
}

// initSession returns a session with the given id and secret: a new one, or
// one handed over by another instance.
func initSession(h *Handler, parent context.Context, w window, plain bool, id, secret [16]byte) *Session {
	s := &Session{h: h, win: w, plain: plain, rd: newReader(), id: id, secret: secret}
	s.seq = newSeqState(w)
	if plain {
		s.idStr = "plain-" + hex.EncodeToString(s.id[:8])
	} else {
		s.idStr = hex.EncodeToString(s.id[:])
		s.rd.onTake = s.took
	}
	s.ctx, s.cancel = context.WithCancelCause(context.WithoutCancel(parent))
	s.awaySince = time.Now()
	s.ttl = time.AfterFunc(h.opts.unusedTTL, s.expire)
	s.ackTimer = time.AfterFunc(time.Hour, s.sendDelayedAck)
	s.ackTimer.Stop()
	return s
}

// markUsed records that a message went either way: the session is kept for
// the full TTL from now on.
func (s *Session) markUsed() {
	if !s.used.Load() {
		s.used.Store(true)
	}
}

// awayLocked starts the TTL: the session has no link in use; s.linkMu is
// held.
func (s *Session) awayLocked() {
	s.awaySince = time.Now()
	s.ttl.Reset(s.ttlLocked())
}

// ttlLocked is how long the session waits for its client from awaySince.
func (s *Session) ttlLocked() time.Duration {
	if s.used.Load() {
		return s.h.opts.sessionTTL
	}
	return min(s.h.opts.unusedTTL, s.h.opts.sessionTTL)
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
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	return s.transport
}

// HandedOver reports whether the session was handed over by another
// instance's Shutdown (see WithCluster): serve runs for it again here, with
// the session's messages, counters and client intact. What serve kept in
// memory on the other instance is gone; keep what must survive a handoff
// elsewhere, or rebuild it from the client's messages.
func (s *Session) HandedOver() bool { return s.handedOver }

// Read returns the client's next message. It fails when ctx ends or the
// session has ended: with ErrSessionLost when the client did not come back
// in time, with a websocket.CloseError when the client closed. Once
// Handler.Shutdown has begun it fails with ErrShuttingDown, at once, even
// if messages are waiting: serve should return, and the client replays
// what it did not read to whoever serves the session next.
func (s *Session) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	rc := s.enterRead(ctx)
	m := s.rd.read(rc.ctx)
	s.leaveRead(rc)
	if m.err != nil {
		if s.ctx.Err() != nil {
			// serve's own ctx ends with the session: say why.
			return 0, nil, s.endError()
		}
		if ctx.Err() == nil && s.h.stopCtx.Err() != nil {
			s.sawStop.Store(true)
			return 0, nil, fmt.Errorf("tether: session %s: read: %w", s.idStr, ErrShuttingDown)
		}
		return 0, nil, m.err
	}
	return m.typ, m.p, nil
}

// Write sends a message to the client. While the client is away it is kept
// for replay. When the replay buffer is full (a client slow to acknowledge,
// or away), Write waits for room or for ctx to end; a client that stays
// away past the session's TTL makes it fail with ErrSessionLost. A text message
// must be valid UTF-8 (else the error wraps ErrInvalidUTF8). In session
// mode a message over the read limit the client told on its last handshake
// (a tether Conn tells its WithReadLimit) is refused before it is numbered,
// with an error wrapping ErrMessageTooLarge: the client would refuse it on
// every link. To a plain client, Write writes on the connection straight
// away: a ctx that ends during the write closes it.
func (s *Session) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if typ == websocket.MessageText && !utf8.Valid(p) {
		return fmt.Errorf("tether: session write: %w", errInvalidUTF8)
	}
	if s.plain {
		return s.writePlain(ctx, typ, p)
	}
	if err := checkNumbered(typ, p, s.clientLimit.Load()-1, "client"); err != nil {
		return fmt.Errorf("tether: session %s: %w", s.idStr, err)
	}
	s.markUsed()
	for {
		if s.isEnded() {
			return s.endError()
		}
		s.seq.wmu.Lock()
		if s.frozen {
			s.seq.wmu.Unlock()
			return fmt.Errorf("tether: session %s: write after the session was handed over: %w", s.idStr, ErrShuttingDown)
		}
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
		// Connected or away, a Write that does not fit waits for the
		// client's acknowledgements: a client away comes back with them
		// (a resume carries its ack), or the session expires with its
		// TTL and Write says it was lost. Ending the session at once
		// would lose it to any link that drops while the buffer is full,
		// a moment a loaded client often has.
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
		code, reason := websocket.StatusCode(f.Code), f.Reason
		if !validClientCode(code) {
			// Not a code a client may send: not one to keep and tell.
			code, reason = websocket.StatusProtocolError, "invalid close code"
		}
		s.end(code, reason, websocket.CloseError{Code: code, Reason: reason})
		return message{}, false, nil
	default:
		return message{}, false, fmt.Errorf("tether: unexpected %v frame from client", f.Kind)
	}
	s.seq.mu.Lock()
	deliver, err := s.seq.receive(f)
	recv := s.seq.recv
	s.seq.mu.Unlock()
	if errors.Is(err, errGap) {
		s.gapped(recv, err)
	}
	if err != nil || !deliver {
		return message{}, false, err
	}
	if !f.Binary && !utf8.Valid(f.Payload) {
		// The client would send it again on every resume: end the session.
		s.end(websocket.StatusInvalidFramePayloadData, "text message is not valid UTF-8", errInvalidUTF8)
		return message{}, false, errInvalidUTF8
	}
	s.markUsed()
	return message{typ: msgType(f.Binary), p: f.Payload, owner: s.seq}, true, nil
}

// maxGaps is how many links in a row may show the same gap in the client's
// numbering before the session ends. A gap is a link that lost messages on
// the way (a middlebox that drops bytes and carries on): the link is
// replaced, and the client replays what the Handler has not acknowledged,
// which fills the gap. A gap that resumes do not fill is a client that does
// not replay, and resuming again would not help.
const maxGaps = 3

// gapped records a gap in the client's numbering after recv, the last
// message received in order; s.recvMu is held. The caller replaces the link
// (the client resumes and replays), unless this is the same gap for the
// maxGaps-th time in a row: then gapped ends the session, with 1002.
func (s *Session) gapped(recv uint64, err error) {
	if s.gaps > 0 && s.gapAt == recv {
		s.gaps++
	} else {
		s.gapAt, s.gaps = recv, 1
	}
	if s.gaps >= maxGaps {
		s.end(websocket.StatusProtocolError, "message missing in sequence",
			fmt.Errorf("tether: session %s: the client's replays do not fill a gap: %w", s.idStr, err))
	}
}

// errInvalidUTF8 refuses a text message that is not valid UTF-8, as
// WebSocket requires.
var errInvalidUTF8 = ErrInvalidUTF8

// validClientCode reports whether a client may close with code: the codes
// RFC 6455 defines for endpoints to send (1012 to 1014 are a server's), and
// the ranges for libraries and applications.
func validClientCode(code websocket.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1011:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
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

// expire ends a session whose client did not come back within the TTL. A
// polling request in progress holds the TTL off (its end starts it again),
// but only for as long as a request may last.
func (s *Session) expire() {
	if !s.expired() {
		return
	}
	s.end(websocket.StatusGoingAway, "session expired", fmt.Errorf("tether: session %s expired: %w", s.idStr, ErrSessionLost))
}

// expired reports whether the session is away and its TTL has passed. If
// not yet (the TTL grew since it was set, because the session carried a
// message; or a polling request holds it off), it sets the timer for the
// rest.
func (s *Session) expired() bool {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if s.ws != nil || s.ended {
		return false
	}
	if rest := s.ttlLocked() - time.Since(s.awaySince); rest > 0 {
		s.ttl.Reset(rest)
		return false
	}
	return true
}

// pollBegan records that a polling request began: the session counts as
// present while it lasts, but no longer than a request may (maxRequestTime),
// so that a request that hangs cannot keep the session for ever.
func (s *Session) pollBegan() {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	d := s.h.maxRequestTime()
	s.awaySince = time.Now().Add(d)
	s.ttl.Reset(d + s.ttlLocked())
}

// pollsDone records that the last polling request of p ended: the TTL
// starts, unless another request has begun meanwhile.
func (s *Session) pollsDone(p *pollLink) {
	s.linkMu.Lock()
	defer s.linkMu.Unlock()
	if s.ended || s.ws != nil || p.busy() {
		return
	}
	s.awayLocked()
}

// closeEnded closes l, a link of s taken out of use, telling the client how
// the session ended if it has: a graceful close, which waits a few seconds
// at most for the client's answer (coder/websocket's bound).
func (s *Session) closeEnded(l *liveLink) {
	s.linkMu.Lock()
	ended, code, reason := s.ended, s.endCode, s.endReason
	s.linkMu.Unlock()
	if ended && !errors.Is(l.err, errReplaced) {
		_ = l.Close(code, clipReason(reason))
	}
	_ = l.CloseNow()
}

// end ends the session once: its serve ctx is cancelled, Read and Write fail
// with err, and the client is told with code and reason.
func (s *Session) end(code websocket.StatusCode, reason string, err error) {
	s.finish(code, reason, err, leaveEnded)
}

// leaving says how a session leaves the Handler.
type leaving int

const (
	// leaveEnded: the session is over. A client that comes back is told
	// how it ended (a tombstone here, a note in the cluster), unless it
	// was lost.
	leaveEnded leaving = iota
	// leaveGone: the session lives on elsewhere (handed over, or found
	// owned by another instance) or is lost to a failed handoff: the
	// client that comes back asks the cluster, not this instance.
	leaveGone
)

// finish is end, saying how the session leaves.
func (s *Session) finish(code websocket.StatusCode, reason string, err error, how leaving) {
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
	s.h.stats.ended(err)
	s.h.forget(s, code, reason, how, errors.Is(err, ErrSessionLost))
	s.dropReadCtx()
	s.h.log.Debug("session ended", slog.String("session", s.idStr), slog.Int("code", int(code)), slog.Any("err", err))
	if l != nil {
		// The link's watcher closes it, telling the client code and reason
		// (see closeEnded): a client that does not answer the close makes
		// only that goroutine wait.
		l.fail(err)
	}
	if poll != nil {
		poll.closeWith(code, reason)
	}
	s.rd.end(err)
	s.cancel(err)
}
