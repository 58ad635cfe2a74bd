// Package tetherredis implements [tether.Cluster] on Redis, so that several
// tether Handler instances behind a load balancer serve one set of
// sessions. It is a module of its own, so that the core tether module does
// not depend on go-redis.
//
// Make one [Cluster] per Handler instance with [New], from a go-redis
// client and the URL other instances reach this Handler at:
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
//	c := tetherredis.New(rdb, "http://10.0.0.5:8080/ws")
//
// # What goes to Redis
//
// Only the directory: who owns which session, and the state of sessions
// handed over by an instance that shut down. Messages never touch Redis.
// Per instance, Redis holds a liveness key, refreshed every third of the
// lease ([WithLease], 10 s by default); per session, a small hash naming
// the owner and the epoch of its ownership, refreshed with the liveness in
// one pipelined call (a Lua script per 500 sessions: a Renew of 1,000
// sessions is two commands). Every write that depends on the record is one
// Lua script that checks the owner and epoch first (fencing), so two
// instances never both own a session, and exactly one of several instances
// taking a parked session wins. Keys are under the prefix "tether:"
// ([WithPrefix]).
//
// # When Redis is out of reach
//
// Every call is bounded by [WithCallTimeout] (1 s by default) and by its
// ctx, whatever the client's own timeouts. After a failed call, one call at
// a time goes to Redis to probe it and the others fail at once with an
// error wrapping [tether.ErrClusterUnavailable], so an outage costs no
// waiting and piles up no goroutines. The outage is logged once when it
// starts and once when it ends ([WithLogger]).
//
// When Redis is back, even restarted empty, each instance writes its
// sessions again on its next Renew (a Handler renews every third of the
// lease), from the leases it holds; until then, and for one lease after, a Lookup that finds
// no live owner answers [tether.OwnerRecovering] ("try again") instead of
// "lost". A session being handed over while Redis lost its data is lost:
// its parked state was in Redis.
//
// # Requirements
//
// Redis 6.2 or later (the scripts use SET ... GET), tested with Redis 7.
// On Redis Cluster every key of one deployment must hash to one slot: give
// a prefix with a hash tag, such as "{tether}:". Redis persistence is not
// needed.
package tetherredis
