package tether

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// Handler is an http.Handler that serves tether clients over WebSocket and
// HTTP long polling on the same URL, and hands the application one *Session
// per client, whichever transport is below. A client in session mode that
// loses its link resumes its session on a new one, and every message is
// delivered exactly once, in order, for as long as the Handler keeps the
// session (see WithSessionTTL). Plain WebSocket clients, which do not offer
// the tether.v1 subprotocol, get a Session over their connection as it is.
//
// Sessions live in the Handler's memory: several server instances behind a
// load balancer need sticky routing.
type Handler struct {
	serve func(ctx context.Context, s *Session)
	opts  handlerOptions
	log   *slog.Logger

	mu         sync.Mutex
	sessions   map[[16]byte]*Session
	tombstones map[[16]byte]tombstone
	closed     bool
	wg         sync.WaitGroup // serve goroutines and WebSocket readers
}

// NewHandler returns a Handler that calls serve, on a goroutine of its own,
// for every new session. The session ends when serve returns; serve's ctx
// ends when the session does.
func NewHandler(serve func(ctx context.Context, s *Session), opts ...HandlerOption) *Handler {
	o := defaultHandlerOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return &Handler{serve: serve, opts: o, log: o.logger, sessions: make(map[[16]byte]*Session), tombstones: make(map[[16]byte]tombstone)}
}

// ServeHTTP serves a WebSocket handshake or a long-polling request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if isWebSocketUpgrade(r) {
		h.serveWebSocket(w, r)
		return
	}
	h.servePoll(w, r)
}

// Close ends every session, closes their links, and waits for the serve
// functions and the Handler's goroutines to return.
func (h *Handler) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return fmt.Errorf("tether: handler: %w", net.ErrClosed)
	}
	h.closed = true
	all := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	for _, s := range all {
		s.end(websocket.StatusGoingAway, "server shutting down", fmt.Errorf("tether: handler closed: %w", net.ErrClosed))
	}
	h.wg.Wait()
	return nil
}

// Sessions returns the number of sessions the Handler holds.
func (h *Handler) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

func isWebSocketUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	resume, err := parseResume(r.Header.Get(headerSession), r.Header.Get(headerSecret), r.Header.Get(headerAck))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ao := h.opts.accept
	ao.Subprotocols = append([]string{Subprotocol}, ao.Subprotocols...)
	// Tells the client this server really speaks tether.v1.
	w.Header().Set(headerProtocol, Subprotocol)
	hw := &hijackWatch{ResponseWriter: w}
	c, err := websocket.Accept(hw, r, &ao)
	if err != nil {
		return // Accept has answered
	}
	c.SetReadLimit(h.opts.readLimit + 64)
	if c.Subprotocol() != Subprotocol {
		h.servePlain(r, c)
		return
	}
	s, status, err := h.openSession(resume, WebSocket, true)
	if err != nil {
		var te *tombstoneError
		if errors.As(err, &te) {
			_ = c.Close(te.code, te.reason)
			return
		}
		_ = c.Close(websocket.StatusTryAgainLater, err.Error())
		return
	}
	clientAck := resume.ack
	if status != frame.StatusResumed {
		clientAck = 0 // that ack was for a session that is gone
	}
	l, done, err := s.attachWS(c, hw.conn, status, clientAck)
	if err != nil {
		h.wg.Done()
		_ = c.CloseNow()
		return
	}
	s.watchWS(l, done)
}

// hijackWatch hands coder/websocket a watchConn when it hijacks the
// connection, so that a Session.Read whose ctx ends can be interrupted
// between frames (see interrupt.go) instead of going through a goroutine.
type hijackWatch struct {
	http.ResponseWriter
	conn *watchConn
}

func (h *hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w := &watchConn{Conn: nc}
	// What the server read ahead is read again before the connection.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		w.scan(b)
	}
	h.conn = w
	return w, brw, nil
}

// servePlain serves a client that did not ask for session mode: the Session
// is the WebSocket connection itself, and ends with it.
func (h *Handler) servePlain(r *http.Request, c *websocket.Conn) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		_ = c.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	defer h.wg.Done()
	s := &Session{h: h, plain: c, idStr: "plain-" + newID()}
	var cancel context.CancelCauseFunc
	s.ctx, cancel = context.WithCancelCause(context.Background())
	stop := context.AfterFunc(r.Context(), func() { cancel(net.ErrClosed) })
	defer stop()
	h.serve(s.ctx, s)
	cancel(nil)
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// resumeReq is what a client asks for when it opens a link.
type resumeReq struct {
	ok     bool
	id     [16]byte
	secret [16]byte
	ack    uint64
}

func parseResume(id, secret, ack string) (resumeReq, error) {
	var rr resumeReq
	if id == "" {
		return rr, nil
	}
	if err := decodeID(id, &rr.id); err != nil {
		return rr, fmt.Errorf("tether: malformed session id")
	}
	if err := decodeID(secret, &rr.secret); err != nil {
		return rr, fmt.Errorf("tether: malformed session secret")
	}
	if ack != "" {
		n, err := strconv.ParseUint(ack, 10, 64)
		if err != nil {
			return rr, fmt.Errorf("tether: malformed ack")
		}
		rr.ack = n
	}
	rr.ok = true
	return rr, nil
}

func decodeID(s string, dst *[16]byte) error {
	if len(s) != 32 {
		return errors.New("bad length")
	}
	_, err := hex.Decode(dst[:], []byte(s))
	return err
}

var errTooManySessions = errors.New("tether: too many sessions")

// openSession resumes the session rr names or, when there is none, opens a
// new one; status says which. With reader set, the Handler counts one more
// goroutine (the link's reader) that the caller must mark done.
func (h *Handler) openSession(rr resumeReq, t Transport, reader bool) (*Session, frame.Status, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, 0, fmt.Errorf("tether: handler closed: %w", net.ErrClosed)
	}
	status := frame.StatusNew
	if rr.ok {
		s := h.sessions[rr.id]
		if s != nil && subtle.ConstantTimeCompare(s.secret[:], rr.secret[:]) == 1 && !s.isEnded() {
			if reader {
				h.wg.Add(1)
			}
			return s, frame.StatusResumed, nil
		}
		if ts, ok := h.tombstones[rr.id]; ok && time.Now().Before(ts.until) && subtle.ConstantTimeCompare(ts.secret[:], rr.secret[:]) == 1 {
			return nil, 0, &tombstoneError{code: ts.code, reason: ts.reason}
		}
		status = frame.StatusLost
	}
	if len(h.sessions) >= h.opts.maxSessions {
		return nil, 0, errTooManySessions
	}
	s := newSession(h)
	s.transport = t
	h.sessions[s.id] = s
	if reader {
		h.wg.Add(1)
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.serve(s.ctx, s)
		s.end(websocket.StatusNormalClosure, "", errSessionDone)
	}()
	return s, status, nil
}

func (h *Handler) lookup(id [16]byte, secret [16]byte) *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[id]
	if s == nil || subtle.ConstantTimeCompare(s.secret[:], secret[:]) != 1 {
		return nil
	}
	return s
}

// forget removes an ended session, leaving a tombstone for a while so that
// a client that comes back learns how the session ended.
func (h *Handler) forget(s *Session, code websocket.StatusCode, reason string, tomb bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[s.id] != s {
		return
	}
	delete(h.sessions, s.id)
	now := time.Now()
	for id, ts := range h.tombstones {
		if now.After(ts.until) {
			delete(h.tombstones, id)
		}
	}
	if tomb && len(h.tombstones) < h.opts.maxSessions {
		h.tombstones[s.id] = tombstone{secret: s.secret, code: code, reason: reason, until: now.Add(h.opts.sessionTTL)}
	}
}

// tombstone remembers how a session ended.
type tombstone struct {
	secret [16]byte
	code   websocket.StatusCode
	reason string
	until  time.Time
}

// tombstoneError is the answer to a resume of an ended session.
type tombstoneError struct {
	code   websocket.StatusCode
	reason string
}

func (e *tombstoneError) Error() string {
	return "tether: session ended with " + e.code.String()
}

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
	s := &Session{h: h, seq: newSeqState(h.opts.replayBytes), rd: newReader()}
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

// prepare encodes f for the current WebSocket link and returns that link
// for send; on long polling it wakes the waiting poll, which takes frames
// from the replay buffer itself. f may be nil when only the poll is to be
// woken. s.seq.wmu and s.seq.mu are held: the link a frame goes to is
// chosen in sequence order, and the replay buffer's copy of the payload is
// read under seq.mu only.
func (s *Session) prepare(f *frame.Frame) *liveLink {
	s.linkMu.Lock()
	l, poll := s.ws, s.poll
	s.linkMu.Unlock()
	switch {
	case l != nil && f != nil:
		s.wbuf = frame.Append(s.wbuf[:0], f)
		return l
	case l == nil && poll != nil:
		poll.notify()
	}
	return nil
}

// send writes what prepare encoded on l, if any; s.seq.wmu is held. A failed
// send leaves the frame for replay.
func (s *Session) send(l *liveLink) {
	if l == nil {
		return
	}
	ws := l.link.(*serverWS).ws
	err := ws.Write(context.Background(), websocket.MessageBinary, s.wbuf)
	if cap(s.wbuf) > 64<<10 {
		s.wbuf = nil // do not hold on to a big message's buffer
	}
	if err != nil {
		l.fail(err)
		_ = ws.CloseNow()
	}
}

// attachWS makes c the session's link: the old link is closed and its
// reader gone first, then the client is greeted, the link is read, and
// everything the client has not acknowledged is replayed. The replay goes
// out while the link is read: the client replays to the server at the same
// time, and a side that wrote megabytes without reading would wait for the
// other for ever. s.seq.wmu keeps serve's Writes behind the replay.
func (s *Session) attachWS(c *websocket.Conn, w *watchConn, status frame.Status, clientAck uint64) (*liveLink, chan struct{}, error) {
	s.detach()
	s.seq.wmu.Lock()
	defer s.seq.wmu.Unlock()
	s.recvMu.Lock()
	s.seq.mu.Lock()
	if s.isEnded() {
		s.seq.mu.Unlock()
		s.recvMu.Unlock()
		return nil, nil, s.endError()
	}
	hello := frame.Frame{Kind: frame.Hello, Status: status, Session: s.id, Secret: s.secret, Ack: s.seq.taken}
	if err := c.Write(context.Background(), websocket.MessageBinary, frame.Append(nil, &hello)); err != nil {
		s.seq.mu.Unlock()
		s.recvMu.Unlock()
		return nil, nil, err
	}
	s.seq.told() // the Hello carries the ack
	// Encoded here: the payloads are the replay buffer's, read under seq.mu.
	var replay [][]byte
	for _, f := range s.seq.unacked(clientAck) {
		replay = append(replay, frame.Append(nil, &f))
	}
	l := newLiveLink(context.Background(), &serverWS{s: s, ws: c}, WebSocket)
	l.watch = w
	// What an honest client can have sent unacknowledged: its replay
	// buffer, and one message beyond.
	l.readAhead = DefaultReplayBytes + int(s.h.opts.readLimit)
	done := make(chan struct{})
	s.linkMu.Lock()
	s.ws, s.wsDone, s.transport = l, done, WebSocket
	s.ttl.Stop()
	s.linkMu.Unlock()
	s.seq.mu.Unlock()
	s.recvMu.Unlock()
	if !s.rd.setLink(l) {
		return l, done, nil // the session ended meanwhile: watchWS cleans up
	}

	if len(replay) > 0 {
		ctx, cancel := untilDead(s.ctx, l)
		defer cancel()
		for _, b := range replay {
			if err := c.Write(ctx, websocket.MessageBinary, b); err != nil {
				l.fail(err)
				break
			}
		}
	}
	return l, done, nil
}

// watchWS waits, on the handshake's goroutine, until the link fails or the
// session ends, then takes the link out of use.
func (s *Session) watchWS(l *liveLink, done chan struct{}) {
	defer s.h.wg.Done()
	defer close(done)
	var err error
	select {
	case <-l.dead:
		err = l.err
	case <-s.ctx.Done():
		// The session ended; l.err is not to be read unless l failed.
	}
	s.rd.clearLink(l)
	s.linkLost(l, err)
	_ = l.CloseNow()
	l.cancel()
	l.wg.Wait()
	if l.watch != nil {
		l.watch.release()
	}
}

// detach closes the current link and waits until nothing reads it.
func (s *Session) detach() {
	s.linkMu.Lock()
	ws, done, poll := s.ws, s.wsDone, s.poll
	s.ws, s.wsDone, s.poll = nil, nil, nil
	s.linkMu.Unlock()
	if ws != nil {
		ws.fail(errReplaced)
		_ = ws.CloseNow()
		<-done
	}
	if poll != nil {
		s.recvMu.Lock()
		poll.stop()
		s.recvMu.Unlock()
	}
}

var errReplaced = errors.New("tether: the client opened a new link")

// serverWS is a session's WebSocket link, read through the session's
// reader: its Read returns the next new message from the client.
type serverWS struct {
	s  *Session
	ws *websocket.Conn
	rb readBuf // used by the session's one reader
}

func (l *serverWS) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	for {
		typ, b, owned, err := l.rb.read(ctx, l.ws)
		if err != nil {
			return 0, nil, err
		}
		if typ != websocket.MessageBinary {
			_ = l.ws.Close(websocket.StatusUnsupportedData, "tether.v1 frames are binary")
			return 0, nil, errors.New("tether: text message on a tether.v1 link")
		}
		f, err := frame.Decode(b)
		var (
			m       message
			deliver bool
		)
		if err == nil {
			s := l.s
			s.recvMu.Lock()
			m, deliver, err = s.take(&f)
			s.recvMu.Unlock()
		}
		if err != nil {
			_ = l.ws.Close(websocket.StatusProtocolError, "bad frame")
			return 0, nil, err
		}
		if deliver {
			return m.typ, payloadCopy(m.p, owned), nil
		}
	}
}

func (l *serverWS) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	return l.ws.Write(ctx, typ, p)
}

func (l *serverWS) Ping(ctx context.Context) error { return l.ws.Ping(ctx) }

func (l *serverWS) Close(code websocket.StatusCode, reason string) error {
	return l.ws.Close(code, reason)
}

func (l *serverWS) CloseNow() error { return l.ws.CloseNow() }

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

// linkLost handles the end of a WebSocket link: unless a newer link took
// its place, the session waits for the client to come back, or ends if the
// client closed its Conn.
func (s *Session) linkLost(l *liveLink, err error) {
	s.linkMu.Lock()
	if s.ws != l || s.ended {
		s.linkMu.Unlock()
		return
	}
	s.ws, s.wsDone = nil, nil
	s.ttl.Reset(s.h.opts.sessionTTL)
	s.linkMu.Unlock()
	s.h.log.Debug("link lost", slog.String("session", s.idStr), slog.String("transport", "websocket"), slog.Any("err", err))
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		// The client closed its Conn: the session is over.
		s.end(ce.Code, ce.Reason, ce)
	}
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
