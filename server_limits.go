package tether

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// A Handler on the open internet is a target: every session costs memory
// and goroutines. So it bounds how many sessions it holds (WithMaxSessions),
// how many one client holds (WithSessionsPerClient), and the bytes all of
// them may buffer together (WithBufferBudget). The budget is spent when a
// session opens: the session reserves the most its buffers can hold, which
// its window bounds (see window), so the Handler's buffers stay within the
// budget whatever the clients do.

// minWindow is the smallest window the budget grants a session.
const minWindow = 32 << 10

// refusal is why a Handler turned a new session away. Polling answers it
// with status; WebSocket, whose client learns of it only after the
// handshake, closes with code.
type refusal struct {
	status int
	code   websocket.StatusCode
	reason string
}

func (e *refusal) Error() string { return "tether: " + e.reason }

var (
	refuseClosed   = &refusal{http.StatusServiceUnavailable, websocket.StatusTryAgainLater, "server shutting down"}
	refuseSessions = &refusal{http.StatusServiceUnavailable, websocket.StatusTryAgainLater, "too many sessions"}
	refuseClient   = &refusal{http.StatusTooManyRequests, websocket.StatusTryAgainLater, "too many sessions for this client"}
	refuseBudget   = &refusal{http.StatusServiceUnavailable, websocket.StatusTryAgainLater, "no room in the buffer budget"}
)

// clientKey names the client r comes from, for WithSessionsPerClient; ""
// when there is no such limit.
func (h *Handler) clientKey(r *http.Request) string {
	if h.opts.clientKey == nil {
		return ""
	}
	return h.opts.clientKey(r)
}

// admitLocked opens a new session for the request r, from the client key,
// if the Handler's limits allow it; h.mu is held. The session is registered
// but serve is not started.
func (h *Handler) admitLocked(r *http.Request, key string, plain bool) (*Session, error) {
	switch {
	case h.closed || h.stopping:
		return nil, refuseClosed
	case len(h.sessions) >= h.opts.maxSessions:
		return nil, refuseSessions
	case key != "" && h.clients[key] >= h.opts.perClient:
		return nil, refuseClient
	}
	w, reserve, ok := h.grantLocked()
	if !ok {
		return nil, refuseBudget
	}
	s := newSession(h, r.Context(), w, plain)
	s.clientKey, s.reserved = key, reserve
	h.sessions[s.id] = s
	if h.cl != nil && !plain {
		h.cl.register(s, Lease{}) // claimed before its client is greeted
	}
	h.reserved += reserve
	if key != "" {
		h.clients[key]++
	}
	return s, nil
}

// releaseLocked gives back what s held of the Handler's limits; h.mu is
// held.
func (h *Handler) releaseLocked(s *Session) {
	h.reserved -= s.reserved
	s.reserved = 0
	if s.clientKey != "" {
		if h.clients[s.clientKey]--; h.clients[s.clientKey] <= 0 {
			delete(h.clients, s.clientKey)
		}
	}
}

// reservation returns the most a session with window w holds in buffers:
// its replay buffer (w, not counting a single message serve writes that is
// larger than the window on its own), and what it reads ahead of serve (w
// or a single message of any size, and one more message from a client that
// does not keep to the window; see readsAhead). A plain session, which
// keeps no replay, is charged the same, so that every session that opens
// reserves at least what the budget keeps for it.
func (h *Handler) reservation(w window) int64 {
	// The largest message a client can send.
	m := int64(msgOverhead + bufSize(int(h.opts.readLimit)))
	return int64(w.bytes) + max(int64(w.bytes), m) + m
}

// grantLocked returns the window for a new session and what it reserves of
// the budget; h.mu is held. A session gets the window WithReplayBuffer
// asks for while the budget has room for it beyond what it keeps for the
// sessions that may still open at the smallest window (so that
// WithMaxSessions sessions always fit, when the budget allows that many),
// else the largest half, quarter, ... of it that fits, down to minWindow;
// ok is false when even that does not fit.
func (h *Handler) grantLocked() (w window, reserve int64, ok bool) {
	full := window{h.opts.replayBytes, defaultWindowMsgs}
	least := window{min(minWindow, full.bytes), full.msgs}
	per := h.reservation(least)
	capacity := min(int64(h.opts.maxSessions), h.opts.budget/per)
	keep := max(0, capacity-int64(len(h.sessions))-1) * per
	avail := h.opts.budget - h.reserved - keep
	for w = full; ; w.bytes /= 2 {
		if w.bytes < least.bytes {
			w = least
		}
		if reserve = h.reservation(w); reserve <= avail {
			return w, reserve, true
		}
		if w == least {
			return window{}, 0, false
		}
	}
}

// refusalsPerSecond bounds the records a Handler writes about the requests it
// refuses: a flood of bad requests must not become a flood of logs.
const refusalsPerSecond = 10

// logLimiter lets through at most refusalsPerSecond records a second, and
// counts the others.
type logLimiter struct {
	mu      sync.Mutex
	second  time.Time
	n       int
	dropped int
}

// allow reports whether a record may be written at now, and how many were
// held back since the last one that was.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.second) >= time.Second {
		l.second, l.n = now, 0
	}
	if l.n >= refusalsPerSecond {
		l.dropped++
		return false, 0
	}
	l.n++
	dropped := l.dropped
	l.dropped = 0
	return true, dropped
}

// refused logs, rate limited, a request the Handler turned away: its status
// (or close code), why, and where it came from. Nothing of the request that
// may carry credentials (headers, query) is logged.
func (h *Handler) refused(r *http.Request, how slog.Attr, reason string) {
	if !h.log.Enabled(context.Background(), slog.LevelWarn) {
		return
	}
	ok, dropped := h.refusals.allow(time.Now())
	if !ok {
		return
	}
	attrs := []slog.Attr{
		how,
		slog.String("reason", reason),
		slog.String("remote", r.RemoteAddr),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
	}
	if dropped > 0 {
		attrs = append(attrs, slog.Int("refusals_not_logged", dropped))
	}
	h.log.LogAttrs(context.Background(), slog.LevelWarn, "request refused", attrs...)
}

// refuse answers a request with an error status, and logs it.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h.refused(r, slog.Int("status", status), msg)
	http.Error(w, msg, status)
}

// refuseWS closes a WebSocket the Handler accepted and then turned away,
// and logs it.
func (h *Handler) refuseWS(c *websocket.Conn, r *http.Request, code websocket.StatusCode, reason string) {
	h.refused(r, slog.Int("close_code", int(code)), reason)
	_ = c.Close(code, clipReason(reason))
}
