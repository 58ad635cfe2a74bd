module github.com/tetherws/tether/bench

go 1.25

require (
	github.com/cenkalti/backoff/v4 v4.3.0
	github.com/coder/websocket v1.8.15
	github.com/gorilla/websocket v1.5.3
	github.com/tetherws/tether v0.0.0-00010101000000-000000000000
)

replace github.com/tetherws/tether => ../
