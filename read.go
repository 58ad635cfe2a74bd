package tether

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Reading a live link must never stop: coder/websocket answers pings and close
// frames, and delivers pongs, only inside a Read. But handing every message
// from a reader goroutine to the caller costs a goroutine wake-up per message.
// So a Read whose ctx cannot be cancelled reads the link on the caller's own
// goroutine, and a background reader takes over only when nobody has called
// Read for a little while (the watchdog), or when a Read needs to honour a
// cancellable ctx: the caller's ctx must bound the call but never reach
// coder/websocket, which closes a link whose Read ctx ends.

type message struct {
	typ   websocket.MessageType
	p     []byte
	err   error
	owner *seqState // the session the message belongs to, if any
	from  *liveLink // the link it was read from, if known
	// body, for a Reader on a plain link, is the message's body still in
	// the socket: its header has been read, the rest is read as the
	// application asks (see stream).
	body io.Reader
	// relay, for a Reader, is the body of a message the background reader
	// had begun to read ahead (see relay).
	relay *relay
}

// reader serves Read calls from whichever link is current, for a Conn and,
// on the server, for a Session.
type reader struct {
	sem          chan struct{} // one Read at a time
	mu           sync.Mutex
	link         *liveLink     // the link to read; nil while there is none
	up           chan struct{} // closed when link is set, renewed when it is cleared
	final        error         // set when the Conn has ended
	pending      []message     // messages read while nobody was waiting, oldest first
	pendingBytes int           // the cost of the messages in pending (see msgCost)
	more         chan struct{} // closed when deliver adds to pending; renewed
	lost         error         // a lost session, reported once by Read
	tooBig       error         // a message over the read limit, reported once by Read
	held         *heldMsg      // a plain message begun but left unread (see hold)
	ahead        *relay        // a plain message the background reader is reading ahead
	discard      bool          // CloseRead was called: messages are read and dropped

	// A message handed to a Reader and not yet read to its end (see
	// stream). While its body is in the socket (openLink set), nobody else
	// may read the link.
	opened     bool
	openLink   *liveLink
	sr         *stream     // the Reader's io.Reader, made on first use
	streaming  bool        // the Read in progress is a Reader's
	discarding atomic.Bool // discard, for a stream's Read without r.mu
	conn       *Conn       // the Conn whose reader this is; nil on the server

	// The link whose message over the read limit a Reader reported itself,
	// and the link tooBig is about: told once, whichever comes first.
	toldTooBig *liveLink
	tooBigLink *liveLink

	// onTake, if set, is called on the Read's goroutine for every message of
	// a session that Read returns: the message is acknowledged once read.
	onTake func(seq *seqState, n int)

	inRead bool // a Read call is in progress
	direct bool // a Read call is reading the link on its own goroutine
	bg     bool // the background reader is running

	waiting     bool         // a Read waits on handoff for the background reader
	waitDirect  bool         // ... and wants to read directly afterwards
	waitStream  bool         // ... and is a Reader, which takes a body in the socket
	handoff     chan message // capacity 1: at most one waiting Read
	readsDone   uint64       // finished Read calls, for the watchdog
	seenByWatch uint64
	armed       bool
	idle        time.Duration // the watchdog's next delay (see readerIdle)
	watchdog    *time.Timer
}

// heldMsg is the next data message of a plain link once its header has been
// read: the read-ahead bound is reached, and reading on would mean keeping
// more. Its body is left in the socket until a Read takes it.
type heldMsg struct {
	l   *liveLink
	typ websocket.MessageType
	r   io.Reader
}

// errReadClosed is what Read returns after CloseRead.
var errReadClosed = errors.New("tether: read: CloseRead was called; messages are discarded")

// errNotRead is what Read and Reader return while the message of the last
// Reader has not been read to its end, as *websocket.Conn's do.
var errNotRead = errors.New("tether: read: previous message not read to completion")

// errPinLost is what a read pinned to a link gets once that link is gone
// (see NetConn).
var errPinLost = errors.New("tether: read: the link is gone")

func newReader() *reader {
	r := &reader{
		sem:     make(chan struct{}, 1),
		up:      make(chan struct{}),
		handoff: make(chan message, 1),
		idle:    readerIdle,
	}
	r.watchdog = time.AfterFunc(time.Hour, r.watch)
	r.watchdog.Stop()
	return r
}

// readerIdle is how long the link may go unread after a Read returns before
// the background reader takes over: long enough for a loop to come back to
// Read, short enough that pongs, close frames and resets are seen at once.
// While Reads keep coming, the watchdog looks again, less and less often up
// to readerIdleMax (each look costs a goroutine and may wake a thread), and
// it is back to readerIdle once it has had to take over. Moving the timer on
// at every Read instead would cost more: a timer set sooner than the
// runtime's next one wakes its network poller.
const (
	readerIdle    = time.Millisecond
	readerIdleMax = 8 * time.Millisecond
)

// A plain link is read ahead of an application that does not keep up, so
// that pings, pongs and close frames keep flowing, up to 1 MiB or 1024
// messages (one message more when it is large, itself read ahead no
// further than 1 MiB: see awaitTake). Past that the sender is pushed back
// through TCP, and control frames are read only as far as the next data
// message (see hold).
const (
	plainReadAhead     = 1 << 20
	plainReadAheadMsgs = 1024
)

// Read reads the next data message. It rides through reconnects and returns
// an error only when the Conn is closed for good, or when ctx ends, or once to
// report what the application must know: a session lost (ErrSessionLost), a
// message over the read limit dropped (websocket.ErrMessageTooBig). Ending
// ctx never harms the link. A Read whose ctx has ended returns at once, even
// when messages are waiting, and a message that arrives after ctx ended is
// kept for the next Read. After CloseRead, Read fails.
//
// Read reads the link on the caller's goroutine. When ctx ends while a
// message is half received, Read returns once that message is complete; it
// is returned rather than lost. With an http.Client of your own in
// WithDialOptions, tether cannot watch the socket, and a Read whose ctx can
// be cancelled waits for a background reader instead.
func (c *Conn) Read(ctx context.Context) (websocket.MessageType, []byte, error) {
	m := c.rd.read(ctx)
	if m.err != nil {
		return 0, nil, m.err
	}
	c.stats.msgsIn.Add(1)
	c.stats.bytesIn.Add(uint64(len(m.p)))
	return m.typ, m.p, nil
}

// read returns the next message, or why there is none.
func (r *reader) read(ctx context.Context) message { return r.next(ctx, false, nil) }

// next returns the next message. With stream set, a message of a plain link
// may come with its body still in the socket (m.body), and the reader holds
// it open until the application has read it to its end. With pin set, next
// returns errPinLost instead of anything that did not come from pin.
func (r *reader) next(ctx context.Context, stream bool, pin *liveLink) message {
	select {
	case r.sem <- struct{}{}:
	default:
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			return message{err: fmt.Errorf("tether: read: %w", ctx.Err())}
		}
	}
	r.streaming = stream
	m := r.readLocked(ctx, stream, pin)
	<-r.sem
	if m.owner != nil && r.onTake != nil {
		r.onTake(m.owner, len(m.p))
	}
	return m
}

func (r *reader) readLocked(ctx context.Context, stream bool, pin *liveLink) message {
	cancellable := ctx.Done() != nil
	r.mu.Lock()
	r.inRead = true
	for {
		if r.discard {
			return r.leave(message{err: errReadClosed})
		}
		if r.opened {
			if r.openLink == nil || r.openLink == r.link {
				return r.leave(message{err: errNotRead})
			}
			// Its link is gone: the message was cut, and the Reader that
			// has it says so.
			r.opened, r.openLink = false, nil
		}
		// A message waiting is kept for the next Read once ctx has ended:
		// a read loop stopped by its ctx stops, however fast messages come.
		if cancellable && ctx.Err() != nil {
			return r.leave(message{err: fmt.Errorf("tether: read: %w", ctx.Err())})
		}
		if len(r.pending) > 0 {
			if pin != nil && r.pending[0].from != pin {
				return r.leave(message{err: errPinLost})
			}
			m := r.pending[0]
			r.pending[0] = message{}
			r.pending = r.pending[1:]
			r.pendingBytes -= msgCost(m.p)
			if len(r.pending) == 0 {
				r.pending = nil
			}
			return r.leave(m)
		}
		if h := r.held; h != nil && h.l == r.link {
			if pin != nil && h.l != pin {
				return r.leave(message{err: errPinLost})
			}
			r.held = nil
			if stream {
				return r.leave(message{typ: h.typ, body: h.r, from: h.l})
			}
			// The message after those read ahead: its frame has begun, so
			// it is read to its end whatever ctx does.
			r.direct = true
			r.mu.Unlock()
			p, err := io.ReadAll(h.r)
			r.mu.Lock()
			r.direct = false
			if err == nil {
				h.l.touch()
				return r.leave(message{typ: h.typ, p: p})
			}
			r.clearLinkLocked(h.l)
			r.mu.Unlock()
			h.l.fail(err)
			r.mu.Lock()
			continue
		}
		if r.lost != nil {
			err := r.lost
			r.lost = nil
			return r.leave(message{err: err})
		}
		if r.tooBig != nil {
			err := r.tooBig
			r.tooBig = nil
			return r.leave(message{err: err})
		}
		if r.final != nil {
			return r.leave(message{err: r.final})
		}
		l := r.link
		if pin != nil && l != pin {
			return r.leave(message{err: errPinLost})
		}
		if l == nil {
			up, more := r.up, r.moreChan()
			r.mu.Unlock()
			select {
			case <-up:
			case <-more:
			case <-ctx.Done():
				r.mu.Lock()
				return r.leave(message{err: fmt.Errorf("tether: read: %w", ctx.Err())})
			}
			r.mu.Lock()
			continue
		}
		if rl := r.ahead; stream && rl != nil && rl.l == l {
			if pin != nil && l != pin {
				return r.leave(message{err: errPinLost})
			}
			r.ahead = nil
			rl.take()
			return r.leave(message{typ: rl.typ, relay: rl, from: l})
		}
		if r.bg || (cancellable && l.watch == nil) {
			if !r.bg {
				r.startBackground(l)
			}
			// After this message, a caller that can read on its own
			// goroutine takes over from the background reader.
			m, ok := r.await(ctx, !cancellable || l.watch != nil, stream)
			if ok {
				return r.leave(m)
			}
			continue // the link failed; wait for the next
		}

		r.direct = true
		r.mu.Unlock()
		var (
			m           message
			err         error
			interrupted bool
		)
		if cancellable {
			// ctx may end while we wait: the watchConn interrupts the read
			// if, and only if, no frame has begun (see interrupt.go).
			w := l.watch
			w.guard(ctx)
			if ctx.Err() != nil {
				// ctx ended before the guard was up: nothing was read.
				w.unguard()
				r.mu.Lock()
				r.direct = false
				return r.leave(message{err: fmt.Errorf("tether: read: %w", ctx.Err())})
			}
			m, err = readLink(l, stream)
			interrupted = w.unguard()
		} else {
			m, err = readLink(l, stream)
		}
		r.mu.Lock()
		r.direct = false
		if err == nil {
			l.touch()
			return r.leave(m)
		}
		if interrupted {
			// The link is intact: nothing of a frame had been read.
			if ctx.Err() != nil {
				return r.leave(message{err: fmt.Errorf("tether: read: %w", ctx.Err())})
			}
			continue
		}
		r.clearLinkLocked(l)
		r.mu.Unlock()
		l.fail(err)
		r.mu.Lock()
	}
}

// readLink reads the next message of l on the caller's goroutine: on a
// plain link, for a stream, only as far as the message's header.
func readLink(l *liveLink, stream bool) (message, error) {
	if ws, ok := l.link.(*websocket.Conn); ok && stream {
		typ, body, err := ws.Reader(context.Background())
		return message{typ: typ, body: body, from: l}, err
	}
	typ, p, err := l.Read(context.Background())
	return message{typ: typ, p: p, owner: l.seq, from: l}, err
}

// await waits, with r.mu held on entry and exit, for the background reader's
// next message. ok is false when the link failed instead.
func (r *reader) await(ctx context.Context, thenDirect, stream bool) (message, bool) {
	r.waiting, r.waitDirect, r.waitStream = true, thenDirect, stream
	if rl := r.ahead; rl != nil && !stream {
		// A message read ahead may wait for a Reader (see awaitTake).
		rl.mu.Lock()
		rl.wakeRoom()
		rl.mu.Unlock()
	}
	r.mu.Unlock()
	var m message
	select {
	case m = <-r.handoff:
		r.mu.Lock()
	case <-ctx.Done():
		r.mu.Lock()
		if r.waiting {
			r.waiting = false
			return message{err: fmt.Errorf("tether: read: %w", ctx.Err())}, true
		}
		// The reader handed a message over as ctx ended: keep it.
		m = <-r.handoff
	}
	if m.err != nil {
		return message{}, false
	}
	if ctx.Err() != nil {
		// It came as ctx ended: keep it for the next Read.
		if m.body != nil {
			r.held = &heldMsg{l: m.from, typ: m.typ, r: m.body}
			r.opened, r.openLink = false, nil
		} else {
			r.pending = append([]message{m}, r.pending...)
			r.pendingBytes += msgCost(m.p)
		}
		return message{err: fmt.Errorf("tether: read: %w", ctx.Err())}, true
	}
	return m, true
}

// leave ends a Read call; r.mu is held on entry and released.
func (r *reader) leave(m message) message {
	r.inRead = false
	if r.streaming && m.err == nil {
		r.openStream(&m)
	}
	r.settle()
	r.mu.Unlock()
	return m
}

// settle counts a finished Read and makes sure the watchdog looks at the
// link later; r.mu is held.
func (r *reader) settle() {
	r.readsDone++
	if !r.armed && r.link != nil && !r.bg {
		r.armed = true
		r.seenByWatch = r.readsDone
		r.watchdog.Reset(r.idle)
	}
}

// watch runs from the watchdog timer: when nobody has read the link for a
// while, the background reader takes over.
func (r *reader) watch() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed = false
	if r.inRead || r.direct {
		// The application is reading: look less often.
		r.idle = min(2*r.idle, readerIdleMax)
		return
	}
	if r.bg || r.link == nil || r.final != nil || r.held != nil || r.openLink != nil {
		// An open stream's end arms the watchdog again (see stream).
		return
	}
	if len(r.pending) > 0 && !r.readsAhead(r.link) {
		return
	}
	if r.readsDone != r.seenByWatch && !r.discard {
		// Reads are still coming: look again later.
		r.idle = min(2*r.idle, readerIdleMax)
		r.armed = true
		r.seenByWatch = r.readsDone
		r.watchdog.Reset(r.idle)
		return
	}
	r.idle = readerIdle
	r.startBackground(r.link)
}

// startBackground starts reading l on a goroutine of its own; r.mu is held.
func (r *reader) startBackground(l *liveLink) {
	r.bg = true
	l.wg.Add(1)
	go r.backgroundRead(l)
}

func (r *reader) backgroundRead(l *liveLink) {
	defer l.wg.Done()
	r.mu.Lock()
	h := r.held
	if h != nil && h.l == l {
		r.held = nil // CloseRead: the held message goes first
	} else {
		h = nil
	}
	r.mu.Unlock()
	for {
		var (
			typ websocket.MessageType
			p   []byte
			err error
		)
		if h != nil {
			typ = h.typ
			p, err = io.ReadAll(h.r)
			h = nil
		} else if ws, ok := l.link.(*websocket.Conn); ok {
			var body io.Reader
			typ, body, err = ws.Reader(context.Background())
			if err == nil {
				if r.handBody(l, typ, body) {
					return
				}
				var taken bool
				p, taken, err = r.readBody(l, typ, body)
				if taken && err == nil {
					// A Reader has it.
					l.touch()
					continue
				}
			}
		} else {
			typ, p, err = l.Read(context.Background())
		}
		r.mu.Lock()
		if err != nil {
			r.stopOnFailedLocked(l, err)
			return
		}
		l.touch()
		m := message{typ: typ, p: p, owner: l.seq, from: l}
		if r.discard {
			r.mu.Unlock()
			r.dropped(m)
			continue
		}
		if r.waiting {
			r.waiting = false
			r.handoff <- m
			if r.waitDirect {
				// The caller reads on its own goroutine from now on.
				r.bg = false
				r.mu.Unlock()
				return
			}
			r.mu.Unlock()
			continue
		}
		// Nobody is reading: keep the message, and read on up to the
		// link's bound (see readsAhead).
		r.pending = append(r.pending, m)
		r.pendingBytes += msgCost(m.p)
		if r.readsAhead(l) {
			r.mu.Unlock()
			continue
		}
		ws, plain := l.link.(*websocket.Conn)
		if !plain {
			// A session peer that sends more than its window is pushed
			// back: the link is left unread until a Read takes a message.
			r.bg = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		if !r.hold(l, ws) {
			return
		}
	}
}

// handBody gives a Reader that waits the body of the message whose header
// the background reader has just read on l, and reports whether it did;
// then the background reader stops, since nobody else may read l until
// that body has been read.
func (r *reader) handBody(l *liveLink, typ websocket.MessageType, body io.Reader) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.waiting || !r.waitStream || r.discard {
		return false
	}
	l.touch()
	r.waiting, r.bg = false, false
	r.opened, r.openLink = true, l
	r.stream().state.Store(streamIdle)
	r.handoff <- message{typ: typ, body: body, from: l}
	return true
}

// hold reads on a plain link whose read-ahead is full as far as TCP order
// allows: the pings, pongs and close frames that come before the next data
// message. That message is left in the socket, its header read, until a Read
// takes it (then the reader stops and hold reports false), unless room for it
// appears meanwhile (then hold reads it and reports true).
func (r *reader) hold(l *liveLink, ws *websocket.Conn) bool {
	typ, rd, err := ws.Reader(context.Background())
	r.mu.Lock()
	if err != nil {
		r.stopOnFailedLocked(l, err)
		return false
	}
	l.touch()
	if !r.waiting && !r.discard && r.link == l && !r.readsAhead(l) {
		r.held = &heldMsg{l: l, typ: typ, r: rd}
		r.bg = false
		r.mu.Unlock()
		return false
	}
	r.mu.Unlock()
	if r.handBody(l, typ, rd) {
		return false
	}
	// A Read is waiting, or took a message, or CloseRead was called: the
	// message is read now and goes the usual way.
	p, taken, err := r.readBody(l, typ, rd)
	if taken && err == nil {
		// A Reader has it.
		l.touch()
		return true
	}
	r.mu.Lock()
	if err != nil {
		r.stopOnFailedLocked(l, err)
		return false
	}
	m := message{typ: typ, p: p, from: l}
	switch {
	case r.discard:
		r.mu.Unlock()
		r.dropped(m)
		return true
	case r.waiting:
		r.waiting = false
		r.handoff <- m
		if r.waitDirect {
			r.bg = false
			r.mu.Unlock()
			return false
		}
	default:
		r.pending = append(r.pending, m)
		r.pendingBytes += msgCost(m.p)
	}
	r.mu.Unlock()
	return true
}

// dropped disposes of a message read after CloseRead: a session message is
// acknowledged as if the application had read it.
func (r *reader) dropped(m message) {
	if m.owner != nil && r.onTake != nil {
		r.onTake(m.owner, len(m.p))
	}
}

// readsAhead reports whether l is read on while messages wait for the
// application; r.mu is held. Every link is, up to its bound in bytes and
// messages. On a session link acks, and a peer's Write that waits for them,
// must not wait for the application: the bound is the peer's window,
// counted as the peer counts it, so an honest peer never finds the link
// unread and its pings are always answered. On a plain link pings, pongs
// and close frames must keep flowing while the application is busy; past
// the bound the reader reads only as far as the next data message (see
// hold). A peer that sends more is pushed back, holding at most one
// message beyond the bound.
func (r *reader) readsAhead(l *liveLink) bool {
	return withinWindow(len(r.pending), r.pendingBytes, l.readAhead)
}

// stalled reports whether the link is unread because the application has not
// taken a message yet. The heartbeat does not judge such a link.
func (r *reader) stalled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held != nil || (r.openLink != nil && r.sr.state.Load() == streamIdle) {
		return true
	}
	if rl := r.takenRelay(); rl != nil && rl.stalled() {
		return true
	}
	if r.ahead != nil && r.ahead.stalled() {
		return true
	}
	return len(r.pending) > 0 && !r.bg && !r.direct && (r.link == nil || !r.readsAhead(r.link))
}

// takenRelay returns the relay of the last message a Reader took that way,
// if any; r.mu is held.
func (r *reader) takenRelay() *relay {
	if r.sr == nil {
		return nil
	}
	return r.sr.relay
}

// setLink makes l the link to read and makes sure someone reads it. It
// reports false, and leaves l alone, when the reader has ended: a session
// can end while its new link is being attached.
func (r *reader) setLink(l *liveLink) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.final != nil {
		return false
	}
	r.link = l
	select {
	case <-r.up:
	default:
		close(r.up)
	}
	if !r.inRead && (len(r.pending) == 0 || r.readsAhead(l)) {
		r.startBackground(l)
	}
	return true
}

// stopOnFailedLocked ends the background reader on l, whose read failed
// with err: Reads stop using l, a waiting Read gets err, and l fails. r.mu
// is held on entry and released.
func (r *reader) stopOnFailedLocked(l *liveLink, err error) {
	r.bg = false
	r.clearLinkLocked(l)
	if r.waiting {
		r.waiting = false
		r.handoff <- message{err: err}
	}
	r.mu.Unlock()
	l.fail(err)
}

// clearLink stops Reads from using l.
func (r *reader) clearLink(l *liveLink) {
	r.mu.Lock()
	r.clearLinkLocked(l)
	r.mu.Unlock()
}

// clearLinkLocked stops Reads from using l; r.mu is held.
func (r *reader) clearLinkLocked(l *liveLink) {
	if r.link == l {
		r.link = nil
		r.up = make(chan struct{})
	}
	if r.held != nil && r.held.l == l {
		// Begun but never read: plain mode loses it with the link.
		r.held = nil
	}
	if r.ahead != nil && r.ahead.l == l {
		r.ahead = nil
	}
	if r.openLink == l {
		// Its Reader fails at its next Read (see stream).
		r.opened, r.openLink = false, nil
		r.sr.state.Store(streamGone)
	}
}

// closeRead makes the reader read every link and drop what it reads, from
// now until the end, and Read fail.
func (r *reader) closeRead() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.discard {
		return
	}
	r.discard = true
	r.discarding.Store(true)
	for _, rl := range []*relay{r.ahead, r.takenRelay()} {
		if rl != nil {
			// Its background reader may wait for a Reader that reads
			// no more, or for one that never comes.
			rl.mu.Lock()
			rl.wakeRoom()
			rl.mu.Unlock()
		}
	}
	if r.waiting {
		r.waiting = false
		r.handoff <- message{err: errReadClosed}
	}
	pending := r.pending
	r.pending, r.pendingBytes = nil, 0
	for _, m := range pending {
		if m.owner != nil && r.onTake != nil {
			// Acknowledged outside r.mu, as a Read would.
			r.mu.Unlock()
			r.onTake(m.owner, len(m.p))
			r.mu.Lock()
		}
	}
	r.takeStream()
	if r.link != nil && !r.bg && !r.inRead && !r.direct && r.openLink == nil {
		r.startBackground(r.link)
	}
}

// end makes every Read, after any message already received, return err.
func (r *reader) end(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.final = err
	r.link = nil
	r.held = nil
	r.ahead = nil
	if r.openLink != nil {
		r.opened, r.openLink = false, nil
		r.sr.state.Store(streamGone)
	}
	r.watchdog.Stop()
	select {
	case <-r.up:
	default:
		close(r.up)
	}
}

// reportTooBig tells the next Read that a message over the read limit was
// dropped with its link. Reports not yet taken are not stacked.
func (r *reader) reportTooBig(l *liveLink, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.toldTooBig == l {
		// A Reader's message was the one over the limit: its Read said so.
		r.toldTooBig = nil
	} else if r.tooBig == nil && !r.discard {
		r.tooBig, r.tooBigLink = err, l
	}
	if r.more != nil {
		close(r.more)
		r.more = nil
	}
}

func (r *reader) moreChan() chan struct{} {
	if r.more == nil {
		r.more = make(chan struct{})
	}
	return r.more
}

// deliver adds a message that arrived some other way (a long-polling
// request) behind those already pending, as a link's reader would have read
// it: only while what is pending is within w (see readsAhead). It reports
// whether it added m; it never waits.
func (r *reader) deliver(m message, w window) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !withinWindow(len(r.pending), r.pendingBytes, w) {
		return false
	}
	r.pending = append(r.pending, m)
	r.pendingBytes += msgCost(m.p)
	if r.more != nil {
		close(r.more)
		r.more = nil
	}
	return true
}

// roomFor reports whether deliver would take messages of the given costs,
// one after another, while what is pending now stays pending.
func (r *reader) roomFor(costs []int, w window) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, bytes := len(r.pending), r.pendingBytes
	for _, c := range costs {
		if !withinWindow(n, bytes, w) {
			return false
		}
		n, bytes = n+1, bytes+c
	}
	return true
}

// toldTooBigOn records that a Reader has reported l's message over the read
// limit, so that Read does not report it again; r.mu is held.
func (r *reader) toldTooBigOn(l *liveLink) {
	r.toldTooBig = l
	if r.tooBigLink == l {
		r.tooBig, r.tooBigLink = nil, nil
	}
}
