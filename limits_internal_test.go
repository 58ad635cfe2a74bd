package tether

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// A server's Tether-Limits is taken within bounds: a body limit beyond
// what a window holds is cut to it, so the client's bound on a poll's
// answer neither overflows nor lets a hostile server make it buffer more.
func TestParseLimitsClamped(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set(headerLimits, "message=100, body=9223372036854775807, batch=99999999")
	l := parseLimits(h)
	require.Equal(t, int64(100), l.message)
	require.Equal(t, int64(maxReplayBytes), l.body)
	require.Equal(t, maxWindowMsgs, l.batch)
	got := respBodyLimit(l, -1)
	require.Positive(t, got)
	require.Less(t, got, maxReplayBytes+64<<10)
}
