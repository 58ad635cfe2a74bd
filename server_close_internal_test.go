package tether

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether/internal/frame"
)

// A polling send that meets the end of its session is told how the session
// ended, even in the instant when end has taken the poll link away and not
// yet told it why (end is held there by the Handler's lock, which forget
// needs).
func TestSendDuringEndGetsTheClose(t *testing.T) {
	t.Parallel()
	h := NewHandler(func(ctx context.Context, s *Session) { <-ctx.Done() })
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
	s.linkMu.Lock()
	p := s.poll
	s.linkMu.Unlock()

	h.mu.Lock()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		s.end(websocket.StatusGoingAway, "server shutting down", errSessionDone)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !s.isEnded() {
		require.True(t, time.Now().Before(deadline), "end did not begin")
		time.Sleep(time.Millisecond)
	}
	// end now waits for h.mu, its link taken away, its poll link not told.
	body := frame.AppendBatch(nil, []frame.Frame{{Kind: frame.Data, Seq: 1, Payload: []byte("late")}})
	rec = httptest.NewRecorder()
	h.pollSend(rec, httptest.NewRequest(http.MethodPost, "/?tether=send", bytes.NewReader(body)), s, p)
	h.mu.Unlock()
	<-ended
	require.Equal(t, http.StatusOK, rec.Code, "%s", rec.Body)
	fs, err = frame.DecodeBatch(rec.Body.Bytes(), 1, 1<<10)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	require.Equal(t, frame.Close, fs[0].Kind)
	require.EqualValues(t, websocket.StatusGoingAway, fs[0].Code)
}

// A poll waiting when its session ends is answered with the session's
// close, not with an empty batch: end wakes it both ways at once (its
// release and its wake-up), and whichever it sees first, it says how the
// session ended. Twenty sessions, so that each way is taken.
func TestPollDuringEndGetsTheClose(t *testing.T) {
	t.Parallel()
	h := NewHandler(func(ctx context.Context, s *Session) { <-ctx.Done() })
	defer h.Close()
	for i := range 20 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/?tether=open", nil))
		require.Equal(t, http.StatusOK, rec.Code)
		fs, err := frame.DecodeBatch(rec.Body.Bytes(), 1, 1<<10)
		require.NoError(t, err)
		h.mu.Lock()
		s := h.sessions[fs[0].Session]
		h.mu.Unlock()
		require.NotNil(t, s)
		s.linkMu.Lock()
		p := s.poll
		s.linkMu.Unlock()

		answered := make(chan *httptest.ResponseRecorder)
		go func() {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/?tether=poll", nil)
			h.pollWait(rec, req, s, p, 0)
			answered <- rec
		}()
		deadline := time.Now().Add(5 * time.Second)
		for {
			p.mu.Lock()
			waiting := p.release != nil
			p.mu.Unlock()
			if waiting {
				break
			}
			require.True(t, time.Now().Before(deadline), "the poll did not wait")
			time.Sleep(time.Millisecond)
		}
		s.end(websocket.StatusGoingAway, "server shutting down", errSessionDone)
		rec = <-answered
		require.Equal(t, http.StatusOK, rec.Code, "%s", rec.Body)
		fs, err = frame.DecodeBatch(rec.Body.Bytes(), 2, 1<<10)
		require.NoError(t, err)
		require.NotEmpty(t, fs, "session %d: the poll was answered empty", i)
		last := fs[len(fs)-1]
		require.Equal(t, frame.Close, last.Kind, "session %d", i)
		require.EqualValues(t, websocket.StatusGoingAway, last.Code, "session %d", i)
	}
}
