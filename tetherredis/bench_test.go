package tetherredis_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/clustertest"
	"github.com/tetherws/tether/tetherredis"
	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// The benchmarks run against a real redis-server on loopback. They report
// the Redis commands each operation sends (redis-cmds/op, from INFO
// commandstats) beside its time.

func benchCluster(b *testing.B, srv *redistest.Server, name string) *tetherredis.Cluster {
	b.Helper()
	c := tetherredis.New(srv.Client(b), "http://127.0.0.1:8080/"+name,
		tetherredis.WithLease(time.Minute), tetherredis.WithCallTimeout(10*time.Second))
	b.Cleanup(func() { _ = c.Leave(context.Background()) })
	return c
}

// reportCommands reports the EVALSHA/EVAL commands sent per operation.
func reportCommands(b *testing.B, srv *redistest.Server, before map[string]int64, ops int) {
	b.Helper()
	after := srv.CommandCalls(b)
	sent := after["evalsha"] - before["evalsha"] + after["eval"] - before["eval"]
	b.ReportMetric(float64(sent)/float64(ops), "redis-cmds/op")
}

// BenchmarkPing is the floor: one round trip to the same Redis with the
// same client.
func BenchmarkPing(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	ctx := context.Background()
	for b.Loop() {
		if err := rdb.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClaim(b *testing.B) {
	srv := redistest.Start(b)
	c := benchCluster(b, srv, "a")
	ctx := context.Background()
	if _, err := c.Claim(ctx, clustertest.NewSessionID()); err != nil { // loads the script
		b.Fatal(err)
	}
	before := srv.CommandCalls(b)
	n := 0
	for b.Loop() {
		if _, err := c.Claim(ctx, clustertest.NewSessionID()); err != nil {
			b.Fatal(err)
		}
		n++
	}
	reportCommands(b, srv, before, n)
}

func BenchmarkLookup(b *testing.B) {
	srv := redistest.Start(b)
	a, c := benchCluster(b, srv, "a"), benchCluster(b, srv, "b")
	ctx := context.Background()
	id := clustertest.NewSessionID()
	if _, err := a.Claim(ctx, id); err != nil {
		b.Fatal(err)
	}
	if o, err := c.Lookup(ctx, id); err != nil || o.Status != tether.OwnerRemote {
		b.Fatalf("Lookup: %+v, %v", o, err)
	}
	before := srv.CommandCalls(b)
	n := 0
	for b.Loop() {
		if _, err := c.Lookup(ctx, id); err != nil {
			b.Fatal(err)
		}
		n++
	}
	reportCommands(b, srv, before, n)
}

// BenchmarkRenew renews all of an instance's sessions in one call, as the
// Handler does every RenewInterval.
func BenchmarkRenew(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			srv := redistest.Start(b)
			c := benchCluster(b, srv, "a")
			leases := leasesFor(b, c, n)
			ctx := context.Background()
			before := srv.CommandCalls(b)
			ops := 0
			for b.Loop() {
				if lost, err := c.Renew(ctx, leases); err != nil || len(lost) > 0 {
					b.Fatalf("Renew: lost %d, %v", len(lost), err)
				}
				ops++
			}
			reportCommands(b, srv, before, ops)
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(ops)/float64(n)*1000, "ns/session")
		})
	}
}
