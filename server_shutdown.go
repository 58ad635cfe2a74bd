package tether

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Shutdown stops the Handler gracefully. The instance takes no new
// sessions from then on (503 with a short Retry-After, on polling and on
// the WebSocket handshake), and Session.Read returns ErrShuttingDown, so
// that serve can finish what it is doing and return; serve's ctx stays
// live until it does, and what serve writes before returning is kept.
//
// In a cluster (WithCluster), each session whose serve has returned is
// then handed over: its state (ids, secret, counters, and the messages its
// client has not acknowledged) is parked in the cluster for the session
// TTL, and its links close with 1012 (service restart). The client
// reconnects, reaches another instance, and that instance takes the
// session and calls serve for it, with Session.HandedOver true; the
// messages serve did not read are replayed by the client, and nothing is
// lost or repeated. A request that reaches this instance meanwhile gets a
// retryable answer. A session whose state is over WithHandoffLimit, or
// that the cluster cannot take, ends, and its client is told it was lost.
//
// Without a cluster, Shutdown drains: once serve has returned, the
// session's links stay until the client has acknowledged everything serve
// wrote (a client whose link dropped may still resume to get it), then
// close with 1012; the client gets a new session wherever it reconnects.
//
// Plain WebSocket clients cannot be handed over: their sessions end, with
// 1012, when serve returns.
//
// A serve function learns of Shutdown from Read: one that does not read
// (it only writes) keeps running until ctx ends. Then every session left is
// handed over (or, without a cluster, ended) at once, serve's ctx is
// cancelled, Writes fail with an error wrapping ErrShuttingDown, and
// Shutdown returns ctx's error without waiting for serve functions that
// are still running. Shutdown also returns an error when sessions could
// not be handed over. The Handler is closed afterwards: a later Shutdown
// returns an error wrapping net.ErrClosed; a later Close waits for serve
// functions still running, and returns nil.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	if h.closed || h.stopping {
		h.mu.Unlock()
		return fmt.Errorf("tether: handler shutdown: %w", net.ErrClosed)
	}
	h.stopping = true
	var served chan struct{}
	if h.running > 0 {
		served = make(chan struct{})
		h.allServed = served
	}
	h.mu.Unlock()
	h.log.Info("shutting down", "sessions", h.Sessions())
	h.stopNow() // every Read returns ErrShuttingDown

	if served != nil {
		select {
		case <-served:
		case <-ctx.Done():
		}
	}
	var err error
	if h.cl != nil {
		err = h.handOver(ctx)
	} else {
		err = h.drain(ctx)
	}
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	if ctx.Err() == nil {
		waitGroup(ctx, &h.wg)
	}
	if cerr := ctx.Err(); cerr != nil {
		err = errors.Join(fmt.Errorf("tether: handler shutdown: %w", cerr), err)
	}
	return err
}

// errStopped is why a session ends when Shutdown closes it.
var errStopped = fmt.Errorf("tether: session ended by the server's shutdown: %w", ErrShuttingDown)

// served runs when serve has returned. Outside Shutdown, the session ends
// (1000). During Shutdown, a session whose serve returned because Read
// said ErrShuttingDown is left to Shutdown, to hand over or drain; a plain
// one ends with 1012.
func (h *Handler) served(s *Session) {
	handOff := s.sawStop.Load() && !s.plain
	if handOff {
		s.served.Store(true)
	}
	h.mu.Lock()
	h.running--
	if h.running == 0 && h.allServed != nil {
		close(h.allServed)
		h.allServed = nil
	}
	stopping := h.stopping
	h.mu.Unlock()
	switch {
	case stopping && handOff:
	case stopping && s.plain:
		s.end(websocket.StatusServiceRestart, "server shutting down", errStopped)
	default:
		s.end(websocket.StatusNormalClosure, "", errSessionDone)
	}
}

// drainTick is how often a draining Shutdown looks at what its clients
// have acknowledged.
const drainTick = 20 * time.Millisecond

// drain ends each session once its client has acknowledged everything, or
// when ctx ends: Shutdown without a cluster.
func (h *Handler) drain(ctx context.Context) error {
	t := time.NewTicker(drainTick)
	defer t.Stop()
	for {
		left := 0
		for _, s := range h.all() {
			if s.plain {
				left++ // ends when serve returns
				continue
			}
			if !s.served.Load() {
				left++
				continue
			}
			s.seq.mu.Lock()
			acked := len(s.seq.pending()) == 0
			s.seq.mu.Unlock()
			if acked {
				s.end(websocket.StatusServiceRestart, "server shutting down", errStopped)
			} else {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			h.endSessions(websocket.StatusServiceRestart, "server shutting down", errStopped)
			return nil // Shutdown reports ctx's error
		}
	}
}

// all returns the sessions the Handler holds.
func (h *Handler) all() []*Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	all := make([]*Session, 0, len(h.sessions))
	for _, s := range h.sessions {
		all = append(all, s)
	}
	return all
}

// waitGroup waits for wg, or for ctx to end.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// refuseStopping answers a handshake (WebSocket or polling open) that
// Shutdown turns away: a 503 with a short Retry-After, before any upgrade,
// which a client takes as "try again shortly", likely on another instance.
// A 1013 close after the upgrade would make it wait 5 to 10 s.
func (h *Handler) refuseStopping(w http.ResponseWriter, r *http.Request) {
	h.refuseRetry(w, r, "tether: server shutting down", false)
}

// stoppingRefuses reports whether Shutdown turns away a handshake that
// resumes rr (or opens a session, when rr is not ok). A draining Handler
// without a cluster still lets its clients resume, so that they can
// acknowledge what serve wrote; one that hands its sessions over refuses
// them all, as they are about to move.
func (h *Handler) stoppingRefuses(rr resumeReq) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.stopping && !h.closed {
		return false
	}
	if h.closed || h.cl != nil || !rr.ok {
		return true
	}
	s := h.sessions[rr.id]
	return s == nil || s.plain
}

// retryAfterSeconds is the Retry-After of the Handler's retryable answers:
// short, since the condition (a handoff, a directory that is catching up)
// passes in moments.
const retryAfterSeconds = "1"

// refuseRetry answers 503 with a short Retry-After. quiet keeps it out of
// the log: a directory outage would otherwise log every request it turns
// away (the outage itself is logged once).
func (h *Handler) refuseRetry(w http.ResponseWriter, r *http.Request, msg string, quiet bool) {
	w.Header().Set("Retry-After", retryAfterSeconds)
	if quiet {
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	h.refuse(w, r, http.StatusServiceUnavailable, msg)
}

// readCtx is the ctx a Session.Read runs with: the caller's, ended also
// when Shutdown begins. The reader reads the link on serve's goroutine and
// can interrupt that read only through a ctx (see interrupt.go), so
// Shutdown must reach Read through one. Making one per Read would cost a
// registration per message: a ctx passed again and again (serve's own, or
// context.Background()) keeps its readCtx, and a replaced readCtx is
// released once the Reads using it have returned.
type readCtx struct {
	in     context.Context
	ctx    context.Context
	cancel context.CancelFunc
	stop   func() bool
	users  int
	dead   bool // replaced: released when users drops to 0
	bare   bool // ctx is the caller's own: the session has ended
}

func (rc *readCtx) release() {
	rc.stop()
	rc.cancel()
}

// enterRead returns the readCtx for a Read with ctx.
func (s *Session) enterRead(ctx context.Context) *readCtx {
	s.rcMu.Lock()
	defer s.rcMu.Unlock()
	if s.rcDone {
		// Ended: the Read returns at once, and nothing is to be watched.
		return &readCtx{ctx: ctx, bare: true}
	}
	rc := s.rc
	if rc == nil || rc.in != ctx {
		if rc != nil {
			rc.dead = true
			if rc.users == 0 {
				rc.release()
			}
		}
		c, cancel := context.WithCancel(ctx)
		rc = &readCtx{in: ctx, ctx: c, cancel: cancel}
		rc.stop = context.AfterFunc(s.h.stopCtx, cancel)
		s.rc = rc
	}
	rc.users++
	return rc
}

// leaveRead ends a Read that ran with rc.
func (s *Session) leaveRead(rc *readCtx) {
	if rc.bare {
		return
	}
	s.rcMu.Lock()
	defer s.rcMu.Unlock()
	rc.users--
	if rc.dead && rc.users == 0 {
		rc.release()
	}
}

// dropReadCtx releases the session's readCtx once its Reads have returned:
// the session has ended.
func (s *Session) dropReadCtx() {
	s.rcMu.Lock()
	defer s.rcMu.Unlock()
	s.rcDone = true
	if rc := s.rc; rc != nil {
		s.rc = nil
		rc.dead = true
		if rc.users == 0 {
			rc.release()
		}
	}
}
