package tether

import (
	"time"

	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// Every message costs msgOverhead plus its buffer, so a window holds a
// bounded number of empty messages, and never more than its message bound.
func TestWindowChargesEmptyMessages(t *testing.T) {
	t.Parallel()
	for _, w := range []window{{4 << 20, defaultWindowMsgs}, {64 << 10, defaultWindowMsgs}} {
		s := newSeqState(w)
		n := 0
		for ; n < 1<<20; n++ {
			if _, ok := s.add(websocket.MessageBinary, nil); !ok {
				break
			}
		}
		require.Equal(t, min(w.msgs, w.bytes/msgOverhead), n, "empty messages in a window of %+v", w)
		require.LessOrEqual(t, s.replayLen, w.bytes)
	}
}

// The replay buffer counts the pooled buffer, not the payload: 1025-byte
// messages sit in 1536-byte buffers, and a window holds no more of them than
// their buffers fit.
func TestWindowChargesBufferClass(t *testing.T) {
	t.Parallel()
	w := window{1 << 20, defaultWindowMsgs}
	s := newSeqState(w)
	p := make([]byte, 1025)
	n, held := 0, 0
	for ; n < 1<<20; n++ {
		f, ok := s.add(websocket.MessageBinary, p)
		if !ok {
			break
		}
		held += cap(f.Payload) + msgOverhead
	}
	require.Equal(t, w.bytes/(1536+msgOverhead), n)
	require.LessOrEqual(t, held, w.bytes, "the buffers held fit the window")
	s.acked(s.nextSeq)
	require.Zero(t, s.replayLen)
}

// A message larger than the window goes out on its own, once nothing else is
// in flight.
func TestWindowLargeMessageAlone(t *testing.T) {
	t.Parallel()
	s := newSeqState(window{64 << 10, defaultWindowMsgs})
	_, ok := s.add(websocket.MessageBinary, make([]byte, 100<<10))
	require.True(t, ok, "alone")
	_, ok = s.add(websocket.MessageBinary, nil)
	require.False(t, ok, "behind a message larger than the window")
	s.acked(1)
	_, ok = s.add(websocket.MessageBinary, nil)
	require.True(t, ok)
}

// bufSize is a class that fits the message with at most half again as much,
// the size keep's pooled buffer has, and no smaller than the copy append
// makes: a message costs its sender and its receiver the same.
func TestWindowBufSize(t *testing.T) {
	t.Parallel()
	require.Zero(t, bufSize(0))
	for n := 1; n < 300<<10; n += 1 + n/97 {
		b := bufSize(n)
		require.GreaterOrEqual(t, b, n)
		if n > 64 {
			require.LessOrEqual(t, b*2, n*3+bufPage*2, "n=%d", n)
		}
		p := make([]byte, n)
		kept, _ := keep(p)
		require.Equal(t, b, max(cap(kept), bufSize(n)), "n=%d", n)
		require.Equal(t, msgCost(kept), msgCost(payloadCopy(p, false)), "n=%d: sender and receiver charge alike", n)
	}
}

// What a reader holds unread is bounded by the window in messages too: a
// peer that sends empty messages past its window is refused one message
// after the window, and an honest peer's last message always fits.
func TestWindowReadAheadBound(t *testing.T) {
	t.Parallel()
	w := window{64 << 10, 100}
	r := newReader()
	n := 0
	for ; n < 1<<20; n++ {
		if !r.deliver(message{}, w) {
			break
		}
	}
	require.Equal(t, w.msgs+1, n)
	require.True(t, r.roomFor(nil, w))
	require.False(t, r.roomFor([]int{msgOverhead}, w))

	r = newReader()
	big := make([]byte, 32<<10)
	require.True(t, r.roomFor([]int{msgCost(big), msgCost(big)}, w), "a window's worth")
	require.False(t, r.roomFor([]int{msgCost(big), msgCost(big), msgCost(big)}, w), "more than a window")
	require.True(t, r.roomFor([]int{msgCost(make([]byte, 1<<20))}, w), "a single message of any size")
}

// The Handler's heartbeat is on by default.
func TestHandlerHeartbeatOnByDefault(t *testing.T) {
	t.Parallel()
	o := defaultHandlerOptions()
	require.Equal(t, 30*time.Second, o.hbInterval)
	require.Equal(t, 30*time.Second, o.hbTimeout)
	WithHandlerHeartbeat(-1, -1)(&o)
	require.Equal(t, 30*time.Second, o.hbInterval, "negative keeps the default")
	WithHandlerHeartbeat(0, 0)(&o)
	require.Zero(t, o.hbInterval)
}
