// Package clustertest holds the contract suite for implementations of
// [tether.Cluster], and an in-memory implementation that passes it.
//
// # Contract suite
//
// [Run] checks every behaviour a Handler relies on: claim, lookup and
// release; fencing (a lease from an earlier owner, or an earlier epoch of
// the same owner, can neither renew, release nor park); exactly one winner
// among instances taking a parked session at once; the parked state's round
// trip and time to live; a crashed instance reported dead within its
// liveness lease; one Renew call for thousands of sessions; sessions written
// again after the store was wiped, with exactly one owner when two
// instances race; and, during a store outage, calls that fail fast and an
// owner that is not declared lost while it may still come back. An
// implementation runs it from its own tests with a [Harness] that makes
// instances on one shared store:
//
//	func TestContract(t *testing.T) {
//		clustertest.Run(t, clustertest.Harness{
//			New:   func(t *testing.T, url string) tether.Cluster { return myengine.New(conn, url, myengine.WithLease(time.Second)) },
//			Lease: time.Second,
//			Wipe:  func(t *testing.T) { flushStore(t) },
//		})
//	}
//
// # In memory
//
// [Store] is a directory in memory and [Memory] an instance on it, with the
// same semantics as the Redis implementation in package tetherredis. Several
// Handlers in one process (tests, demos) can share a Store; it cannot
// span processes. [Store.Wipe] and [Store.SetDown] play a store restarted
// empty and a store out of reach.
package clustertest
