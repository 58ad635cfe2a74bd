package tether

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

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
// it, into the application's buffer, on its goroutine; a message that began
// to arrive while nobody was reading is returned at once all the same, its
// body passed on as it comes. When the link is lost
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

// A stream's body, while it is in the socket, is read by the application
// or by nobody: the reader takes it away (to drop it after CloseRead, or
// because its link is gone) only while no Read of it is in progress.
const (
	streamIdle    int32 = iota // open, and nobody reads it
	streamReading              // the application is reading it
	streamGone                 // taken away, or read to its end
)

// streamTouchBytes is how much of a long body is read between two signs of
// life for the heartbeat (see liveLink.touch), which cost a clock read.
const streamTouchBytes = 32 << 10

// stream is the io.Reader that Reader returns: one per Conn, reused from
// one message to the next, as *websocket.Conn's is, so that reading into
// the application's buffer costs no allocation.
type stream struct {
	r     *reader
	typ   websocket.MessageType
	l     *liveLink    // the link body is read from
	body  io.Reader    // the body in the socket (a plain link), or nil
	state atomic.Int32 // for body (see streamIdle)
	p     []byte       // without body, what is left of the message
	relay *relay       // without body, where the rest comes from, if not p
	err   error        // sticky: io.EOF at the end, or why the message was cut
	fresh int          // bytes read since the last touch
}

// openStream sets up the stream for m, a message a Reader is about to
// return, and marks it open until it has been read to its end; r.mu is
// held.
func (r *reader) openStream(m *message) {
	s := r.stream()
	s.typ, s.body, s.p, s.err, s.fresh = m.typ, m.body, m.p, nil, 0
	s.relay = m.relay
	s.l = nil
	s.state.Store(streamGone)
	if m.body != nil {
		s.l = m.from
		s.state.Store(streamIdle)
		r.openLink = m.from
	}
	r.opened = true
}

// stream returns the Reader's io.Reader, made on first use; r.mu is held.
func (r *reader) stream() *stream {
	if r.sr == nil {
		r.sr = &stream{r: r}
	}
	return r.sr
}

func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.relay != nil {
		return s.readRelay(p)
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
	if !s.state.CompareAndSwap(streamIdle, streamReading) {
		return 0, s.gone()
	}
	n, err := s.body.Read(p)
	s.count(n)
	if err == nil {
		if s.fresh += n; s.fresh >= streamTouchBytes {
			s.fresh = 0
			s.l.touch()
		}
		if s.state.CompareAndSwap(streamReading, streamIdle) && s.r.discarding.Load() {
			// CloseRead was called meanwhile: the background reader reads
			// the rest and drops it.
			s.r.mu.Lock()
			s.r.takeStream()
			if l := s.r.link; l != nil && !s.r.bg && !s.r.inRead && !s.r.direct {
				s.r.startBackground(l)
			}
			s.r.mu.Unlock()
		}
		return n, nil
	}
	r := s.r
	r.mu.Lock()
	s.state.Store(streamGone)
	if errors.Is(err, io.EOF) {
		if r.openLink == s.l {
			r.opened, r.openLink = false, nil
			r.settle()
		}
		r.mu.Unlock()
		s.err = io.EOF
		return n, io.EOF
	}
	if r.openLink == s.l {
		r.opened, r.openLink = false, nil
	}
	r.clearLinkLocked(s.l)
	if errors.Is(err, websocket.ErrMessageTooBig) {
		r.toldTooBigOn(s.l)
		s.err = fmt.Errorf("tether: read: a message from the server was over the read limit and was dropped with its link: %w", err)
	} else {
		s.err = fmt.Errorf("tether: read: %w: the message was cut short: %w", ErrLinkLost, err)
	}
	r.mu.Unlock()
	s.l.fail(err)
	return n, s.err
}

// gone returns why the body was taken away from the application.
func (s *stream) gone() error {
	switch {
	case s.r.discarding.Load():
		// CloseRead took the rest of the message to drop it.
		s.err = errReadClosed
	case s.l.failed() && errors.Is(s.l.err, websocket.ErrMessageTooBig):
		s.r.mu.Lock()
		s.r.toldTooBigOn(s.l)
		s.r.mu.Unlock()
		s.err = fmt.Errorf("tether: read: a message from the server was over the read limit and was dropped with its link: %w", s.l.err)
	case s.l.failed():
		s.err = fmt.Errorf("tether: read: %w: the message was cut short: %w", ErrLinkLost, s.l.err)
	default:
		s.err = fmt.Errorf("tether: read: %w: the message was cut short", ErrLinkLost)
	}
	return s.err
}

// takeStream gives the body of an open stream that nobody is reading to
// the background reader, which reads the rest of it first and drops it
// (see hold); r.mu is held.
func (r *reader) takeStream() {
	if r.openLink == nil || !r.sr.state.CompareAndSwap(streamIdle, streamGone) {
		return
	}
	r.held = &heldMsg{l: r.openLink, typ: r.sr.typ, r: r.sr.body}
	r.opened, r.openLink = false, nil
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

// readRelay reads a body the background reader passes on (see relay).
func (s *stream) readRelay(p []byte) (int, error) {
	if s.r.discarding.Load() {
		s.end()
		s.err = errReadClosed
		return 0, s.err
	}
	n, err := s.relay.Read(p)
	s.count(n)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, io.EOF):
		s.end()
		return n, io.EOF
	case errors.Is(err, websocket.ErrMessageTooBig):
		err = fmt.Errorf("tether: read: a message from the server was over the read limit and was dropped with its link: %w", err)
	default:
		err = fmt.Errorf("tether: read: %w: the message was cut short: %w", ErrLinkLost, err)
	}
	s.end()
	s.err = err
	return n, err
}
