package tetherredis_test

import (
	"testing"
	"time"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
	"github.com/tetherws/tether/tetherredis"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// testLease is short, so that the expiry tests finish quickly, and long
// enough that a renewal every third of it is never late on a loaded
// two-core machine.
const (
	testLease       = 600 * time.Millisecond
	testCallTimeout = 200 * time.Millisecond
)

// TestContract runs the tether.Cluster contract suite against a real
// redis-server: wiped by restarting it empty, cut off by freezing it.
func TestContract(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	clustertest.Run(t, clustertest.Harness{
		New: func(t *testing.T, url string) tether.Cluster {
			return tetherredis.New(rdb, url,
				tetherredis.WithLease(testLease), tetherredis.WithCallTimeout(testCallTimeout))
		},
		Lease:       testLease,
		Wipe:        func(*testing.T) { srv.Restart() },
		Outage:      func(*testing.T) func() { srv.Freeze(); return srv.Thaw },
		CallTimeout: testCallTimeout,
	})
}
