package tether

import (
	"errors"
	"io"
	"sync"

	"github.com/coder/websocket"
)

// relay is the body of a plain message the background reader has begun to
// read ahead, because nobody was reading when its header came. A Reader
// that comes meanwhile takes it at once, as coder/websocket's Reader
// returns at the header, rather than wait for the end of a message whose
// rest may only be sent once the application has seen its start. The
// background reader goes on reading the body and passes each part on.
type relay struct {
	l   *liveLink
	typ websocket.MessageType

	mu    sync.Mutex
	buf   []byte // read so far, until the relay is taken
	taken bool
	p     []byte        // once taken: read and not yet passed on
	err   error         // once taken: io.EOF at the end, or why it was cut
	more  chan struct{} // once taken: closed and renewed when p or err change
}

// readBody reads the body of the message whose header the background
// reader has just read on l. It returns the body whole, or taken true when
// a Reader took the message meanwhile.
func (r *reader) readBody(l *liveLink, typ websocket.MessageType, body io.Reader) (p []byte, taken bool, err error) {
	rl := &relay{l: l, typ: typ}
	r.mu.Lock()
	r.ahead = rl
	r.mu.Unlock()
	var (
		buf   = make([]byte, 0, 512)
		chunk []byte
	)
	for {
		rl.mu.Lock()
		taken = rl.taken
		rl.mu.Unlock()
		var n int
		if !taken {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err = body.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			rl.mu.Lock()
			if rl.taken {
				// Taken while this part was read: the Reader has what came
				// before it.
				rl.p = append(rl.p, buf[len(buf)-n:]...)
				rl.signal()
			} else {
				rl.buf = buf
			}
			rl.mu.Unlock()
		} else {
			if chunk == nil {
				chunk = make([]byte, 4096)
			}
			n, err = body.Read(chunk)
			rl.mu.Lock()
			if !r.discarding.Load() {
				// After CloseRead the rest is read and dropped.
				rl.p = append(rl.p, chunk[:n]...)
			}
			rl.signal()
			rl.mu.Unlock()
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			err = nil
		}
		r.mu.Lock()
		if r.ahead == rl {
			r.ahead = nil
		}
		rl.mu.Lock()
		taken = rl.taken
		if taken {
			if errors.Is(err, websocket.ErrMessageTooBig) {
				// The Reader's Read says so (see reportTooBig).
				r.toldTooBigOn(l)
			}
			rl.err = err
			if err == nil {
				rl.err = io.EOF
			}
			rl.signal()
		}
		rl.mu.Unlock()
		r.mu.Unlock()
		return buf, taken, err
	}
}

// take hands the relay to a Reader; r.mu is held.
func (rl *relay) take() {
	rl.mu.Lock()
	rl.taken = true
	rl.p, rl.buf = rl.buf, nil
	rl.more = make(chan struct{})
	rl.mu.Unlock()
}

// signal wakes a Read waiting for more; rl.mu is held.
func (rl *relay) signal() {
	if rl.more != nil {
		close(rl.more)
		rl.more = make(chan struct{})
	}
}

// Read reads what the background reader has passed on, waiting for more
// as long as the message has not ended: the background reader always ends
// it, with io.EOF or with the link's error, since a link that fails or is
// closed stops its read.
func (rl *relay) Read(p []byte) (int, error) {
	for {
		rl.mu.Lock()
		if len(rl.p) > 0 {
			n := copy(p, rl.p)
			rl.p = rl.p[n:]
			rl.mu.Unlock()
			return n, nil
		}
		if rl.err != nil {
			err := rl.err
			rl.mu.Unlock()
			return 0, err
		}
		more := rl.more
		rl.mu.Unlock()
		<-more
	}
}
