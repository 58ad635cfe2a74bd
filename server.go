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
// Sessions live in the Handler's memory. Several server instances behind a
// load balancer share one set of sessions through a directory (see
// WithCluster): a request that lands on another instance is forwarded to
// the one that holds its session, and Shutdown hands sessions over.
type Handler struct {
	serve func(ctx context.Context, s *Session)
	opts  handlerOptions
	log   *slog.Logger
	cl    *handlerCluster // nil without WithCluster

	mu        sync.Mutex
	sessions  map[[16]byte]*Session // both modes
	tombs     tombstones
	clients   map[string]int // sessions per client (WithSessionsPerClient)
	reserved  int64          // what the sessions' buffers may hold (WithBufferBudget)
	closed    bool
	stopping  bool           // Shutdown has begun: no new sessions
	running   int            // serve functions that have not returned
	allServed chan struct{}  // closed when running drops to 0, for Shutdown
	wg        sync.WaitGroup // serve goroutines and WebSocket readers

	// stopCtx ends when Shutdown begins: it wakes every Session.Read.
	stopCtx context.Context
	stopNow context.CancelFunc

	refusals logLimiter
	stats    handlerCounters
	limits   string // the Tether-Limits header (see limitsHeader)
}

// NewHandler returns a Handler that calls serve, on a goroutine of its own,
// for every new session. The session ends when serve returns; serve's ctx
// ends when the session does, and carries the values of the request that
// opened the session (what authentication middleware put there, say), not
// its deadline or cancellation.
func NewHandler(serve func(ctx context.Context, s *Session), opts ...HandlerOption) *Handler {
	o := defaultHandlerOptions()
	for _, opt := range opts {
		opt(&o)
	}
	h := &Handler{
		serve:    serve,
		opts:     o,
		log:      o.logger,
		sessions: make(map[[16]byte]*Session),
		tombs:    newTombstones(),
		clients:  make(map[string]int),
		limits:   o.limitsHeader(),
	}
	h.stopCtx, h.stopNow = context.WithCancel(context.Background())
	if o.cluster != nil {
		h.cl = newHandlerCluster(h, o.cluster)
	}
	return h
}

// ServeHTTP serves a WebSocket handshake or a long-polling request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Every answer is marked as the Handler's own: on a 101 it tells the
	// client that this server really speaks tether.v1; on a refusal, that
	// the refusal is the server's and not a proxy's on the way.
	w.Header().Set(headerProtocol, Subprotocol)
	// And its limits, so that a client refuses at Write a message the
	// Handler would refuse on every link, and fits its batches to them.
	w.Header().Set(headerLimits, h.limits)
	if isWebSocketUpgrade(r) {
		h.serveWebSocket(w, r)
		return
	}
	h.servePoll(w, r)
}

// Close ends every session, in both modes, closes their links with 1001,
// and waits for the serve functions and the Handler's goroutines to return.
// New clients are refused from then on. In a cluster (WithCluster) the
// sessions are released, and the instance leaves the cluster: their
// clients get a new session. Shutdown hands them over instead; Close after
// Shutdown waits for what Shutdown left running, and returns nil.
func (h *Handler) Close() error {
	h.mu.Lock()
	if h.closed {
		shut := h.stopping
		h.mu.Unlock()
		h.wg.Wait() // after a Shutdown whose ctx ended first, what it left
		if shut {
			return nil // Close after Shutdown is allowed: defer it
		}
		return fmt.Errorf("tether: handler: %w", net.ErrClosed)
	}
	h.closed = true
	h.mu.Unlock()
	h.endSessions(websocket.StatusGoingAway, "server shutting down", fmt.Errorf("tether: handler closed: %w", net.ErrClosed))
	if h.cl != nil {
		ctx, cancel := context.WithTimeout(context.Background(), closeClusterWait)
		h.cl.leave(ctx)
		cancel()
	}
	h.wg.Wait()
	return nil
}

// endSessions ends every session the Handler holds, plain ones included,
// telling each client code and reason; serve's Read and Write fail with
// err. It does not wait for the serve functions.
func (h *Handler) endSessions(code websocket.StatusCode, reason string, err error) {
	h.mu.Lock()
	all := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	for _, s := range all {
		s.end(code, reason, err)
	}
}

// Sessions returns the number of sessions the Handler holds, in both modes.
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

// openSession resumes the session rr names or, when there is none, opens a
// new one for the request r, if the Handler's limits allow; status says
// which. With reader set, the Handler counts one more goroutine (the link's
// reader) that the caller must mark done. A resume whose ack is beyond what
// the session sent is refused (errBadAck), leaving the session as it was;
// a resume taken applies its ack at once.
func (h *Handler) openSession(r *http.Request, rr resumeReq, t Transport, reader bool) (*Session, frame.Status, error) {
	key := h.clientKey(r) // user code: called before h.mu is taken
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, 0, refuseClosed
	}
	status := frame.StatusNew
	if rr.ok {
		s := h.sessions[rr.id]
		if s != nil && !s.plain && subtle.ConstantTimeCompare(s.secret[:], rr.secret[:]) == 1 && !s.isEnded() {
			s.seq.mu.Lock()
			if rr.ack > s.seq.nextSeq {
				s.seq.mu.Unlock()
				return nil, 0, errBadAck
			}
			// The client has read what it acknowledges: that is freed now,
			// not once the new link is in place. Taking the old link out
			// and greeting the new one can take a while, and meanwhile the
			// session is away: a Write that found the replay buffer still
			// full of what the client has read would end the session as
			// lost, with the client at the door. The ack holds even if the
			// client abandons this handshake: it read those messages.
			s.seq.acked(rr.ack)
			s.seq.mu.Unlock()
			if reader {
				h.wg.Add(1)
			}
			h.stats.resumes.Add(1)
			s.setClientLimit(r)
			return s, frame.StatusResumed, nil
		}
		if ts, ok := h.tombs.find(rr.id, rr.secret, time.Now()); ok {
			return nil, 0, &tombstoneError{code: ts.code, reason: ts.reason}
		}
		status = frame.StatusLost
		h.stats.unknown.Add(1)
	}
	s, err := h.admitLocked(r, key, false)
	if err != nil {
		return nil, 0, err
	}
	s.transport = t
	s.setClientLimit(r)
	h.stats.opened.Add(1)
	if reader {
		h.wg.Add(1)
	}
	h.runLocked(s)
	return s, status, nil
}

// errBadAck refuses a resume that acknowledges messages the session never
// sent: it would break the session's acknowledgements.
var errBadAck = errors.New("tether: resume acknowledges messages never sent")

// runLocked calls serve for s on a goroutine of its own; h.mu is held. The
// session ends when serve returns.
func (h *Handler) runLocked(s *Session) {
	h.wg.Add(1)
	h.running++
	go func() {
		defer h.wg.Done()
		h.serve(s.ctx, s)
		h.served(s)
	}()
}

// lookup returns the session-mode session id names, if secret is its own.
func (h *Handler) lookup(id [16]byte, secret [16]byte) *Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[id]
	if s == nil || s.plain || subtle.ConstantTimeCompare(s.secret[:], secret[:]) != 1 {
		return nil
	}
	return s
}

// forget removes an ended session and gives back what it held of the
// Handler's limits. A session that ended here (how is leaveEnded) and was
// not lost leaves a tombstone for a while, so that a client that comes
// back learns how the session ended; a lost one leaves none, and its
// client is told it is lost. In a cluster, the session's record is
// released too (see handlerCluster.forget).
func (h *Handler) forget(s *Session, code websocket.StatusCode, reason string, how leaving, lost bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[s.id] != s {
		return
	}
	delete(h.sessions, s.id)
	h.releaseLocked(s)
	now := time.Now()
	h.tombs.expire(now)
	tomb := how == leaveEnded && !lost && !s.plain
	if tomb {
		h.tombs.add(s.id, tombstone{secret: s.secret, code: code, reason: reason, until: now.Add(h.opts.sessionTTL)}, h.opts.maxSessions)
	}
	if h.cl != nil && !s.plain {
		h.cl.forget(s, code, reason, how == leaveEnded, tomb)
	}
}

// tombstoneError is the answer to a resume of an ended session.
type tombstoneError struct {
	code   websocket.StatusCode
	reason string
}

func (e *tombstoneError) Error() string {
	return "tether: session ended with " + e.code.String()
}
