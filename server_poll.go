package tether

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// HTTP long polling runs on the Handler's URL with a "tether" query
// parameter: POST ?tether=open opens or resumes a session and answers its
// Hello frame; GET ?tether=poll&sid=ID&ack=N is held until the session has
// frames for the client (or the poll wait passes) and answers them as a
// batch; POST ?tether=send&sid=ID carries a batch of the client's frames and
// is answered with an Ack frame. The resume secret travels in the
// Tether-Secret header. Sequence numbers make every request safe to retry.

const (
	pollParam     = "tether"
	pollOpen      = "open"
	pollGet       = "poll"
	pollSend      = "send"
	pollMediaType = "application/octet-stream"
)

// pollLink is a session's long-polling link on the server.
type pollLink struct {
	s *Session

	mu      sync.Mutex
	wake    chan struct{} // closed when there may be something to send
	release chan struct{} // closed to release the outstanding poll
	active  int           // requests in progress
	closed  bool
	code    websocket.StatusCode
	reason  string

	// One send request at a time keeps frames in order, and one more may
	// wait for its turn; sends counts both.
	turn  chan struct{}
	sends atomic.Int32
}

func newPollLink(s *Session) *pollLink {
	return &pollLink{s: s, wake: make(chan struct{}), turn: make(chan struct{}, 1)}
}

// sendTurnWait is how long a send request waits for the one before it on
// the same session before it is refused. Every send is over by the poll
// wait after it began reading its body, and takes no longer to apply.
const sendTurnWait = 5 * time.Second

// takeTurn waits, without reading the request's body, until no other send
// of the session is in progress. It reports false when one already waits,
// or when ctx ends or sendTurnWait passes first.
func (p *pollLink) takeTurn(ctx context.Context) bool {
	if p.sends.Add(1) > 2 {
		p.sends.Add(-1)
		return false
	}
	select {
	case p.turn <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(sendTurnWait)
	defer t.Stop()
	select {
	case p.turn <- struct{}{}:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	p.sends.Add(-1)
	return false
}

// doneTurn ends the send that took its turn.
func (p *pollLink) doneTurn() {
	<-p.turn
	p.sends.Add(-1)
}

// notify wakes the outstanding poll.
func (p *pollLink) notify() {
	p.mu.Lock()
	close(p.wake)
	p.wake = make(chan struct{})
	p.mu.Unlock()
}

// stop releases the outstanding poll: the session moved to another link.
func (p *pollLink) stop() {
	p.mu.Lock()
	if p.release != nil {
		close(p.release)
		p.release = nil
	}
	p.closed = true
	p.mu.Unlock()
	p.notify()
}

// closeWith ends the link, telling the client how the session ended.
func (p *pollLink) closeWith(code websocket.StatusCode, reason string) {
	p.mu.Lock()
	p.code, p.reason = code, reason
	p.mu.Unlock()
	p.stop()
}

func (p *pollLink) begin() {
	p.mu.Lock()
	p.active++
	p.mu.Unlock()
	p.s.pollBegan()
}

func (p *pollLink) finish() {
	p.mu.Lock()
	p.active--
	idle := p.active == 0
	p.mu.Unlock()
	if idle {
		p.s.pollsDone(p)
	}
}

// busy reports whether a request of p is in progress.
func (p *pollLink) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.active > 0
}

// maxRequestTime bounds how long a polling request holds its session's TTL
// off: a poll is held for the poll wait, and a send, once its turn has come,
// has the poll wait to deliver its body and takes no time to apply it.
func (h *Handler) maxRequestTime() time.Duration {
	return h.opts.pollWait + time.Second
}

func (h *Handler) servePoll(w http.ResponseWriter, r *http.Request) {
	req, perr := parsePollRequest(r)
	if perr != nil {
		if perr.status == http.StatusUpgradeRequired {
			// Marked as the Handler's own (see ServeHTTP): a client that
			// sent an Upgrade learns that a proxy stripped it, and moves to
			// polling at once.
			w.Header().Set("Upgrade", "websocket")
		}
		if perr.allow != "" {
			w.Header().Set("Allow", perr.allow)
		}
		h.refuse(w, r, perr.status, perr.msg)
		return
	}
	if !h.originAllowed(r) {
		h.refuse(w, r, http.StatusForbidden, "tether: request Origin not allowed")
		return
	}
	if req.op == pollOpen {
		if h.stoppingRefuses(req.resume) {
			h.refuseStopping(w, r)
			return
		}
		if req.resume.ok && h.cl != nil && h.routeResume(w, r, req.resume) {
			return
		}
		h.pollOpen(w, r, req.resume)
		return
	}
	s := h.lookup(req.id, req.secret)
	if s == nil && h.cl != nil && !h.holds(req.id) && h.routePoll(w, r, req) {
		return
	}
	if s == nil {
		h.mu.Lock()
		ts, ok := h.tombs.find(req.id, req.secret, time.Now())
		h.mu.Unlock()
		if ok {
			// A poll or a send that meets the end of its session is told
			// how it ended, whichever comes first.
			writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(ts.code), Reason: ts.reason}})
			return
		}
		h.refuse(w, r, http.StatusNotFound, "tether: unknown session")
		return
	}
	s.linkMu.Lock()
	p := s.poll
	ended, code, reason := s.ended, s.endCode, s.endReason
	s.linkMu.Unlock()
	if ended {
		// Ending, and not yet forgotten: the same answer as its tombstone.
		writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(code), Reason: clipReason(reason)}})
		return
	}
	if p == nil {
		h.refuse(w, r, http.StatusConflict, "tether: session is not on polling")
		return
	}
	if req.op == pollGet {
		p.begin()
		defer p.finish()
		h.pollWait(w, r, s, p, req.ack)
		return
	}
	// One send at a time, decided before the body is read: a client that
	// piles up sends holds no more than one body.
	if !p.takeTurn(r.Context()) {
		h.refuse(w, r, http.StatusTooManyRequests, "tether: another send of this session is in progress")
		return
	}
	defer p.doneTurn()
	p.begin()
	defer p.finish()
	h.pollSend(w, r, s, p)
}

// readBody reads a polling request's body, at most limit bytes, within the
// poll wait: a body that trickles in must not hold the session's TTL or a
// send turn for longer. It answers the request itself when it fails.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	if r.ContentLength > limit {
		h.refuse(w, r, http.StatusRequestEntityTooLarge, "tether: request body too large")
		return nil, false
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.opts.pollWait))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		// The rest of the body is not to be read: net/http would try
		// before answering, without a deadline, unless told the connection
		// ends here.
		w.Header().Set("Connection", "close")
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.refuse(w, r, http.StatusRequestEntityTooLarge, "tether: request body too large")
			return nil, false
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			h.refuse(w, r, http.StatusRequestTimeout, "tether: request body too slow")
			return nil, false
		}
		h.refuse(w, r, http.StatusBadRequest, "tether: reading request body")
		return nil, false
	}
	return body, true
}

func (h *Handler) pollOpen(w http.ResponseWriter, r *http.Request, resume resumeReq) {
	// The body means nothing: a little of it is read, within the poll wait,
	// and the rest left to the server.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(h.opts.pollWait))
	n, err := io.Copy(io.Discard, io.LimitReader(r.Body, maxOpenBody+1))
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil || n > maxOpenBody {
		w.Header().Set("Connection", "close") // see readBody
	}
	s, status, err := h.openSession(r, resume, Polling, false)
	if err != nil {
		var (
			te *tombstoneError
			rf *refusal
		)
		switch {
		case errors.As(err, &te):
			writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(te.code), Reason: te.reason}})
		case errors.As(err, &rf):
			h.refuse(w, r, rf.status, rf.Error())
		default:
			h.refuse(w, r, http.StatusBadRequest, err.Error())
		}
		return
	}
	if status != frame.StatusResumed && h.cl != nil {
		h.cl.claimNew(r, s)
	}
	s.detach()
	p := newPollLink(s)
	s.seq.mu.Lock()
	hello := s.hello(status) // openSession applied the resume's ack
	s.linkMu.Lock()
	ended := s.ended
	if !ended {
		s.poll, s.transport = p, Polling
		s.awayLocked()
	}
	s.linkMu.Unlock()
	s.seq.mu.Unlock()
	if ended {
		h.refuse(w, r, http.StatusGone, "tether: session ended")
		return
	}
	writeFrames(w, []frame.Frame{hello})
}

// maxOpenBody is the most of an open request's body the Handler reads (and
// ignores).
const maxOpenBody = 1 << 10

// pollWait holds a poll until the session has frames for the client.
func (h *Handler) pollWait(w http.ResponseWriter, r *http.Request, s *Session, p *pollLink, ack uint64) {
	// One outstanding poll per session: a newer one releases the older.
	release := make(chan struct{})
	p.mu.Lock()
	if p.release != nil {
		close(p.release)
	}
	p.release = release
	p.mu.Unlock()

	timer := time.NewTimer(h.opts.pollWait)
	defer timer.Stop()
	for {
		s.seq.mu.Lock()
		if ack > s.seq.nextSeq {
			s.seq.mu.Unlock()
			h.refuse(w, r, http.StatusBadRequest, "tether: ack beyond what was sent")
			return
		}
		s.seq.acked(ack)
		fs := s.seq.unsent(h.opts.maxBatch, int(h.opts.maxBody))
		p.mu.Lock()
		wake, closed, code, reason := p.wake, p.closed, p.code, p.reason
		p.mu.Unlock()
		if closed && code != 0 {
			fs = append(fs, frame.Frame{Kind: frame.Close, Code: uint16(code), Reason: clipReason(reason), Ack: s.seq.taken})
		}
		if len(fs) > 0 || closed {
			// Encoded under seq.mu: the payloads are the replay buffer's,
			// reused once acknowledged.
			body := frame.AppendBatch(nil, fs)
			s.seq.mu.Unlock()
			writeBatch(w, body)
			return
		}
		s.seq.mu.Unlock()
		select {
		case <-wake:
		case <-release:
			p.mu.Lock()
			code := p.code
			p.mu.Unlock()
			if code != 0 {
				continue // the session ended: say how (closeWith sets code first)
			}
			writeFrames(w, nil)
			return
		case <-timer.C:
			writeFrames(w, nil)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// sendLimit is the largest body a send of s may have: what an honest client
// can have unacknowledged (its window, or a single message of any size up
// to the read limit) with the frames around it, and acks, within
// WithPollLimits' bound.
func (h *Handler) sendLimit(s *Session) int64 {
	msg := int64(msgOverhead + bufSize(int(h.opts.readLimit)))
	honest := max(int64(s.win.bytes), msg) + int64(h.opts.maxBatch)*16 + 256
	return min(h.opts.maxBody, honest)
}

// pollSend takes a batch of the client's frames. The batch is checked
// whole before any of it is applied: a request is applied entirely or
// refused.
func (h *Handler) pollSend(w http.ResponseWriter, r *http.Request, s *Session, p *pollLink) {
	body, ok := h.readBody(w, r, h.sendLimit(s))
	if !ok {
		return
	}
	fs, err := parseSendBody(body, h.opts.maxBatch, h.opts.readLimit)
	if err != nil {
		var se *sendError
		errors.As(err, &se)
		h.refuse(w, r, se.status, err.Error())
		return
	}
	if err := s.receiveBatch(fs, p); err != nil {
		status := http.StatusBadRequest
		switch {
		case errors.Is(err, errBeyondWindow):
			status = http.StatusRequestEntityTooLarge
		case errors.Is(err, errMoved):
			// The session's own end state, not its poll link's: end takes
			// the link away first and tells it how the session ended after
			// (see Session.end), and a send in between must not say 409.
			s.linkMu.Lock()
			ended, code, reason := s.ended, s.endCode, s.endReason
			s.linkMu.Unlock()
			if ended {
				// The session ended while this request was on its way:
				// say how, as its poll does, rather than that it moved.
				writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(code), Reason: clipReason(reason)}})
				return
			}
			status = http.StatusConflict
		}
		h.refuse(w, r, status, "tether: "+err.Error())
		return
	}
	s.seq.mu.Lock()
	ack := s.seq.ackFrame()
	s.seq.mu.Unlock()
	writeFrames(w, []frame.Frame{ack})
}

func writeFrames(w http.ResponseWriter, fs []frame.Frame) {
	writeBatch(w, frame.AppendBatch(nil, fs))
}

// writeBatch answers a polling request with an encoded batch.
func writeBatch(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", pollMediaType)
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// originAllowed applies the WebSocket Origin policy to polling requests: a
// browser's cross-origin request must match WithAcceptOptions'
// OriginPatterns.
func (h *Handler) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || h.opts.accept.InsecureSkipVerify {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, pat := range h.opts.accept.OriginPatterns {
		target := u.Host
		if strings.Contains(pat, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(pat), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

var (
	errMoved        = errors.New("session moved to another link")
	errBeyondWindow = errors.New("more than the session's window unacknowledged")
)

// receiveBatch applies the frames of a polling send, delivering their new
// messages to the session's reader, unless the session has moved on to
// another link meanwhile. It checks the whole batch first (acks, sequence
// numbers, room in the window for its new messages) and applies none of it
// when any of it is wrong.
func (s *Session) receiveBatch(fs []frame.Frame, p *pollLink) error {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	s.linkMu.Lock()
	current := s.poll == p
	s.linkMu.Unlock()
	if !current {
		return errMoved
	}
	s.seq.mu.Lock()
	sent, next := s.seq.nextSeq, s.seq.recv
	s.seq.mu.Unlock()
	var costs []int
	for i := range fs {
		f := &fs[i]
		if f.Ack > sent {
			return fmt.Errorf("tether: session: peer acknowledged %d of %d messages sent", f.Ack, sent)
		}
		if f.Kind == frame.Close {
			break // what follows a Close is not taken
		}
		if f.Kind != frame.Data || f.Seq <= next {
			continue
		}
		if f.Seq != next+1 {
			// The client resumes and replays (see gapped).
			err := fmt.Errorf("%w: got %d after %d", errGap, f.Seq, next)
			s.gapped(next, err)
			return err
		}
		next++
		costs = append(costs, msgOverhead+bufSize(len(f.Payload)))
	}
	if !s.rd.roomFor(costs, s.win) {
		return errBeyondWindow
	}
	for i := range fs {
		m, deliver, err := s.take(&fs[i])
		if err != nil {
			return err
		}
		if deliver {
			m.p = payloadCopy(m.p, false) // not the request body's: that is let go
			if !s.rd.deliver(m, s.win) {
				return errBeyondWindow // not after roomFor: only Reads change it
			}
		}
		if fs[i].Kind == frame.Close {
			break
		}
	}
	return nil
}
