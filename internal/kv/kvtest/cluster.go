package kvtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flock-io/flock-api/internal/testutil"
)

// clusterSlots is the number of hash slots of every Redis Cluster.
const clusterSlots = 16384

// startAttempts bounds how often a node is started again on other ports:
// a free port found here may be taken by another process (a parallel test
// binary) before redis-server binds it.
const startAttempts = 5

// RedisCluster is a Redis Cluster of redis-server processes on loopback,
// owned by one test.
type RedisCluster struct {
	// URL names every node as FLOCK_REDIS_URL takes it:
	// redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
	URL string
	// Addrs are the nodes' host:port.
	Addrs []string
}

// StartRedisCluster starts nodes redis-server processes (Debian's
// redis-server, 7.0 or newer) with cluster mode on, on free ports, with
// their files in a temporary directory; gives each an equal share of the
// hash slots and no replicas; and returns once every node reports
// cluster_state:ok. The processes are killed when t ends, whether it
// passes, fails or panics; on Linux they are also killed if the test
// binary itself dies. It fails t, never skips it, when redis-server is not
// installed: a skipped cluster test would read as a pass.
func StartRedisCluster(t testing.TB, nodes int) *RedisCluster {
	t.Helper()
	if nodes < 1 {
		t.Fatalf("StartRedisCluster: %d nodes", nodes)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("the Redis Cluster tests need redis-server (Debian package redis-server; `make services` installs it): %v", err)
	}
	dir := t.TempDir()
	ns := make([]*clusterNode, nodes)
	for i := range ns {
		ns[i] = startNode(t, bin, filepath.Join(dir, "node"+strconv.Itoa(i)))
	}

	// Nodes talk to each other by themselves once they have met; the
	// clients here only set the cluster up.
	clients := make([]*redis.Client, nodes)
	for i, n := range ns {
		clients[i] = redis.NewClient(&redis.Options{Addr: n.addr(), MaxRetries: -1})
		defer clients[i].Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Wait)
	defer cancel()
	for i, c := range clients {
		lo, hi := i*clusterSlots/nodes, (i+1)*clusterSlots/nodes-1
		if err := c.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			t.Fatalf("node %s: CLUSTER ADDSLOTSRANGE %d %d: %v", ns[i].addr(), lo, hi, err)
		}
		// Distinct epochs, as redis-cli --cluster create sets them, so the
		// nodes need not settle a collision before agreeing on the slots.
		if err := c.Do(ctx, "cluster", "set-config-epoch", i+1).Err(); err != nil {
			t.Fatalf("node %s: CLUSTER SET-CONFIG-EPOCH: %v", ns[i].addr(), err)
		}
	}
	for _, n := range ns[1:] {
		// The bus port is named: it is not the default port+10000 here.
		if err := clients[0].Do(ctx, "cluster", "meet", "127.0.0.1", n.port, n.busPort).Err(); err != nil {
			t.Fatalf("CLUSTER MEET %s (bus %d): %v", n.addr(), n.busPort, err)
		}
	}
	want := []string{"cluster_state:ok", "cluster_slots_ok:" + strconv.Itoa(clusterSlots), "cluster_known_nodes:" + strconv.Itoa(nodes)}
	testutil.Eventually(t, "every Redis Cluster node to report cluster_state:ok", func() error {
		for i, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("node %s: CLUSTER INFO: %w", ns[i].addr(), err)
			}
			for _, w := range want {
				if !strings.Contains(info, w+"\r\n") {
					return fmt.Errorf("node %s: CLUSTER INFO lacks %s:\n%s", ns[i].addr(), w, info)
				}
			}
		}
		return nil
	})
	rc := &RedisCluster{}
	for _, n := range ns {
		rc.Addrs = append(rc.Addrs, n.addr())
	}
	rc.URL = "redis+cluster://" + strings.Join(rc.Addrs, ",")
	return rc
}

type clusterNode struct {
	port, busPort int
}

func (n *clusterNode) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port)) }

// startNode starts one redis-server in dir and returns once it answers
// PING, trying other ports when the chosen ones were taken meanwhile.
func startNode(t testing.TB, bin, dir string) *clusterNode {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "redis.log")
	for attempt := 1; ; attempt++ {
		n := &clusterNode{port: freePort(t), busPort: freePort(t)}
		cmd := exec.Command(bin,
			"--port", strconv.Itoa(n.port),
			"--cluster-port", strconv.Itoa(n.busPort),
			"--bind", "127.0.0.1",
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--cluster-node-timeout", "5000",
			"--dir", dir,
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
			"--logfile", logFile,
		)
		cmd.SysProcAttr = childAttr()
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		// The goroutine that waits is the process's owner: it ends when the
		// process does, which the cleanup below makes sure of.
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
		})

		c := redis.NewClient(&redis.Options{Addr: n.addr(), MaxRetries: -1, DialTimeout: time.Second})
		died := false
		testutil.Eventually(t, "redis-server on "+n.addr()+" to answer PING", func() error {
			select {
			case <-exited:
				died = true
				return nil
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return c.Ping(ctx).Err()
		})
		_ = c.Close()
		if !died {
			return n
		}
		log, _ := os.ReadFile(logFile)
		if attempt < startAttempts && strings.Contains(string(log), "Address already in use") {
			_ = os.Remove(logFile)
			continue
		}
		t.Fatalf("redis-server on %s exited at start:\n%s", n.addr(), log)
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
