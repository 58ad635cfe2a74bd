package tether

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A flood of made-up session ids fills the route cache with answers that
// the sessions are gone; when it is full, those go first, and the owners'
// URLs the instance learned stay.
func TestRouteCacheKeepsOwnersUnderFlood(t *testing.T) {
	t.Parallel()
	c := newRouteCache()
	now := time.Now()
	id := func(n int) (k [16]byte) {
		binary.BigEndian.PutUint64(k[:], uint64(n))
		return k
	}
	const owners = 1000
	for i := range owners {
		c.put(id(i), route{url: "http://10.0.0.1/ws"}, now, time.Minute)
	}
	for i := owners; i < owners+3*maxRoutes; i++ {
		c.put(id(i), route{gone: true}, now, time.Minute)
	}
	require.LessOrEqual(t, len(c.m), maxRoutes)
	for i := range owners {
		rt, fresh := c.get(id(i), now)
		require.True(t, fresh, "owner %d", i)
		require.Equal(t, "http://10.0.0.1/ws", rt.url, "owner %d", i)
	}
}
