// Command echoserver runs the benchmarks' WebSocket echo server in a process
// of its own, so that a benchmark measuring client memory counts only the
// client. It prints the address it listens on as the first line of stdout and
// runs until stdin closes (the benchmark ends or dies) or it is killed.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/tetherws/tether/bench/internal/echo"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	s, err := echo.Listen(*addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Close()
}
