package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/node"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/selfpurge"
)

// buildFleetbox builds the binary once per test run.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "fleetbox-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fleetbox")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// adminNode runs an in-process admin node that owns a namespace whose
// policy accepts the demo image's mock quotes.
func adminNode(t *testing.T) (*node.Node, *node.Client, governance.NamespaceID) {
	t.Helper()
	home := filepath.Join(t.TempDir(), "admin")
	fc := node.FileConfig{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, AdminAddr: "127.0.0.1:0", HeartbeatInterval: node.Duration(300 * time.Millisecond)}
	if _, err := node.Init(home, fc); err != nil {
		t.Fatal(err)
	}
	key := [32]byte{1}
	n, err := node.New(node.Config{Home: home, FileConfig: fc, StoreKey: &key, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-n.Ready()
	c := &node.Client{BaseURL: n.AdminURL(), Token: n.Token()}
	created, err := c.CreateNamespace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetPolicy(ctx, created.ID, demoPolicy(demoImage("crash test"))); err != nil {
		t.Fatal(err)
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	return n, c, ns
}

// replica is a `fleetbox node run` subprocess.
type replica struct {
	t      *testing.T
	bin    string
	home   string
	key    string
	cmd    *exec.Cmd
	lines  chan string
	stderr bytes.Buffer
	mu     sync.Mutex
}

func newReplica(t *testing.T, bin string) *replica {
	r := &replica{t: t, bin: bin, home: filepath.Join(t.TempDir(), "replica"), key: filepath.Join(t.TempDir(), "store.key")}
	if err := os.WriteFile(r.key, bytes.Repeat([]byte("ab"), 32), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "node", "init", "--home", r.home, "--listen", "/ip4/127.0.0.1/tcp/0", "--admin-addr", "127.0.0.1:0").CombinedOutput()
	if err != nil {
		t.Fatalf("node init: %v\n%s", err, out)
	}
	return r
}

func (r *replica) mockFlags() []string {
	img := demoImage("crash test")
	args := []string{"--attest-source", "mock", "--mock-mrtd", img.MRTD.String()}
	for i := range img.RTMR {
		args = append(args, fmt.Sprintf("--mock-rtmr%d", i), img.RTMR[i].String())
	}
	return args
}

// start runs the node; env adds environment variables.
func (r *replica) start(ns governance.NamespaceID, bootstrap string, env ...string) {
	args := append([]string{"node", "run", "--home", r.home, "--store-key-file", r.key, "--fleet-join", ns.String(), "--bootstrap", bootstrap}, r.mockFlags()...)
	r.cmd = exec.Command(r.bin, args...)
	r.cmd.Env = append(os.Environ(), append(env, "FLEETBOX_LOG_LEVEL=DEBUG")...)
	pipe, err := r.cmd.StderrPipe()
	if err != nil {
		r.t.Fatal(err)
	}
	lines := make(chan string, 4096) // this process's lines; a restart gets a new channel
	r.lines = lines
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			r.mu.Lock()
			r.stderr.WriteString(sc.Text() + "\n")
			r.mu.Unlock()
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	r.t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
	})
}

// waitLine waits for a stderr line containing want.
func (r *replica) waitLine(want string, timeout time.Duration) string {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-r.lines:
			if !ok {
				r.t.Fatalf("replica exited before %q\n%s", want, r.log())
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-deadline:
			r.t.Fatalf("no %q within %s\n%s", want, timeout, r.log())
		}
	}
}

func (r *replica) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stderr.String()
}

func (r *replica) kill() {
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.cmd.Wait()
}

// admit waits until the admin sees the replica as a ReadOnlyTee member and
// returns its key.
func admitted(t *testing.T, c *node.Client, ns governance.NamespaceID) string {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		ms, err := c.Members(context.Background(), ns.String(), "")
		if err == nil {
			for _, m := range ms {
				if m.Role == "ReadOnlyTee" {
					return m.Key
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the replica was not admitted")
	return ""
}

// storeHasNamespace reports whether the replica's store file holds the
// namespace id anywhere (rows, keys, leftover free pages).
func storeHasNamespace(t *testing.T, home string, ns governance.NamespaceID) bool {
	raw, err := os.ReadFile(filepath.Join(home, node.StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(raw, ns[:])
}

// TestSelfPurgeSurvivesSIGKILL: the replica is evicted and killed with
// SIGKILL in the middle of its purge (after the PendingSelfPurge marker).
// `fleetbox node self-purge reconcile` finishes it; so does a plain restart.
func TestSelfPurgeSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs node subprocesses")
	}
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	for _, finish := range []string{"reconcile command", "plain restart"} {
		t.Run(finish, func(t *testing.T) {
			a, c, ns := adminNode(t)
			r := newReplica(t, bin)
			r.start(ns, a.Network().Addrs()[0], selfpurge.StallEnv+"=marked")
			key := admitted(t, c, ns)
			r.waitLine("fleet replica admitted", 90*time.Second)
			if !storeHasNamespace(t, r.home, ns) {
				t.Fatal("test is blind: the namespace is not in the replica's store before eviction")
			}
			if _, err := c.RemoveMember(context.Background(), ns.String(), "", key); err != nil {
				t.Fatal(err)
			}
			r.waitLine("self-purge stalled", 90*time.Second)
			r.kill()
			if !storeHasNamespace(t, r.home, ns) {
				t.Fatal("the purge finished before the kill; the test shows nothing")
			}

			switch finish {
			case "reconcile command":
				out, err := exec.Command(bin, "node", "self-purge", "reconcile", "--home", r.home, "--store-key-file", r.key).Output()
				if err != nil {
					t.Fatalf("reconcile: %v\n%s", err, out)
				}
				var rep node.ReconcileReport
				if err := json.Unmarshal(out, &rep); err != nil {
					t.Fatalf("reconcile output: %v\n%s", err, out)
				}
				if rep.Completed != 1 {
					t.Fatalf("reconcile report %+v, want one completed purge", rep)
				}
			case "plain restart":
				r.start(ns, a.Network().Addrs()[0])
				r.waitLine("self-purge complete", 90*time.Second)
				admin := regexp.MustCompile(`admin=(http://[0-9.:]+)`).FindStringSubmatch(r.waitLine("node running", 90*time.Second))
				if admin == nil {
					t.Fatal("no admin address in the node's log")
				}
				if v := scrape(t, admin[1], r.home, `self_purge_reconcile_total{outcome="completed"}`); v != "1" {
					t.Fatalf("self_purge_reconcile_total{outcome=\"completed\"} = %q, want 1", v)
				}
				r.cmd.Process.Signal(syscall.SIGTERM)
				r.cmd.Wait()
			}
			if storeHasNamespace(t, r.home, ns) {
				t.Fatal("the namespace is still in the replica's store file after the purge was finished")
			}
		})
	}
}

// scrape reads one sample from a node's /metrics.
func scrape(t *testing.T, baseURL, home, sample string) string {
	t.Helper()
	tok, err := node.ReadAdminToken(filepath.Join(home, node.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, baseURL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, sample+" ") {
			return strings.TrimPrefix(l, sample+" ")
		}
	}
	return ""
}
