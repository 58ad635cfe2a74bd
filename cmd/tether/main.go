// Command tether is a command-line companion to the tether library: a
// resilient WebSocket client, a local echo server to try it against, and a
// probe that diagnoses the path to a WebSocket server.
//
//	tether connect [flags] URL   send stdin lines, print messages, survive drops
//	tether serve [flags]         a local echo server on tether.Handler
//	tether probe [flags] URL     DNS, TCP, TLS, Upgrade, ping, polling: what works
//
// Install it with
//
//	go install github.com/tetherws/tether/cmd/tether@latest
//
// and run "tether CMD -h" for each command's flags. Exit codes: 0 on
// success, 1 on failure (for probe: WebSocket does not work), 2 on bad
// usage.
//
// Neither connect nor probe prints credentials: the values of the URL's
// query, its password, and the values given with -H are replaced by
// "REDACTED" in everything they print about the connection (messages
// received are printed as they are).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `tether: a resilient WebSocket client, a test server and a path probe

Usage:
  tether connect [flags] URL   send each stdin line as a text message, print each
                               message received on stdout, and ride through drops
  tether serve [flags]         run a local echo server on tether.Handler
  tether probe [flags] URL     diagnose the path to a WebSocket server, step by step

Run "tether CMD -h" for a command's flags.
Exit codes: 0 success, 1 failure, 2 bad usage.
`

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit code. ctx ends on
// SIGINT or SIGTERM.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "connect":
		return cmdConnect(ctx, rest, stdin, stdout, stderr)
	case "serve":
		return cmdServe(ctx, rest, stdout, stderr)
	case "probe":
		return cmdProbe(ctx, rest, stdout, stderr)
	case "-h", "-help", "--help", "help":
		if len(rest) == 1 {
			return run(ctx, []string{rest[0], "-h"}, stdin, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "tether: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
}

// parseFlags parses args with fs, flags before or after the positional
// arguments, and returns the positional arguments and the exit code to end
// with, or -1 to go on: -h prints the help and ends with 0, bad flags with 2.
// "--" ends the flags.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, int) {
	fs.SetOutput(stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK
			}
			return nil, exitUsage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, -1
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), -1
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// usageError prints msg and the command's usage, and returns exitUsage.
func usageError(fs *flag.FlagSet, stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "tether %s: "+format+"\n", append([]any{fs.Name()}, args...)...)
	fs.Usage()
	return exitUsage
}

// headerFlags collects repeated -H 'Name: value' flags.
type headerFlags []string

func (h *headerFlags) String() string { return fmt.Sprint(len(*h), " headers") }

func (h *headerFlags) Set(v string) error {
	name, value, ok := splitHeader(v)
	if !ok {
		return errors.New("want 'Name: value'")
	}
	*h = append(*h, name+": "+value)
	return nil
}
