package tether

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// A session handed over by Shutdown travels through the cluster as its
// parked state: everything the next instance needs to go on as if nothing
// happened, and nothing more. What serve received and did not read is not
// in it: it was not acknowledged, so the client replays it.
//
//	version(1)=1  id(16)  secret(16)
//	uvarint window-bytes  uvarint window-messages
//	flags(1)             bit 0: the session has carried a message
//	uvarint taken        the client's messages serve has read (the next owner's ack)
//	uvarint peer-ack     the server's messages the client has acknowledged
//	uvarint count        the server's messages after peer-ack, numbered peer-ack+1...
//	count * { flags(1) bit 0: binary;  uvarint length;  payload }
//
// The state comes back from a store every instance writes to, so it is
// decoded as hostile input: every length is checked against what is left
// and against the Handler's bounds before anything is allocated for it.

const parkedVersion = 1

// errTooLargeToPark refuses to hand over a session whose state is over
// WithHandoffLimit.
var errTooLargeToPark = errors.New("tether: session state over the handoff limit")

// parkedState is a session's state as parked.
type parkedState struct {
	id, secret [16]byte
	win        window
	used       bool
	taken      uint64
	peerAck    uint64
	msgs       []parkedMsg
}

type parkedMsg struct {
	binary bool
	p      []byte // aliases the encoded state
}

// encodeParked encodes s's state, or refuses with errTooLargeToPark when it
// would be over limit bytes; s.seq.mu is held.
func encodeParked(s *Session, limit int) ([]byte, error) {
	q := s.seq
	pending := q.pending()
	n := 1 + 32 + 4*binary.MaxVarintLen64 + 1
	for _, m := range pending {
		n += 1 + binary.MaxVarintLen64 + len(m.p)
	}
	if n > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errTooLargeToPark, n, limit)
	}
	b := make([]byte, 0, n)
	b = append(b, parkedVersion)
	b = append(b, s.id[:]...)
	b = append(b, s.secret[:]...)
	b = binary.AppendUvarint(b, uint64(s.win.bytes))
	b = binary.AppendUvarint(b, uint64(s.win.msgs))
	var flags byte
	if s.used.Load() {
		flags |= 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, q.taken)
	b = binary.AppendUvarint(b, q.peerAck)
	b = binary.AppendUvarint(b, uint64(len(pending)))
	for _, m := range pending {
		var f byte
		if m.binary {
			f = 1
		}
		b = append(b, f)
		b = binary.AppendUvarint(b, uint64(len(m.p)))
		b = append(b, m.p...)
	}
	return b, nil
}

// errBadParked wraps every reason a parked state is refused.
var errBadParked = errors.New("tether: malformed parked session state")

// decodeParked decodes the state of session id, at most limit bytes.
// Payloads alias b.
func decodeParked(b []byte, id [16]byte, limit int) (*parkedState, error) {
	bad := func(why string) (*parkedState, error) {
		return nil, fmt.Errorf("%w: %s", errBadParked, why)
	}
	if len(b) > limit {
		return bad(fmt.Sprintf("%d bytes, limit %d", len(b), limit))
	}
	if len(b) < 1+32 {
		return bad("truncated")
	}
	if b[0] != parkedVersion {
		return bad(fmt.Sprintf("version %d", b[0]))
	}
	ps := &parkedState{}
	copy(ps.id[:], b[1:17])
	copy(ps.secret[:], b[17:33])
	if ps.id != id {
		return bad("another session's state")
	}
	rest := b[33:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return 0, false
		}
		rest = rest[n:]
		return v, true
	}
	wb, ok1 := next()
	wm, ok2 := next()
	if !ok1 || !ok2 || wb < 1 || wb > maxReplayBytes || wm < 1 || wm > maxWindowMsgs {
		return bad("window out of range")
	}
	ps.win = window{bytes: int(wb), msgs: int(wm)}
	if len(rest) < 1 || rest[0]&^1 != 0 {
		return bad("flags")
	}
	ps.used = rest[0]&1 != 0
	rest = rest[1:]
	var ok3, ok4, ok5 bool
	var count uint64
	ps.taken, ok3 = next()
	ps.peerAck, ok4 = next()
	count, ok5 = next()
	if !ok3 || !ok4 || !ok5 {
		return bad("truncated")
	}
	// Each message takes two bytes at least: the count cannot claim more
	// than what is left holds, nor more than a window.
	if count > maxWindowMsgs || count > uint64(len(rest)/2) || ps.peerAck > 1<<62 {
		return bad("message count out of range")
	}
	ps.msgs = make([]parkedMsg, 0, count)
	for range count {
		if len(rest) < 1 || rest[0]&^1 != 0 {
			return bad("message flags")
		}
		m := parkedMsg{binary: rest[0]&1 != 0}
		rest = rest[1:]
		n, ok := next()
		if !ok || n > uint64(len(rest)) {
			return bad("message length")
		}
		m.p = rest[:n:n]
		rest = rest[n:]
		if !m.binary && !utf8.Valid(m.p) {
			return bad("text message is not valid UTF-8")
		}
		ps.msgs = append(ps.msgs, m)
	}
	if len(rest) != 0 {
		return bad("trailing bytes")
	}
	return ps, nil
}

// restore sets up s's numbering and replay buffer from ps; s is new and not
// shared yet.
func (s *Session) restore(ps *parkedState) {
	q := s.seq
	q.taken, q.recv, q.ackSent = ps.taken, ps.taken, ps.taken
	q.peerAck = ps.peerAck
	q.nextSeq = ps.peerAck + uint64(len(ps.msgs))
	q.replay = make([]sent, 0, len(ps.msgs))
	for i, m := range ps.msgs {
		e := sent{seq: ps.peerAck + uint64(i) + 1, binary: m.binary}
		e.p, e.buf = keep(m.p)
		e.cost = msgCost(e.p)
		q.replay = append(q.replay, e)
		q.replayLen += e.cost
	}
	s.used.Store(ps.used)
}

// adopt makes a session taken over from a park this Handler's, and starts
// serve for it with HandedOver true. It counts against the Handler's
// limits as a new session does, at the window the client already keeps
// to. A session already held (a second take of the same park) is left as
// it is.
func (h *Handler) adopt(r *http.Request, ps *parkedState, l Lease) error {
	key := h.clientKey(r)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[ps.id] != nil {
		return nil
	}
	switch {
	case h.closed || h.stopping:
		return refuseClosed
	case len(h.sessions) >= h.opts.maxSessions:
		return refuseSessions
	case key != "" && h.clients[key] >= h.opts.perClient:
		return refuseClient
	}
	reserve := h.reservation(ps.win)
	if h.reserved+reserve > h.opts.budget {
		return refuseBudget
	}
	s := initSession(h, r.Context(), ps.win, false, ps.id, ps.secret)
	s.handedOver = true
	s.restore(ps)
	s.clientKey, s.reserved = key, reserve
	h.sessions[s.id] = s
	h.reserved += reserve
	if key != "" {
		h.clients[key]++
	}
	h.cl.register(s, l)
	h.stats.takenOver.Add(1)
	h.log.Debug("session taken over", slog.String("session", s.idStr))
	h.runLocked(s)
	return nil
}

// Handing over.
const (
	// parkWorkers bounds the Park calls Shutdown makes at once.
	parkWorkers = 16
	// parkGrace bounds the handoff of sessions whose serve had not
	// returned when Shutdown's ctx ended.
	parkGrace = time.Second
)

// errHandedOver ends a session on the instance that handed it over.
var errHandedOver = fmt.Errorf("tether: session handed over to another instance: %w", ErrShuttingDown)

// handOver parks every session held, closes their links with 1012, and
// takes the instance out of the cluster: Shutdown with a cluster.
func (h *Handler) handOver(ctx context.Context) error {
	cl := h.cl
	cl.stopLoop() // the leases are about to be spent: no more renewals
	pctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), parkGrace)
		defer cancel()
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
		work   = make(chan *Session)
	)
	for range parkWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				if !h.park(pctx, s) {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	for _, s := range h.all() {
		if s.plain {
			// Its serve has not returned: it ends now.
			s.end(websocket.StatusServiceRestart, "server shutting down", errStopped)
			continue
		}
		work <- s
	}
	close(work)
	wg.Wait()
	cl.leave(pctx)
	if failed > 0 {
		return fmt.Errorf("tether: handler shutdown: %d sessions could not be handed over and were lost", failed)
	}
	return nil
}

// park hands one session over, and reports whether it could.
func (h *Handler) park(ctx context.Context, s *Session) bool {
	cl := h.cl
	// A Write stuck on a client that stopped reading holds wmu for as long
	// as the link lasts (with no heartbeat timeout, no write deadline ends
	// it): once ctx ends, the link is cut, and the Write returns.
	stop := context.AfterFunc(ctx, func() {
		s.linkMu.Lock()
		l := s.ws
		s.linkMu.Unlock()
		if l != nil {
			_ = l.CloseNow()
		}
	})
	s.seq.wmu.Lock()
	stop()
	if s.isEnded() {
		s.seq.wmu.Unlock()
		return true
	}
	s.frozen = true // a Write from now on fails: it would not be handed over
	s.seq.mu.Lock()
	state, err := encodeParked(s, h.opts.handoffMax)
	s.seq.mu.Unlock()
	s.seq.wmu.Unlock()
	l := cl.leaseOf(s)
	if err == nil {
		err = retryUnavailable(ctx, func() error {
			if l.Epoch == 0 {
				// Opened while the directory was out of reach, and never
				// claimed.
				var err error
				if l, err = cl.c.Claim(ctx, SessionID(s.id)); err != nil {
					return err
				}
			}
			return cl.c.Park(ctx, l, state, h.opts.sessionTTL)
		})
	}
	if err != nil {
		// Its record stays this instance's, which leaves the cluster: a
		// client that comes back is told the session is lost.
		h.log.Warn("cluster: session not handed over; it is lost", slog.String("session", s.idStr), slog.Any("err", err))
		s.finish(websocket.StatusServiceRestart, "server shutting down",
			fmt.Errorf("tether: session %s could not be handed over (%w): %w", s.idStr, err, ErrSessionLost), leaveGone)
		return false
	}
	h.stats.parked.Add(1)
	s.finish(websocket.StatusServiceRestart, "service restart", errHandedOver, leaveGone)
	return true
}

// retryUnavailable calls fn until it succeeds, fails otherwise than for
// the directory being out of reach, or ctx ends: a directory slow for a
// moment under the load of a shutdown must not lose sessions that ctx
// leaves time to hand over.
func retryUnavailable(ctx context.Context, fn func() error) error {
	wait := 10 * time.Millisecond
	for {
		err := fn()
		if !errors.Is(err, ErrClusterUnavailable) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}
