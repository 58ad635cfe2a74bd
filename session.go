package tether

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/coder/websocket"

	"github.com/tetherws/tether/internal/frame"
)

// Subprotocol is the WebSocket subprotocol of session mode. A client offers
// it beside the application's own; a server that does not know it ignores it
// and the client stays in plain mode.
const Subprotocol = "tether.v1"

// Session headers, sent on a WebSocket handshake or a polling open to resume.
const (
	headerSession = "Tether-Session"
	headerSecret  = "Tether-Secret"
	headerAck     = "Tether-Ack"
)

// A session's window bounds what each side may send unacknowledged (see
// window). The Handler sets it (WithReplayBuffer, in bytes; its message
// bound is defaultWindowMsgs) and tells the client in its Hello; the
// client keeps to it, within maxReplayBytes and maxWindowMsgs, so that a
// server cannot make it hold more than that.
const (
	maxReplayBytes    = 64 << 20
	defaultWindowMsgs = 4096
	maxWindowMsgs     = 1 << 16
)

// helloWindow returns the window a client keeps to in a session, for its
// own replay buffer and for what it reads ahead, from the server's Hello:
// the window the Hello advertises, within the client's bounds. A Hello
// without one (an older server) leaves the default window for replay, and
// reads ahead as far as the bounds allow, since such a server may send that
// much.
func helloWindow(hello *frame.Frame) (replay, ahead window) {
	if hello.WindowBytes == 0 {
		return window{DefaultReplayBytes, defaultWindowMsgs}, window{maxReplayBytes, maxWindowMsgs}
	}
	w := window{
		bytes: int(min(hello.WindowBytes, maxReplayBytes)),
		msgs:  int(min(hello.WindowMessages, maxWindowMsgs)),
	}
	return w, w
}

// ackEvery and ackEveryBytes are how many messages, or bytes, read and not
// yet acknowledged make a side send an ack-only frame at once rather than
// wait for the delayed ack.
const (
	ackEvery      = 32
	ackEveryBytes = 64 << 10
)

var errGap = errors.New("tether: session: message missing in sequence")

type sent struct {
	seq    uint64
	binary bool
	p      []byte
	buf    *[]byte // p's pooled buffer, if it has one
	cost   int     // what p is charged against the window (see msgCost)
}

// seqState is one side's view of a session: it numbers outgoing messages,
// keeps those the peer has not acknowledged for replay, and drops inbound
// duplicates. Both the client and the Handler use it.
//
// The replay copies live in pooled buffers, given back when the peer
// acknowledges them, so a live session allocates nothing per message to
// keep it. Those copies are read only under mu: a transport that sends
// later copies them first.
type seqState struct {
	// wmu orders transmissions: it is held from numbering a frame to
	// handing it to the transport, and taken before mu. Reading never
	// waits for it, so that a Write stuck on a full socket cannot stop the
	// reading that would unblock it.
	wmu sync.Mutex

	mu        sync.Mutex
	nextSeq   uint64 // last sequence number given to an outgoing message
	recv      uint64 // last sequence number received in order
	taken     uint64 // last sequence number the application has read: the ack
	ackSent   uint64 // last ack told to the peer
	readBytes int    // bytes read since then
	peerAck   uint64 // highest own sequence number the peer acknowledged
	replay    []sent // replay[head:] are the unacknowledged messages, in order
	head      int
	replayLen int // the cost of replay[head:] (see msgCost)
	max       int // bound on replayLen: the window, in bytes
	maxMsgs   int // bound on len(replay[head:]): the window, in messages
	room      chan struct{}
}

func newSeqState(w window) *seqState { return &seqState{max: w.bytes, maxMsgs: w.msgs} }

// setWindow changes the bound of the replay buffer; mu is held. A replay
// buffer that holds more than a smaller window lets Writes wait until
// acknowledgements bring it within.
func (s *seqState) setWindow(w window) { s.max, s.maxMsgs = w.bytes, w.msgs }

// window is what one side of a session may have sent and not had
// acknowledged, in bytes (as msgCost counts them) and in messages. It is
// also what the other side reads ahead of its application: an honest peer
// never has more than a window unacknowledged, so a reader that reads on
// while it holds no more than that never stops for one, and control frames
// keep flowing (see withinWindow).
type window struct {
	bytes int
	msgs  int
}

// withinWindow reports whether n messages costing bytes in all are what a
// peer that keeps to w may have sent unacknowledged: no more than w.msgs
// messages and w.bytes bytes, or a single message of any size (a message
// larger than the window is sent on its own, once nothing else is in
// flight).
func withinWindow(n, bytes int, w window) bool {
	return n <= w.msgs && (bytes <= w.bytes || n <= 1)
}

// msgOverhead is what every message is charged beyond its buffer: the
// bookkeeping that holds it (a slot of about 56 bytes in a slice that may be
// twice as long as it needs), so that empty messages are not free.
const msgOverhead = 128

// bufClasses are the sizes of the pooled buffers that hold messages. Each
// is at most 1.5 times the one before, so a buffer is never more than 1.5
// times its message, and each is a size class of Go's allocator (or a
// multiple of its 8 KiB pages), so that a copy that append makes of a
// message is never larger than the class of its length.
var bufClasses = [...]int{
	64, 96, 128, 192, 256, 384, 512, 768,
	1 << 10, 3 << 9, 2 << 10, 3 << 10, 4 << 10, 6 << 10, 8 << 10, 12 << 10,
	16 << 10, 24 << 10, 32 << 10, 48 << 10, 64 << 10,
}

var bufPools [len(bufClasses)]sync.Pool

// bufPage is the granule of Go's allocator for large objects.
const bufPage = 8 << 10

// bufSize returns the size of the buffer that holds a message of n bytes:
// the smallest class that fits it, or beyond the largest class n rounded up
// to whole pages, as Go's allocator rounds it.
func bufSize(n int) int {
	if n <= 0 {
		return 0
	}
	for _, size := range bufClasses {
		if n <= size {
			return size
		}
	}
	return (n + bufPage - 1) / bufPage * bufPage
}

// msgCost is what a message with payload p is charged against a window or
// a read-ahead: msgOverhead plus the buffer that holds it, the larger of
// its capacity and the class of its length. Both sides of a session charge
// a message alike (the sender's pooled copy has exactly its class's
// capacity, the receiver's copy no more; see payloadCopy), so what one side
// may send unacknowledged and what the other reads ahead are measured in
// the same units.
func msgCost(p []byte) int { return msgOverhead + max(cap(p), bufSize(len(p))) }

// getBuf returns a pooled buffer of at least n bytes, or nil when n is
// beyond the largest class.
func getBuf(n int) *[]byte {
	for i, size := range bufClasses {
		if n <= size {
			bp, _ := bufPools[i].Get().(*[]byte)
			if bp == nil {
				b := make([]byte, size)
				bp = &b
			}
			return bp
		}
	}
	return nil
}

// putBuf gives a buffer from getBuf back to its pool.
func putBuf(bp *[]byte) {
	for i, size := range bufClasses {
		if cap(*bp) == size {
			*bp = (*bp)[:size]
			bufPools[i].Put(bp)
			return
		}
	}
}

// keep returns a copy of p and the pooled buffer that holds it, if any.
func keep(p []byte) ([]byte, *[]byte) {
	if len(p) == 0 {
		return nil, nil
	}
	if bp := getBuf(len(p)); bp != nil {
		return (*bp)[:copy(*bp, p)], bp
	}
	return append([]byte(nil), p...), nil
}

// release gives m's buffer back to its pool.
func (m *sent) release() {
	if m.buf != nil {
		putBuf(m.buf)
	}
	*m = sent{}
}

// pending returns the messages the peer has not acknowledged, oldest first.
func (s *seqState) pending() []sent { return s.replay[s.head:] }

// add numbers an outgoing message and keeps a copy for replay. It reports
// false, without adding, when the replay buffer has no room for it.
func (s *seqState) add(typ websocket.MessageType, p []byte) (frame.Frame, bool) {
	if n := len(s.replay) - s.head; n > 0 &&
		(n >= s.maxMsgs || s.replayLen+msgOverhead+bufSize(len(p)) > s.max) {
		return frame.Frame{}, false
	}
	s.nextSeq++
	m := sent{seq: s.nextSeq, binary: typ == websocket.MessageBinary}
	m.p, m.buf = keep(p)
	m.cost = msgCost(m.p)
	if len(s.replay) == cap(s.replay) && s.head > 0 && s.head >= len(s.replay)/2 {
		// Move what is in flight to the front rather than grow.
		n := copy(s.replay, s.replay[s.head:])
		clear(s.replay[n:])
		s.replay, s.head = s.replay[:n], 0
	}
	s.replay = append(s.replay, m)
	s.replayLen += m.cost
	s.told()
	return frame.Frame{Kind: frame.Data, Seq: m.seq, Ack: s.taken, Binary: m.binary, Payload: m.p}, true
}

// roomChan returns a channel closed when acknowledgements free room.
func (s *seqState) roomChan() chan struct{} {
	if s.room == nil {
		s.room = make(chan struct{})
	}
	return s.room
}

// acked drops what the peer has acknowledged.
func (s *seqState) acked(ack uint64) {
	if ack <= s.peerAck {
		return
	}
	s.peerAck = ack
	n := 0
	for _, m := range s.pending() {
		if m.seq > ack {
			break
		}
		n++
	}
	if n == 0 {
		return
	}
	for i := s.head; i < s.head+n; i++ {
		s.replayLen -= s.replay[i].cost
		s.replay[i].release()
	}
	s.head += n
	if s.head == len(s.replay) {
		s.replay, s.head = s.replay[:0], 0
	}
	// A writer waiting for room is woken once half the window is free, not
	// at every ack of a saturated stream; it waits again if its message
	// still does not fit.
	if s.room != nil && s.replayLen <= s.max/2 && len(s.replay)-s.head <= s.maxMsgs/2 {
		close(s.room)
		s.room = nil
	}
}

// receive handles an inbound frame's numbering: deliver reports whether a
// Data frame is new and next in order; a gap is an error.
func (s *seqState) receive(f *frame.Frame) (deliver bool, err error) {
	if f.Ack > s.nextSeq {
		return false, fmt.Errorf("tether: session: peer acknowledged %d of %d messages sent", f.Ack, s.nextSeq)
	}
	s.acked(f.Ack)
	if f.Kind != frame.Data {
		return false, nil
	}
	switch {
	case f.Seq <= s.recv:
		return false, nil // a replayed duplicate
	case f.Seq != s.recv+1:
		return false, fmt.Errorf("%w: got %d after %d", errGap, f.Seq, s.recv)
	}
	s.recv = f.Seq
	return true, nil
}

// take records that the application has read the next message received,
// of n bytes, and reports whether an ack is due and whether it should go
// at once (see ackEvery). A message is acknowledged once read, not once
// received: what a side has received but not read is bounded by the peer's
// replay buffer, so a reader may read ahead of a slow application without
// bound on memory.
func (s *seqState) take(n int) (due, now bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.taken < s.recv {
		s.taken++
		s.readBytes += n
	}
	return s.ackDue(), s.needAck()
}

// lockWrites takes wmu. Unless wait is set, it gives up and reports false
// when a Write holds it: a Read must not wait for a Write.
func (s *seqState) lockWrites(wait bool) bool {
	if wait {
		s.wmu.Lock()
		return true
	}
	return s.wmu.TryLock()
}

// told records that the peer has been told of everything read.
func (s *seqState) told() { s.ackSent, s.readBytes = s.taken, 0 }

// ackDue reports whether the application has read messages the peer has
// not been told of.
func (s *seqState) ackDue() bool { return s.taken != s.ackSent }

// needAck reports whether enough has been read unacknowledged to send an
// ack-only frame now.
func (s *seqState) needAck() bool {
	return s.taken-s.ackSent >= ackEvery || s.readBytes >= ackEveryBytes
}

// ackFrame returns an ack-only frame and records it as sent.
func (s *seqState) ackFrame() frame.Frame {
	s.told()
	return frame.Frame{Kind: frame.Ack, Ack: s.taken}
}

// unacked returns the frames to replay on a new link after the peer said it
// has everything up to peerAck.
func (s *seqState) unacked(peerAck uint64) []frame.Frame {
	s.acked(peerAck)
	fs := make([]frame.Frame, 0, len(s.pending()))
	for _, m := range s.pending() {
		fs = append(fs, frame.Frame{Kind: frame.Data, Seq: m.seq, Ack: s.taken, Binary: m.binary, Payload: m.p})
	}
	if len(fs) > 0 {
		s.told() // the frames carry the ack
	}
	return fs
}

func msgType(binary bool) websocket.MessageType {
	if binary {
		return websocket.MessageBinary
	}
	return websocket.MessageText
}

// waitRoom waits until room is closed (acknowledgements freed room in the
// replay buffer) or ctx or done ends.
func waitRoom(ctx context.Context, room, done <-chan struct{}) error {
	select {
	case <-room:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-done:
		return errSessionDone
	}
}

var errSessionDone = errors.New("tether: session ended")

// unsent returns, up to max frames and about maxBytes, the frames a polling
// client has not acknowledged: an ack first, then the replay buffer.
func (s *seqState) unsent(max, maxBytes int) []frame.Frame {
	var fs []frame.Frame
	if s.ackDue() {
		fs = append(fs, s.ackFrame())
	}
	n := 0
	for _, m := range s.pending() {
		if len(fs) >= max || (n > 0 && n+len(m.p) > maxBytes) {
			break
		}
		fs = append(fs, frame.Frame{Kind: frame.Data, Seq: m.seq, Ack: s.taken, Binary: m.binary, Payload: m.p})
		n += len(m.p)
	}
	return fs
}
