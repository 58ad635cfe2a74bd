package tetherredis_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/tetherredis"
)

// Two instances of one deployment share a Redis: the first owns a session,
// the second finds it there, then takes it over when the first shuts down.
// A Handler makes these calls itself; this shows what they do.
//
// The example needs a Redis, at REDIS_ADDR or localhost:6379, so go test
// compiles it but does not run it as an example; TestExampleNew runs it
// against a redis-server of its own and checks what it prints.
func ExampleNew() {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "localhost:6379"
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()

	a := tetherredis.New(rdb, "http://10.0.0.5:8080/ws")
	b := tetherredis.New(rdb, "http://10.0.0.6:8080/ws")
	defer b.Leave(ctx)

	var id tether.SessionID
	_, _ = rand.Read(id[:])
	lease, err := a.Claim(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	owner, err := b.Lookup(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("b sees the session at", owner.Status, owner.URL)

	// a shuts down: it parks the session's state and leaves.
	if err := a.Park(ctx, lease, []byte("seq=42"), 2*time.Minute); err != nil {
		log.Fatal(err)
	}
	if err := a.Leave(ctx); err != nil {
		log.Fatal(err)
	}
	owner, err = b.Lookup(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("b sees the session", owner.Status)

	// The client comes back to b, which takes the session over.
	newLease, state, err := b.TakeParked(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("b owns it with epoch %d after %d, and the state %q\n", newLease.Epoch, lease.Epoch, state)
	if err := b.Release(ctx, newLease, nil, 0); err != nil {
		log.Fatal(err)
	}
}
