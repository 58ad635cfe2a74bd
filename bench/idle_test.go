package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/tetherws/tether"
)

// Env10K turns on the 10,000-Conn idle run, which takes a while.
const Env10K = "TETHER_BENCH_10K"

// BenchmarkIdle dials n Conns to an echo server in another process, lets them
// sit, and reports the client heap and stack in use (B/conn) and goroutines
// (goroutines/conn) each one adds, after GC. For tether it also reports how
// many Conns did not stay on their first link (dropped-conns). With 10,000
// Conns the tether Conns are held past their first heartbeat, and a Conn
// whose ping was not answered counts as dropped too: they must fit and stay
// stable.
func BenchmarkIdle(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, d := range dialers {
			b.Run(fmt.Sprintf("conns=%d/client=%s", n, d.name), func(b *testing.B) {
				if n > 1000 && os.Getenv(Env10K) != "1" {
					b.Skipf("set %s=1 for %d Conns", Env10K, n)
				}
				raiseNofile(b, uint64(n)+512)
				var mem, gor, dropped float64
				for range b.N {
					m, g, dr := measureIdle(b, d, n)
					mem += m
					gor += g
					dropped += float64(dr)
				}
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(mem/float64(b.N), "B/conn")
				b.ReportMetric(gor/float64(b.N), "goroutines/conn")
				if d.name == "tether" {
					b.ReportMetric(dropped/float64(b.N), "dropped-conns")
				}
			})
		}
	}
}

// idleHold is how long the Conns sit before they are measured: past tether's
// reader hand-over (50 ms), short of its first heartbeat (15 s).
const idleHold = time.Second

func measureIdle(b *testing.B, d dialer, n int) (bytesPerConn, goroutinesPerConn float64, dropped int) {
	srv := startRemoteServer(b)
	ctx := context.Background()
	conns := make([]client, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.close()
		}
	}()
	mem0, g0 := inUse()
	for range n {
		c, err := d.dial(ctx, srv.url)
		if err != nil {
			b.Fatalf("dial %s after %d Conns: %v", d.name, len(conns), err)
		}
		conns = append(conns, c)
	}
	lastDial := time.Now()
	time.Sleep(idleHold)
	mem1, g1 := inUse()
	if d.name != "tether" {
		return (mem1 - mem0) / float64(n), float64(g1-g0) / float64(n), 0
	}
	pinged := n >= 10000
	if pinged {
		// Every Conn sends its first ping one interval after it connected.
		time.Sleep(time.Until(lastDial.Add(tether.DefaultHeartbeatInterval + 5*time.Second)))
	}
	for _, c := range conns {
		tc := c.(*tetherClient).c
		st := tc.Stats()
		if st.State != tether.Connected || st.Reconnects != 0 || (pinged && (st.PingsAnswered == 0 || st.PingsFailed != 0)) {
			dropped++
		}
	}
	if dropped > 0 {
		b.Logf("%d of %d idle Conns did not stay on their first link", dropped, n)
	}
	return (mem1 - mem0) / float64(n), float64(g1-g0) / float64(n), dropped
}

// inUse returns the heap and stack in use and the goroutine count, after GC.
func inUse() (float64, int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse + ms.StackInuse), runtime.NumGoroutine()
}
