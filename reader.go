package tether

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/coder/websocket"
)

// Reader waits for the next data message and returns its type and an
// io.Reader for its body, as websocket.Conn.Reader does. The body must be
// read to io.EOF before the next Reader or Read: until then they fail with
// an error, as coder/websocket's do. The io.Reader is reused by the next
// Reader, so keep none.
//
// ctx bounds the wait for the message, as for Read, and never harms the
// link; a message that has begun is read to its end whatever ctx does.
// Reader rides through reconnects as Read does and reports the same errors.
//
// On a plain link the body is read from the socket as the application reads
// it, into the application's buffer, on its goroutine. When the link is lost
// in the middle of the body, the io.Reader's Read returns an error wrapping
// ErrLinkLost: the rest of that message is gone, and the next Reader returns
// the next message, from the next link. In session mode a message is
// numbered and acknowledged whole: it is received whole before Reader
// returns, so a message cut by a dropped link comes again, whole, after the
// resume, and a Reader never sees part of it twice.
func (c *Conn) Reader(ctx context.Context) (websocket.MessageType, io.Reader, error) {
	m := c.rd.next(ctx, true, nil)
	if m.err != nil {
		return 0, nil, m.err
	}
	c.stats.msgsIn.Add(1)
	return m.typ, c.rd.sr, nil
}

// stream is the io.Reader that Reader returns: one per Conn, reused from
// one message to the next, as *websocket.Conn's is, so that reading into
// the application's buffer costs no allocation.
type stream struct {
	r    *reader
	typ  websocket.MessageType
	l    *liveLink // the link body is read from
	body io.Reader // the body in the socket (a plain link), or nil
	p    []byte    // else the message, what is left of it
	err  error     // sticky: io.EOF at the end, or why the message was cut
}

// openStream sets up the stream for m, a message just handed to a Reader,
// and marks it open until it has been read to its end; r.sem is held.
func (r *reader) openStream(m *message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sr == nil {
		r.sr = &stream{r: r}
	}
	*r.sr = stream{r: r, typ: m.typ, l: m.from, body: m.body, p: m.p}
	if m.body == nil {
		r.sr.l = nil
	}
	r.opened = true
}

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.body == nil {
		if len(s.p) == 0 {
			s.end()
			return 0, io.EOF
		}
		n := copy(p, s.p)
		s.p = s.p[n:]
		s.count(n)
		return n, nil
	}
	r := s.r
	r.mu.Lock()
	if r.openLink != s.l {
		discard := r.discard
		r.mu.Unlock()
		switch {
		case discard:
			// CloseRead took the rest of the message to drop it.
			s.err = errReadClosed
		case s.l.failed():
			// The link was lost while the application was not reading.
			s.err = fmt.Errorf("tether: read: %w: the message was cut short: %w", ErrLinkLost, s.l.err)
		default:
			s.err = fmt.Errorf("tether: read: %w: the message was cut short", ErrLinkLost)
		}
		return 0, s.err
	}
	r.bodyRead = true
	r.mu.Unlock()
	n, err := s.body.Read(p)
	s.count(n)
	r.mu.Lock()
	r.bodyRead = false
	switch {
	case err == nil:
		if r.discard && r.openLink == s.l {
			// CloseRead was called meanwhile: the background reader reads
			// the rest and drops it.
			r.held = &heldMsg{l: s.l, typ: s.typ, r: s.body}
			r.opened, r.openLink = false, nil
			if r.link != nil && !r.bg && !r.inRead && !r.direct {
				r.startBackground(r.link)
			}
		}
		r.mu.Unlock()
		s.l.touch()
		return n, nil
	case errors.Is(err, io.EOF):
		if r.openLink == s.l {
			r.opened, r.openLink = false, nil
			r.settle()
		}
		r.mu.Unlock()
		s.l.touch()
		s.err = io.EOF
		return n, io.EOF
	}
	if r.openLink == s.l {
		r.opened, r.openLink = false, nil
	}
	r.clearLinkLocked(s.l)
	if errors.Is(err, websocket.ErrMessageTooBig) {
		r.toldTooBig = true
		s.err = fmt.Errorf("tether: read: a message from the server was over the read limit and was dropped with its link: %w", err)
	} else {
		s.err = fmt.Errorf("tether: read: %w: the message was cut short: %w", ErrLinkLost, err)
	}
	r.mu.Unlock()
	s.l.fail(err)
	return n, s.err
}

// end closes a message read from memory.
func (s *stream) end() {
	s.err = io.EOF
	r := s.r
	r.mu.Lock()
	if r.openLink == nil {
		r.opened = false
	}
	r.mu.Unlock()
}

func (s *stream) count(n int) {
	if c := s.r.conn; c != nil && n > 0 {
		c.stats.bytesIn.Add(uint64(n))
	}
}
