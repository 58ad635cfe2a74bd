package tether

import (
	"errors"
	"sync/atomic"
)

// HandlerStats is a snapshot of a Handler's sessions and counters, returned
// by value from Handler.Stats. The counters only grow; the other fields are
// the state at the time of the call.
type HandlerStats struct {
	// Sessions is the number of session-mode sessions the Handler holds,
	// with or without a link.
	Sessions int
	// OnWebSocket, OnPolling and Away split Sessions by the link each has
	// now: a WebSocket, HTTP long polling, or none (the client is away and
	// the session waits for it to resume, at most WithSessionTTL).
	OnWebSocket, OnPolling, Away int
	// PlainClients is the number of plain WebSocket clients (without the
	// tether.v1 subprotocol) being served; they are not in Sessions.
	PlainClients int

	// SessionsOpened counts sessions opened since the Handler was made.
	SessionsOpened uint64
	// Resumes counts links (WebSocket or polling) that resumed a session
	// the Handler still held: a reconnect, or a move between transports.
	Resumes uint64
	// ResumesUnknown counts links that asked to resume a session the
	// Handler did not know (it expired, or another server instance had it):
	// the client was given a new session and told the old one was lost.
	ResumesUnknown uint64
	// SessionsLost counts sessions the Handler ended with ErrSessionLost:
	// their client did not come back within WithSessionTTL, or their replay
	// buffer overflowed while it was away.
	SessionsLost uint64
	// PlainServed counts plain WebSocket clients served so far.
	PlainServed uint64

	// In a cluster (WithCluster): Forwarded counts requests sent on to the
	// instance that holds their session; TakenOver counts sessions taken
	// over from another instance's Shutdown; HandedOver counts sessions
	// this instance's Shutdown handed over.
	Forwarded, TakenOver, HandedOver uint64
}

// handlerCounters are a Handler's atomic counters.
type handlerCounters struct {
	opened, resumes, unknown, lost, plainServed atomic.Uint64
	plain                                       atomic.Int64
	forwarded, takenOver, parked                atomic.Uint64
}

// ended counts a session that ended with err.
func (hc *handlerCounters) ended(err error) {
	if errors.Is(err, ErrSessionLost) {
		hc.lost.Add(1)
	}
}

// servingPlain counts a plain client being served; the function it returns
// counts it gone.
func (hc *handlerCounters) servingPlain() func() {
	hc.plainServed.Add(1)
	hc.plain.Add(1)
	return func() { hc.plain.Add(-1) }
}

// Stats returns a snapshot of the Handler's sessions and counters. It looks
// at every session to split them by transport, holding the Handler's lock,
// so its cost grows with the number of sessions: call it for a metrics
// scrape, not for every message.
func (h *Handler) Stats() HandlerStats {
	st := HandlerStats{
		SessionsOpened: h.stats.opened.Load(),
		Resumes:        h.stats.resumes.Load(),
		ResumesUnknown: h.stats.unknown.Load(),
		SessionsLost:   h.stats.lost.Load(),
		PlainServed:    h.stats.plainServed.Load(),
		PlainClients:   int(h.stats.plain.Load()),
		Forwarded:      h.stats.forwarded.Load(),
		TakenOver:      h.stats.takenOver.Load(),
		HandedOver:     h.stats.parked.Load(),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.sessions {
		if s.plain {
			continue // counted in PlainClients
		}
		st.Sessions++
		s.linkMu.Lock()
		switch {
		case s.ws != nil:
			st.OnWebSocket++
		case s.poll != nil:
			st.OnPolling++
		default:
			st.Away++
		}
		s.linkMu.Unlock()
	}
	return st
}
