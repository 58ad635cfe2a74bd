package wsjson_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/coder/websocket"
	coderjson "github.com/coder/websocket/wsjson"

	"github.com/tetherws/tether/wsjson"
)

type discard struct{}

func (discard) Write(context.Context, websocket.MessageType, []byte) error { return nil }

type event struct {
	Op    string  `json:"op"`
	Topic string  `json:"topic"`
	Seq   int     `json:"seq"`
	Price float64 `json:"price"`
}

var ev = &event{Op: "tick", Topic: "btc-usd", Seq: 12345, Price: 64123.5}

// BenchmarkEncode compares, with no network, wsjson.Write's allocations per
// message with those of json.Marshal alone: the difference is what wsjson
// adds.
func BenchmarkEncode(b *testing.B) {
	ctx := context.Background()
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p, err := json.Marshal(ev)
			if err != nil || len(p) == 0 {
				b.Fatal(err)
			}
		}
	})
	b.Run("wsjson.Write", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := wsjson.Write(ctx, discard{}, ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkWriteWebSocket writes JSON messages on a loopback *websocket.Conn
// with tether's wsjson and with coder/websocket's.
func BenchmarkWriteWebSocket(b *testing.B) {
	for _, impl := range []struct {
		name  string
		write func(context.Context, *websocket.Conn, any) error
	}{
		{"tether", func(ctx context.Context, c *websocket.Conn, v any) error { return wsjson.Write(ctx, c, v) }},
		{"coder", coderjson.Write},
	} {
		b.Run(impl.name, func(b *testing.B) {
			done := make(chan struct{})
			url := serve(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(done)
				c, err := websocket.Accept(w, r, nil)
				if err != nil {
					return
				}
				defer c.CloseNow()
				for {
					if _, _, err := c.Read(context.Background()); err != nil {
						return
					}
				}
			}))
			ctx := context.Background()
			c, _, err := websocket.Dial(ctx, url, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := impl.write(ctx, c, ev); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			_ = c.Close(websocket.StatusNormalClosure, "")
			<-done
		})
	}
}
