package tether

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
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

	sendMu sync.Mutex // one send request at a time keeps frames in order
}

func newPollLink(s *Session) *pollLink {
	return &pollLink{s: s, wake: make(chan struct{})}
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
	p.s.ttl.Stop()
}

func (p *pollLink) finish() {
	p.mu.Lock()
	p.active--
	idle := p.active == 0
	p.mu.Unlock()
	if idle {
		p.s.ttl.Reset(p.s.h.opts.sessionTTL)
	}
}

func (p *pollLink) busy() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.active > 0
}

func (h *Handler) servePoll(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	op := q.Get(pollParam)
	if op == "" {
		w.Header().Set("Upgrade", "websocket")
		http.Error(w, "tether: expected a WebSocket handshake or a tether polling request", http.StatusUpgradeRequired)
		return
	}
	if !h.originAllowed(r) {
		http.Error(w, "tether: request Origin not allowed", http.StatusForbidden)
		return
	}
	want := http.MethodPost
	if op == pollGet {
		want = http.MethodGet
	}
	switch op {
	case pollOpen, pollGet, pollSend:
	default:
		http.Error(w, "tether: unknown polling operation", http.StatusBadRequest)
		return
	}
	if r.Method != want {
		w.Header().Set("Allow", want)
		http.Error(w, "tether: method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if op == pollOpen {
		h.pollOpen(w, r)
		return
	}
	var id, secret [16]byte
	if decodeID(q.Get("sid"), &id) != nil || decodeID(r.Header.Get(headerSecret), &secret) != nil {
		http.Error(w, "tether: malformed session id or secret", http.StatusBadRequest)
		return
	}
	s := h.lookup(id, secret)
	if s == nil {
		h.mu.Lock()
		ts, ok := h.tombstones[id]
		h.mu.Unlock()
		if ok && ts.secret == secret {
			// A poll or a send that meets the end of its session is told
			// how it ended, whichever comes first.
			writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(ts.code), Reason: ts.reason}})
			return
		}
		http.Error(w, "tether: unknown session", http.StatusNotFound)
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
		http.Error(w, "tether: session is not on polling", http.StatusConflict)
		return
	}
	p.begin()
	defer p.finish()
	if op == pollGet {
		h.pollWait(w, r, s, p)
		return
	}
	h.pollSend(w, r, s, p)
}

func (h *Handler) pollOpen(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1024))
	resume, err := parseResume(r.Header.Get(headerSession), r.Header.Get(headerSecret), r.Header.Get(headerAck))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s, status, err := h.openSession(resume, Polling, false)
	if err != nil {
		var te *tombstoneError
		if errors.As(err, &te) {
			writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(te.code), Reason: te.reason}})
			return
		}
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	s.detach()
	p := newPollLink(s)
	s.seq.mu.Lock()
	if status == frame.StatusResumed {
		s.seq.acked(resume.ack)
	}
	hello := s.hello(status)
	s.linkMu.Lock()
	ended := s.ended
	if !ended {
		s.poll, s.transport = p, Polling
		s.ttl.Reset(h.opts.sessionTTL)
	}
	s.linkMu.Unlock()
	s.seq.mu.Unlock()
	if ended {
		http.Error(w, "tether: session ended", http.StatusGone)
		return
	}
	writeFrames(w, []frame.Frame{hello})
}

// pollWait holds a poll until the session has frames for the client.
func (h *Handler) pollWait(w http.ResponseWriter, r *http.Request, s *Session, p *pollLink) {
	ack, err := strconv.ParseUint(r.URL.Query().Get("ack"), 10, 64)
	if err != nil {
		http.Error(w, "tether: malformed ack", http.StatusBadRequest)
		return
	}
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
			http.Error(w, "tether: ack beyond what was sent", http.StatusBadRequest)
			return
		}
		s.seq.acked(ack)
		fs := s.seq.unsent(h.opts.maxBatch, int(h.opts.maxBody))
		p.mu.Lock()
		wake, closed, code, reason := p.wake, p.closed, p.code, p.reason
		p.mu.Unlock()
		if closed && code != 0 {
			fs = append(fs, frame.Frame{Kind: frame.Close, Code: uint16(code), Reason: reason, Ack: s.seq.taken})
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

// pollSend takes a batch of the client's frames.
func (h *Handler) pollSend(w http.ResponseWriter, r *http.Request, s *Session, p *pollLink) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, "tether: request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "tether: reading request body", http.StatusBadRequest)
		return
	}
	fs, err := frame.DecodeBatch(body, h.opts.maxBatch, int(h.opts.readLimit)+64)
	if err != nil {
		http.Error(w, "tether: "+err.Error(), http.StatusBadRequest)
		return
	}
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	for i := range fs {
		if fs[i].Kind == frame.Hello {
			http.Error(w, "tether: unexpected Hello frame", http.StatusBadRequest)
			return
		}
		if fs[i].Kind == frame.Data && int64(len(fs[i].Payload)) > h.opts.readLimit {
			http.Error(w, "tether: message too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := s.receivePolled(&fs[i], p); err != nil {
			status := http.StatusBadRequest
			if errors.Is(err, errBeyondWindow) {
				status = http.StatusRequestEntityTooLarge
			}
			if errors.Is(err, errMoved) {
				p.mu.Lock()
				closed, code, reason := p.closed, p.code, p.reason
				p.mu.Unlock()
				if closed && code != 0 {
					// The session ended while this request was on its way:
					// say how, as its poll does, rather than that it moved.
					writeFrames(w, []frame.Frame{{Kind: frame.Close, Code: uint16(code), Reason: reason}})
					return
				}
				status = http.StatusConflict
			}
			http.Error(w, "tether: "+err.Error(), status)
			return
		}
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

var errMoved = errors.New("session moved to another link")

// receivePolled takes a frame from a polling request and delivers its
// message to the session's reader, unless the session has moved on to
// another link meanwhile.
func (s *Session) receivePolled(f *frame.Frame, p *pollLink) error {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	s.linkMu.Lock()
	current := s.poll == p
	s.linkMu.Unlock()
	if !current {
		return errMoved
	}
	m, deliver, err := s.take(f)
	if err != nil || !deliver {
		return err
	}
	m.p = payloadCopy(m.p, false) // not the request body's: that is let go
	if !s.rd.deliver(m, s.win) {
		return errBeyondWindow
	}
	return nil
}

var errBeyondWindow = errors.New("more than the session's window unacknowledged")
