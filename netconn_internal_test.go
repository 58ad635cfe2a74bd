package tether

import (
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// A session link never numbers a message its server would refuse, whatever
// path brought it there: it fails the Write as refused, and nothing is kept
// for replay.
func TestSessionLinkRefusesBeforeNumbering(t *testing.T) {
	t.Parallel()
	s := &clientSession{seq: newSeqState(window{1 << 20, 64})}
	l := &sessionLink{s: s, limits: peerLimits{message: 10}}
	for _, tc := range []struct {
		typ  websocket.MessageType
		p    []byte
		want error
	}{
		{websocket.MessageBinary, make([]byte, 11), ErrMessageTooLarge},
		{websocket.MessageText, []byte{0xff}, ErrInvalidUTF8},
	} {
		err := l.Write(context.Background(), tc.typ, tc.p)
		require.ErrorIs(t, err, tc.want)
		require.True(t, refused(err), "the link is not to blame")
	}
	s.seq.mu.Lock()
	defer s.seq.mu.Unlock()
	require.Zero(t, s.seq.nextSeq, "nothing numbered")
	require.Empty(t, s.seq.pending(), "nothing kept for replay")
}

// streamChunk cuts a byte stream into messages within the peer's limit, and
// text only at the start of a rune.
func TestStreamChunk(t *testing.T) {
	t.Parallel()
	bin := websocket.MessageBinary
	txt := websocket.MessageText
	require.Len(t, streamChunk(bin, make([]byte, 100), -1), 100)
	require.Len(t, streamChunk(bin, make([]byte, 100), 100), 100)
	require.Len(t, streamChunk(bin, make([]byte, 100), 30), 30)
	require.Equal(t, "ab", string(streamChunk(txt, []byte("abé"), 3)), "not in the middle of é")
	require.Equal(t, "abé", string(streamChunk(txt, []byte("abéc"), 4)))
	require.Equal(t, "€", string(streamChunk(txt, []byte("€€"), 2)), "a rune over the limit goes whole, to be refused")
}

// firedTimer is a deadline's timer that has fired: Stop is too late, and
// its callback runs when the test says.
type firedTimer struct{}

func (firedTimer) Stop() bool { return false }

// A deadline moved while the old one's callback waits for the lock (its
// timer has fired, so Stop fails) holds: the late callback neither expires
// the new deadline nor ends the ctx of the calls made under it.
func TestDeadlineMovedWhileItFires(t *testing.T) {
	t.Parallel()
	for _, next := range []time.Time{{}, time.Now().Add(2 * time.Hour)} {
		var fire []func()
		d := &deadline{afterFunc: func(_ time.Duration, f func()) stopper {
			fire = append(fire, f)
			return firedTimer{}
		}}
		d.init(context.Background())
		d.set(time.Now().Add(time.Hour))
		old, err := d.check("read")
		require.NoError(t, err)
		d.set(next) // cleared or extended as the old deadline fires
		fire[0]()   // the old callback gets the lock now
		ctx, err := d.check("read")
		require.NoError(t, err, "the new deadline (%v) has not passed", next)
		require.NoError(t, ctx.Err(), "calls under the new deadline go on")
		require.ErrorIs(t, context.Cause(old), errDeadline, "calls under the old one were cut by it")
		d.stop()
	}
}
