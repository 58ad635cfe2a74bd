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

// ackEvery is how many unacknowledged inbound messages make a side send an
// ack-only frame at once rather than wait for the delayed ack.
const ackEvery = 32

var errGap = errors.New("tether: session: message missing in sequence")

type sent struct {
	seq    uint64
	binary bool
	p      []byte
}

// seqState is one side's view of a session: it numbers outgoing messages,
// keeps those the peer has not acknowledged for replay, and drops inbound
// duplicates. Both the client and the Handler use it.
type seqState struct {
	mu        sync.Mutex
	nextSeq   uint64 // last sequence number given to an outgoing message
	recv      uint64 // last sequence number received in order
	ackSent   uint64 // last ack told to the peer
	peerAck   uint64 // highest own sequence number the peer acknowledged
	replay    []sent // unacknowledged outgoing messages, in order
	replayLen int    // bytes in replay
	max       int    // bound on replayLen
	room      chan struct{}
}

func newSeqState(max int) *seqState { return &seqState{max: max} }

// add numbers an outgoing message and keeps a copy for replay. It reports
// false, without adding, when the replay buffer has no room for it.
func (s *seqState) add(typ websocket.MessageType, p []byte) (frame.Frame, bool) {
	if s.replayLen > 0 && s.replayLen+len(p) > s.max {
		return frame.Frame{}, false
	}
	s.nextSeq++
	m := sent{seq: s.nextSeq, binary: typ == websocket.MessageBinary, p: append([]byte(nil), p...)}
	s.replay = append(s.replay, m)
	s.replayLen += len(p)
	s.ackSent = s.recv
	return frame.Frame{Kind: frame.Data, Seq: m.seq, Ack: s.recv, Binary: m.binary, Payload: m.p}, true
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
	i := 0
	for i < len(s.replay) && s.replay[i].seq <= ack {
		s.replayLen -= len(s.replay[i].p)
		i++
	}
	if i > 0 {
		// Drop the acknowledged head without moving what is still in flight.
		clear(s.replay[:i])
		s.replay = s.replay[i:]
		if len(s.replay) == 0 {
			s.replay = nil
		}
		if s.room != nil {
			close(s.room)
			s.room = nil
		}
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

// needAck reports whether enough has arrived unacknowledged to send an
// ack-only frame now.
func (s *seqState) needAck(threshold uint64) bool {
	return s.recv-s.ackSent >= threshold && s.recv > s.ackSent
}

// ackFrame returns an ack-only frame and records it as sent.
func (s *seqState) ackFrame() frame.Frame {
	s.ackSent = s.recv
	return frame.Frame{Kind: frame.Ack, Ack: s.recv}
}

// unacked returns the frames to replay on a new link after the peer said it
// has everything up to peerAck.
func (s *seqState) unacked(peerAck uint64) []frame.Frame {
	s.acked(peerAck)
	fs := make([]frame.Frame, 0, len(s.replay))
	for _, m := range s.replay {
		fs = append(fs, frame.Frame{Kind: frame.Data, Seq: m.seq, Ack: s.recv, Binary: m.binary, Payload: m.p})
	}
	s.ackSent = s.recv
	return fs
}

func msgType(binary bool) websocket.MessageType {
	if binary {
		return websocket.MessageBinary
	}
	return websocket.MessageText
}

// waitRoom waits, with s.mu held on entry and exit, until acknowledgements
// free room in the replay buffer or ctx or done ends.
func (s *seqState) waitRoom(ctx context.Context, done <-chan struct{}) error {
	room := s.roomChan()
	s.mu.Unlock()
	defer s.mu.Lock()
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
	if s.recv != s.ackSent {
		fs = append(fs, s.ackFrame())
	}
	n := 0
	for _, m := range s.replay {
		if len(fs) >= max || (n > 0 && n+len(m.p) > maxBytes) {
			break
		}
		fs = append(fs, frame.Frame{Kind: frame.Data, Seq: m.seq, Ack: s.recv, Binary: m.binary, Payload: m.p})
		n += len(m.p)
	}
	return fs
}
