package tetherredis_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
	"github.com/tetherws/tether/internal/faultnet"
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

// TestContractPartition runs the contract suite again with Redis behind a
// TCP proxy that cuts it off by dropping every byte both ways, as a network
// partition does. Unlike a frozen Redis, which runs the commands queued
// meanwhile once it is thawed, a partition loses them: the owners' records
// run out during a long one, and after it the directory must answer
// "recovering" until the owners have renewed, never "dead".
func TestContractPartition(t *testing.T) {
	srv := redistest.Start(t)
	p, err := faultnet.Listen(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: p.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	clustertest.Run(t, clustertest.Harness{
		New: func(t *testing.T, url string) tether.Cluster {
			return tetherredis.New(rdb, url,
				tetherredis.WithLease(testLease), tetherredis.WithCallTimeout(testCallTimeout))
		},
		Lease: testLease,
		Wipe:  func(*testing.T) { srv.Restart() },
		Outage: func(*testing.T) func() {
			p.Blackhole(true)
			return func() {
				p.Blackhole(false)
				p.Reset() // what was lost leaves the connections out of step
			}
		},
		CallTimeout: testCallTimeout,
	})
}
