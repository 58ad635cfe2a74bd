package tether_test

import (
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

func TestEcho(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL())
	ctx := ctxT(t, 5*time.Second)
	for i := range 100 {
		msg := []byte{byte(i)}
		require.NoError(t, c.Write(ctx, websocket.MessageBinary, msg))
		typ, p, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, websocket.MessageBinary, typ)
		require.Equal(t, msg, p)
	}
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
}
