package bench

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkEcho is a sequential echo round trip: write one message, read its
// echo. ctx=bg passes context.Background() to every call; ctx=cancel gives
// each Read a cancellable ctx (gorilla's Read takes no ctx, so it has no
// ctx=cancel run). api=read reads each echo as a new []byte, api=reader
// with Reader into a reused buffer (see apis).
func BenchmarkEcho(b *testing.B) {
	url := sharedServer(b).URL()
	for _, size := range []int{16, 1024} {
		for _, mode := range []string{"bg", "cancel"} {
			for _, api := range apis {
				for _, d := range dialers {
					if mode == "cancel" && !d.ctx {
						continue
					}
					name := fmt.Sprintf("size=%d/ctx=%s/api=%s/client=%s", size, mode, api, d.name)
					b.Run(name, func(b *testing.B) {
						echoBenchCtx(b, withAPI(d, api), url, size, mode == "cancel")
					})
				}
			}
		}
	}
}

// BenchmarkPipeline is one-way throughput of 1 KiB messages: a writer
// goroutine writes b.N messages as fast as it can while the benchmark
// goroutine reads their b.N echoes, with each API.
func BenchmarkPipeline(b *testing.B) {
	const size = 1024
	url := sharedServer(b).URL()
	for _, api := range apis {
		for _, d := range dialers {
			b.Run(fmt.Sprintf("size=%d/api=%s/client=%s", size, api, d.name), func(b *testing.B) {
				pipelineBench(b, withAPI(d, api), url, size)
			})
		}
	}
}

// echoBench is one client's sequential echo round trip with ctx=bg.
func echoBench(b *testing.B, d dialer, url string, size int) {
	echoBenchCtx(b, d, url, size, false)
}

// echoBenchCtx is one client's sequential echo round trip; cancel gives each
// Read a cancellable ctx.
func echoBenchCtx(b *testing.B, d dialer, url string, size int, cancelable bool) {
	c := mustDial(b, d, url)
	defer c.close()
	p := payload(size)
	bg := context.Background()
	roundTrip(b, c, bg, bg, p) // warm up: first Read, buffers
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		if cancelable {
			ctx, cancel := context.WithCancel(bg)
			roundTrip(b, c, bg, ctx, p)
			cancel()
		} else {
			roundTrip(b, c, bg, bg, p)
		}
	}
	reportCPU(b, cpu0)
}

// pipelineBench is one client's pipelined throughput: a writer goroutine
// writes b.N messages as fast as it can while the benchmark goroutine reads
// their b.N echoes.
func pipelineBench(b *testing.B, d dialer, url string, size int) {
	c := mustDial(b, d, url)
	defer c.close()
	p := payload(size)
	ctx := context.Background()
	roundTrip(b, c, ctx, ctx, p)
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	cpu0 := cpuTime()
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range b.N {
			if werr = c.write(ctx, p); werr != nil {
				return
			}
		}
	}()
	for range b.N {
		if _, err := c.read(ctx); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.StopTimer()
	if werr != nil {
		b.Fatal(werr)
	}
	reportCPU(b, cpu0)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkDial is the time to a usable connection: TCP connect and the
// WebSocket handshake, plus for tether its supervisor's start. Closing is
// not timed.
func BenchmarkDial(b *testing.B) {
	url := sharedServer(b).URL()
	for _, d := range dialers {
		b.Run("client="+d.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				c, err := d.dial(ctx, url)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				_ = c.close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkAllocs is a 1 KiB echo round trip against the server in its own
// process, so that allocs/op and B/op count the client alone: what one
// message sent and its echo received cost in allocations.
func BenchmarkAllocs(b *testing.B) {
	const size = 1024
	srv := startRemoteServer(b)
	for _, api := range apis {
		for _, d := range dialers {
			b.Run(fmt.Sprintf("size=%d/api=%s/client=%s", size, api, d.name), func(b *testing.B) {
				allocsBench(b, withAPI(d, api), srv.url, size)
			})
		}
	}
}

// allocsBench is one client's round trips against the remote server.
func allocsBench(b *testing.B, d dialer, url string, size int) {
	c := mustDial(b, d, url)
	defer c.close()
	p := payload(size)
	ctx := context.Background()
	for range 10 {
		roundTrip(b, c, ctx, ctx, p)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		roundTrip(b, c, ctx, ctx, p)
	}
}

// cpuTime is the CPU time the process (clients and in-process server) has
// used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time used per op since cpu0 (cpu-ns/op): unlike
// ns/op it does not count time spent waiting while other processes on the
// machine run, so it shows what the client costs even on a busy machine. It
// includes the in-process server's share, the same for every client.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}
