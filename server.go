package tether

import (
	"context"
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
