package tether

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether/internal/frame"
)

// A small message that comes in the same poll answer as a large one is
// copied out of the answer: it waits to be read as long as the application
// likes, and must not keep the whole answer alive meanwhile. Measured on
// the heap after a collection: 16 small messages kept from 16 answers of
// 1 MiB each hold next to nothing, where aliasing the answers holds 16 MiB.
// Not parallel: it reads the heap's size.
func TestPolledMessagesDoNotKeepTheAnswer(t *testing.T) {
	big := make([]byte, 1<<20)
	body := frame.AppendBatch(nil, []frame.Frame{
		{Kind: frame.Data, Seq: 1, Payload: []byte("small")},
		{Kind: frame.Data, Seq: 2, Payload: big},
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	hc := srv.Client()
	defer hc.CloseIdleConnections()

	const rounds = 16
	kept := make([][]byte, 0, rounds)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range rounds {
		req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
		require.NoError(t, err)
		fs, err := doPoll(hc, req, 2, 2<<20)
		require.NoError(t, err)
		require.Len(t, fs, 2)
		require.Equal(t, "small", string(fs[0].Payload))
		require.Len(t, fs[1].Payload, len(big))
		kept = append(kept, fs[0].Payload)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	retained := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d small messages kept: %d bytes of heap", rounds, retained)
	require.Less(t, retained, int64(rounds<<20)/4,
		"%d small messages kept %d bytes of heap", rounds, retained)
	runtime.KeepAlive(kept)
}
