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
// background reader goes on reading the body and passes each part on, as
// fast as the Reader reads it: it reads no more from the socket while more
// than relayMax is passed on and unread, so that TCP pushes the sender back
// (a NetConn has no read limit to bound the message).
type relay struct {
	l   *liveLink
	typ websocket.MessageType

	mu    sync.Mutex
	buf   []byte // read so far, until the relay is taken
	taken bool
	p     []byte        // once taken: read and not yet passed on
	err   error         // once taken: io.EOF at the end, or why it was cut
	more  chan struct{} // once taken: closed and renewed when p or err change
	room  chan struct{} // closed when the Reader brings p within relayMax
	full  bool          // the background reader waits for room
}

// relayMax is how much of a message the background reader passes on ahead
// of the Reader that took it, beyond one read (of relayMax at most).
const relayMax = 64 << 10

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
			r.awaitTake(rl, len(buf))
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			// A read that a Reader's take overtakes is passed on whole:
			// relayMax at most, as the Reader may not read on.
			n, err = body.Read(buf[len(buf):min(cap(buf), len(buf)+relayMax)])
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
			r.awaitRelayRoom(rl)
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

// awaitRelayRoom waits while more than relayMax of rl is passed on and not
// read, until the Reader reads, CloseRead is called (then nothing more is
// kept) or rl's link fails or is retired (then the next read fails).
func (r *reader) awaitRelayRoom(rl *relay) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	for len(rl.p) > relayMax && !r.discarding.Load() && !rl.l.failed() && rl.l.ctx.Err() == nil {
		if rl.room == nil {
			rl.room = make(chan struct{})
		}
		room := rl.room
		rl.full = true
		rl.mu.Unlock()
		select {
		case <-room:
		case <-rl.l.dead:
		case <-rl.l.ctx.Done():
		}
		rl.mu.Lock()
		rl.full = false
	}
	if r.discarding.Load() {
		rl.p = nil // nobody will read it
	}
}

// awaitTake waits, while nobody has taken rl and n bytes of it, more than
// its link reads ahead (see readsAhead), are read, until a Reader takes it,
// a Read waits for a whole message, CloseRead is called, or the link fails
// or is retired. Without it a message read ahead would be bounded only by
// the read limit, which a NetConn sets to none.
func (r *reader) awaitTake(rl *relay, n int) {
	if n <= rl.l.readAhead.bytes {
		return
	}
	r.mu.Lock()
	rl.mu.Lock()
	for !rl.taken && !(r.waiting && !r.waitStream) && !r.discard && !rl.l.failed() && rl.l.ctx.Err() == nil {
		if rl.room == nil {
			rl.room = make(chan struct{})
		}
		room := rl.room
		rl.full = true
		rl.mu.Unlock()
		r.mu.Unlock()
		select {
		case <-room:
		case <-rl.l.dead:
		case <-rl.l.ctx.Done():
		}
		r.mu.Lock()
		rl.mu.Lock()
		rl.full = false
	}
	rl.mu.Unlock()
	r.mu.Unlock()
}

// wakeRoom wakes the background reader waiting for room; rl.mu is held.
func (rl *relay) wakeRoom() {
	if rl.room != nil {
		close(rl.room)
		rl.room = nil
	}
}

// stalled reports whether the background reader waits for the Reader.
func (rl *relay) stalled() bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return rl.full
}

// take hands the relay to a Reader; r.mu is held.
func (rl *relay) take() {
	rl.mu.Lock()
	rl.taken = true
	rl.p, rl.buf = rl.buf, nil
	rl.more = make(chan struct{})
	rl.wakeRoom()
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
			if len(rl.p) <= relayMax {
				rl.wakeRoom()
			}
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
