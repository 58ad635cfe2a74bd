package tether

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether/internal/frame"
)

// A resume acknowledges what the client has read, and that frees the replay
// buffer as soon as the Handler takes the resume, before the old link is
// taken out and the new one greeted. In between the session is away: a
// Write that found the buffer still full of messages the client has read
// would end the session as lost, with its client at the door.
func TestResumeAckFreesReplayBeforeAttach(t *testing.T) {
	t.Parallel()
	h := NewHandler(func(ctx context.Context, s *Session) { <-ctx.Done() }, WithReplayBuffer(2<<10))
	defer h.Close()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/?tether=open", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	fs, err := frame.DecodeBatch(rec.Body.Bytes(), 1, 1<<10)
	require.NoError(t, err)
	h.mu.Lock()
	s := h.sessions[fs[0].Session]
	h.mu.Unlock()
	require.NotNil(t, s)
	// The client goes away: no link.
	s.detach()
	require.False(t, s.hasLink())

	// serve fills the replay buffer while the client is away.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	full := func() bool {
		s.seq.mu.Lock()
		defer s.seq.mu.Unlock()
		n := len(s.seq.pending())
		return n > 0 && (n >= s.seq.maxMsgs || s.seq.replayLen+msgOverhead+bufSize(3) > s.seq.max)
	}
	for i := 0; !full(); i++ {
		require.Less(t, i, 1000, "the window never filled")
		require.NoError(t, s.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf("m%02d", i%100))))
	}
	s.seq.mu.Lock()
	sent := s.seq.nextSeq
	s.seq.mu.Unlock()

	// The client resumes, having read everything: the Handler takes the
	// resume; the new link is not attached yet.
	r := httptest.NewRequest(http.MethodPost, "/?tether=open", nil)
	got, status, err := h.openSession(r, resumeReq{ok: true, id: s.id, secret: s.secret, ack: sent}, Polling, false)
	require.NoError(t, err)
	require.Same(t, s, got)
	require.Equal(t, frame.StatusResumed, status)
	require.False(t, s.hasLink(), "still away: the link is not attached yet")
	s.seq.mu.Lock()
	left := len(s.seq.pending())
	s.seq.mu.Unlock()
	require.Zero(t, left, "what the resume acknowledges is still kept for replay")

	// serve writes on meanwhile: the buffer has room, the session lives.
	require.NoError(t, s.Write(ctx, websocket.MessageText, []byte("after")))
	require.False(t, s.isEnded(), "the session ended with its client resuming")
}
