package tether

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

func (h *Handler) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	resume, err := parseResume(r.Header.Get(headerSession), r.Header.Get(headerSecret), r.Header.Get(headerAck))
	if err != nil {
		h.refuse(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if !h.originAllowed(r) {
		// websocket.Accept would refuse it the same way, without a word.
		h.refuse(w, r, http.StatusForbidden, "tether: request Origin not allowed")
		return
	}
	if h.stoppingRefuses(resume) {
		h.refuseStopping(w, r)
		return
	}
	if resume.ok && h.cl != nil && h.routeResume(w, r, resume) {
		return
	}
	ao := h.opts.accept
	ao.Subprotocols = append([]string{Subprotocol}, ao.Subprotocols...)
	life := &lifeSigns{}
	life.hook(&ao)
	hw := &hijackWatch{ResponseWriter: w}
	c, err := websocket.Accept(hw, r, &ao)
	if err != nil {
		return // Accept has answered
	}
	if c.Subprotocol() != Subprotocol {
		h.servePlain(r, c, hw.conn, life)
		return
	}
	c.SetReadLimit(h.opts.readLimit + 64)
	s, status, err := h.openSession(r, resume, WebSocket, true)
	if err != nil {
		var (
			te *tombstoneError
			rf *refusal
		)
		switch {
		case errors.As(err, &te):
			_ = c.Close(te.code, te.reason)
		case errors.As(err, &rf):
			h.refuseWS(c, r, rf.code, rf.reason)
		default: // errBadAck
			h.refuseWS(c, r, websocket.StatusProtocolError, "resume acknowledges messages never sent")
		}
		return
	}
	clientAck := resume.ack
	if status != frame.StatusResumed {
		clientAck = 0 // that ack was for a session that is gone
		if h.cl != nil {
			h.cl.claimNew(r, s)
		}
	}
	l, done, err := s.attachWS(c, hw.conn, life, status, clientAck)
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
		buf := s.wbuf[:0]
		if n := len(f.Payload) + frameHeaderMax; n > readBufKeep {
			// A large frame is encoded in a pooled buffer, given back
			// once sent, so that an idle session keeps no large buffer.
			if s.wbig = getBuf(n); s.wbig != nil {
				buf = (*s.wbig)[:0]
			} else {
				buf = nil
			}
		}
		s.wout = frame.Append(buf, f)
		if s.wbig == nil && cap(s.wout) <= readBufKeep {
			s.wbuf = s.wout
		}
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
	sw := l.link.(*serverWS)
	err := sw.write(context.Background(), s.wout)
	s.wout = nil
	if s.wbig != nil {
		putBuf(s.wbig)
		s.wbig = nil
	}
	if err != nil {
		l.fail(err)
		_ = sw.ws.CloseNow()
	}
}

// frameHeaderMax is the most a Data frame adds to its payload.
const frameHeaderMax = 2 + 10 + 10

// attachWS makes c the session's link: the old link is closed and its
// reader gone first, then the client is greeted, the link is read, and
// everything the client has not acknowledged is replayed. The replay goes
// out while the link is read: the client replays to the server at the same
// time, and a side that wrote megabytes without reading would wait for the
// other for ever. s.seq.wmu keeps serve's Writes behind the replay.
func (s *Session) attachWS(c *websocket.Conn, w *watchConn, life *lifeSigns, status frame.Status, clientAck uint64) (*liveLink, chan struct{}, error) {
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
	hello := s.hello(status)
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
	sw := &serverWS{s: s, ws: c}
	l := newLiveLink(context.Background(), sw, WebSocket)
	sw.live = l
	l.watch = w
	// What an honest client can have sent unacknowledged.
	l.readAhead = s.win
	life.l.Store(l)
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
	sw.hb = s.h.startHeartbeat(l, s.rd, &sw.writing)

	if len(replay) > 0 {
		ctx, cancel := untilDead(s.ctx, l)
		defer cancel()
		for _, b := range replay {
			if err := sw.write(ctx, b); err != nil {
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
		if closed := l.settle(); closed != nil {
			err = closed // the client's close, which a write that raced it hid
		}
	case <-s.ctx.Done():
		// The session ended; l.err is not to be read unless l failed.
	}
	s.rd.clearLink(l)
	s.linkLost(l, err)
	s.closeEnded(l)
	l.link.(*serverWS).hb.stop()
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
	s       *Session
	ws      *websocket.Conn
	rb      readBuf // used by the session's one reader
	writing writeClock
	hb      *linkHeartbeat // set before the link is written to
	live    *liveLink      // the link, whose every frame is proof of life
}

// write writes one frame, with the write clock running (see writeClock).
func (l *serverWS) write(ctx context.Context, b []byte) error {
	l.writing.start()
	defer l.writing.stop()
	return l.ws.Write(ctx, websocket.MessageBinary, b)
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
		if err == nil && f.Kind == frame.Data && int64(len(f.Payload)) > l.s.h.opts.readLimit {
			// The link's read limit leaves room for the frame's header: a
			// payload in that room is still over the limit.
			_ = l.ws.Close(websocket.StatusMessageTooBig, "message too big")
			return 0, nil, fmt.Errorf("tether: message of %d bytes, limit %d", len(f.Payload), l.s.h.opts.readLimit)
		}
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
			if errors.Is(err, errGap) && !l.s.isEnded() {
				// Messages were lost on this link, not from the session:
				// the client still has them. The link is dropped like a
				// broken connection, and the client resumes and replays.
				attrs := []any{slog.String("session", l.s.idStr), slog.String("transport", "websocket"), slog.Any("err", err)}
				if w := l.live.watch; w != nil {
					// Which connection lost them, for the network's logs.
					attrs = append(attrs, slog.String("remote", w.RemoteAddr().String()))
				}
				l.s.h.log.Warn("client's messages lost on the link: replacing the link", attrs...)
				_ = l.ws.CloseNow()
				return 0, nil, err
			}
			if !l.s.isEnded() { // else the link's watcher says why
				l.s.h.log.Warn("bad frame from client", slog.String("session", l.s.idStr), slog.String("transport", "websocket"), slog.Any("err", err))
				_ = l.ws.Close(websocket.StatusProtocolError, "bad frame")
			}
			return 0, nil, err
		}
		if deliver {
			return m.typ, payloadCopy(m.p, owned), nil
		}
		l.live.touch() // an ack: the client is there
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

// linkLost handles the end of a WebSocket link: unless a newer link took
// its place, the session waits for the client to come back, or ends if the
// client closed its Conn.
func (s *Session) linkLost(l *liveLink, err error) {
	s.linkMu.Lock()
	if s.ws != l || s.ended {
		s.linkMu.Unlock()
		return
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		// The client closed its Conn: the session is over. It ends with
		// the link still in place, never away for an instant: a Write that
		// found the session away with its replay buffer full would end it
		// first, as lost.
		s.linkMu.Unlock()
		s.h.log.Debug("link closed by the client", slog.String("session", s.idStr), slog.String("transport", "websocket"), slog.Any("err", err))
		s.end(ce.Code, ce.Reason, ce)
		return
	}
	s.ws, s.wsDone = nil, nil
	s.awayLocked()
	s.linkMu.Unlock()
	s.h.log.Debug("link lost", slog.String("session", s.idStr), slog.String("transport", "websocket"), slog.Any("err", err))
}
