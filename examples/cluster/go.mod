module github.com/tetherws/tether/examples/cluster

go 1.25

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/coder/websocket v1.8.15
	github.com/redis/go-redis/v9 v9.22.0
	github.com/tetherws/tether v0.0.0
	github.com/tetherws/tether/tetherredis v0.0.0
	go.uber.org/goleak v1.3.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	go.uber.org/atomic v1.11.0 // indirect
	golang.org/x/sys v0.30.0 // indirect
)

replace (
	github.com/tetherws/tether => ../..
	github.com/tetherws/tether/tetherredis => ../../tetherredis
)
