package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ServerBinEnv names a prebuilt cmd/echoserver binary; without it the first
// benchmark that needs one builds it with the go command.
const ServerBinEnv = "TETHER_BENCH_ECHOSERVER"

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string // temporary; removed by TestMain
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// serverBinary returns the path of the echoserver binary, building it once.
func serverBinary(b *testing.B) string {
	b.Helper()
	binOnce.Do(func() {
		if p := os.Getenv(ServerBinEnv); p != "" {
			binPath = p
			return
		}
		binDir, binErr = os.MkdirTemp("", "tether-bench-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "echoserver")
		// go test runs in the package directory, the module root, with its
		// own go command first on PATH.
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/echoserver")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("building cmd/echoserver (or set %s): %v\n%s", ServerBinEnv, err, out)
		}
	})
	if binErr != nil {
		b.Fatal(binErr)
	}
	return binPath
}

// remoteServer is an echo server in a process of its own on 127.0.0.1.
type remoteServer struct {
	url   string
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startRemoteServer starts an echo server process; it stops when b ends.
func startRemoteServer(b *testing.B) *remoteServer {
	b.Helper()
	cmd := exec.Command(serverBinary(b), "-addr", "127.0.0.1:0")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &remoteServer{cmd: cmd, stdin: stdin}
	b.Cleanup(s.stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("echoserver did not print its address: %v", err)
	}
	s.url = "ws://" + strings.TrimSpace(line)
	return s
}

// stop closes the server's stdin, which ends it, and kills it if it lingers.
func (s *remoteServer) stop() {
	_ = s.stdin.Close()
	done := make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// raiseNofile makes sure the process may open need files, or skips b.
func raiseNofile(b *testing.B, need uint64) {
	b.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	if lim.Cur >= need {
		return
	}
	if lim.Max < need {
		b.Skipf("RLIMIT_NOFILE hard limit %d is below the %d files needed", lim.Max, need)
	}
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Skipf("raising RLIMIT_NOFILE to %d: %v", need, err)
	}
}
