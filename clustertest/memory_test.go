package clustertest_test

import (
	"testing"
	"time"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
)

func TestMemoryContract(t *testing.T) {
	t.Parallel()
	const lease = 600 * time.Millisecond
	store := clustertest.NewStore(lease)
	clustertest.Run(t, clustertest.Harness{
		New: func(t *testing.T, url string) tether.Cluster {
			return store.Join(url)
		},
		Lease: lease,
		Wipe:  func(*testing.T) { store.Wipe() },
		Outage: func(*testing.T) func() {
			store.SetDown(true)
			return func() { store.SetDown(false) }
		},
		CallTimeout: time.Millisecond,
	})
}
