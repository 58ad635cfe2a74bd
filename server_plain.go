package tether

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// servePlain serves a client that did not ask for session mode: the Session
// is the WebSocket connection itself, without resume, and ends with it. It
// counts against the Handler's limits like any session, and Handler.Close
// ends it like any other. Its connection is read by the session's reader,
// as a session link is: on serve's goroutine while serve waits in Read, by
// a background reader otherwise, which keeps up to the session's window of
// messages for serve, so that pings and close frames are answered while
// serve is busy. It runs on the handshake's goroutine until the session
// ends.
func (h *Handler) servePlain(r *http.Request, c *websocket.Conn, w *watchConn, life *lifeSigns) {
	key := h.clientKey(r)
	h.mu.Lock()
	s, err := h.admitLocked(r, key, true)
	if err != nil {
		h.mu.Unlock()
		var rf *refusal
		errors.As(err, &rf)
		h.refuseWS(c, r, rf.code, rf.reason)
		return
	}
	c.SetReadLimit(h.opts.readLimit)
	sp := &serverPlain{ws: c}
	l := newLiveLink(context.Background(), sp, WebSocket)
	l.watch = w
	l.readAhead = s.win
	life.l.Store(l)
	s.linkMu.Lock()
	s.ws, s.transport = l, WebSocket
	s.ttl.Stop() // a plain session ends with its link, not by a TTL
	s.linkMu.Unlock()
	h.wg.Add(1) // this goroutine
	h.runLocked(s)
	h.mu.Unlock()
	defer h.wg.Done()
	defer h.stats.servingPlain()()

	s.rd.setLink(l)
	sp.hb = h.startHeartbeat(l, s.rd, &sp.writing)
	var lost error
	select {
	case <-l.dead:
		lost = l.err
	case <-s.ctx.Done():
	}
	s.rd.clearLink(l)
	if lost != nil && !s.isEnded() {
		// The client closed or went away: the session is over.
		code, reason := websocket.StatusGoingAway, "connection lost"
		var ce websocket.CloseError
		switch {
		case errors.As(lost, &ce):
			code, reason = ce.Code, ce.Reason
		case errors.Is(lost, errInvalidUTF8):
			code, reason = websocket.StatusInvalidFramePayloadData, "text message is not valid UTF-8"
		}
		h.log.Debug("plain client gone", slog.String("session", s.idStr), slog.Any("err", lost))
		s.end(code, reason, lost)
	}
	s.closeEnded(l)
	sp.hb.stop()
	l.cancel()
	l.wg.Wait()
	if w != nil {
		w.release()
	}
}

// writePlain writes a message to a plain client.
func (s *Session) writePlain(ctx context.Context, typ websocket.MessageType, p []byte) error {
	s.linkMu.Lock()
	l, ended := s.ws, s.ended
	s.linkMu.Unlock()
	if ended || l == nil {
		return s.endError()
	}
	if err := l.link.(*serverPlain).write(ctx, typ, p); err != nil {
		if s.isEnded() {
			return s.endError()
		}
		return err
	}
	s.markUsed()
	return nil
}

// serverPlain is a plain client's connection as a link.
type serverPlain struct {
	ws      *websocket.Conn
	writing writeClock
	hb      *linkHeartbeat
}

func (l *serverPlain) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	typ, p, err := l.ws.Read(ctx)
	if err == nil && typ == websocket.MessageText && !utf8.Valid(p) {
		return 0, nil, errInvalidUTF8
	}
	return typ, p, err
}

// write writes a message, with the write clock running (see writeClock).
func (l *serverPlain) write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	l.writing.start()
	defer l.writing.stop()
	return l.ws.Write(ctx, typ, p)
}

func (l *serverPlain) Write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	return l.write(ctx, typ, p)
}

func (l *serverPlain) Ping(ctx context.Context) error { return l.ws.Ping(ctx) }

func (l *serverPlain) Close(code websocket.StatusCode, reason string) error {
	return l.ws.Close(code, reason)
}

func (l *serverPlain) CloseNow() error { return l.ws.CloseNow() }

// writeClock records when the write in progress on a link began, so that
// the Handler's heartbeat can close a link whose client stopped reading (see
// WithHandlerHeartbeat).
type writeClock struct{ since atomicTime }

func (w *writeClock) start() { w.since.store(time.Now()) }
func (w *writeClock) stop()  { w.since.store(time.Time{}) }

// stuck reports whether a write has been in progress for d or longer.
func (w *writeClock) stuck(now time.Time, d time.Duration) bool {
	t := w.since.load()
	return !t.IsZero() && now.Sub(t) >= d
}
