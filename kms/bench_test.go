package kms_test

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/kms"
	"github.com/fleetbox/fleetbox/kms/client"
)

// BenchmarkKMSRelease drives full key releases on loopback: concurrent
// clients each run challenge -> test-CA quote (real format, ECDSA-signed,
// verified against signed collateral with CRLs) -> signed /get-key, against
// a KMS served by Run on a TCP listener with its audit log durable on disk
// (every release fsynced before its response). It reports releases/s and
// the p50/p99 latency of one full round.
//
//	go test ./kms -run '^$' -bench KMSRelease -benchtime 5000x
func BenchmarkKMSRelease(b *testing.B) {
	for _, bc := range []struct {
		name    string
		clients int
		seal    bool
	}{{"clients=8", 8, false}, {"clients=16", 16, false}, {"clients=8/sealed", 8, true}} {
		b.Run(bc.name, func(b *testing.B) { benchRelease(b, bc.clients, bc.seal) })
	}
}

func benchRelease(b *testing.B, clients int, seal bool) {
	ca, plat, coll := testCA(b)
	state := b.TempDir()
	secret, err := kms.LoadFileRootSecret(filepath.Join(state, kms.RootSecretFile))
	if err != nil {
		b.Fatal(err)
	}
	pol, err := attest.ParsePolicy(policyJSON(goodMRTD, false))
	if err != nil {
		b.Fatal(err)
	}
	srv, err := kms.NewServer(kms.Config{
		StateDir: state, RootSecret: secret, Policy: pol,
		Verifier:             attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch)),
		Now:                  func() time.Time { return attesttest.Epoch },
		MaxPendingChallenges: 100000,
		Limits:               noLimits, // every client is on 127.0.0.1
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	defer func() { cancel(); <-done }()

	tr := &http.Transport{MaxIdleConns: clients * 2, MaxIdleConnsPerHost: clients * 2, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	cs := make([]*client.Client, clients)
	for i := range cs {
		var seed [32]byte
		binary.BigEndian.PutUint32(seed[:], uint32(i+1))
		c, err := client.New(client.Config{
			URL: "http://" + ln.Addr().String(), Identity: ed25519.NewKeyFromSeed(seed[:]), HTTPClient: hc, Seal: seal, KMSPublicKey: srv.PublicKey(),
			Source:      &attesttest.Source{Platform: plat, Options: attesttest.QuoteOptions{MRTD: goodMRTD, RTMR: goodRTMR}},
			MaxAttempts: 1,
		})
		if err != nil {
			b.Fatal(err)
		}
		cs[i] = c
	}
	// Warm connections and the verifier's chain and collateral caches.
	for _, c := range cs {
		if _, err := c.GetKey(ctx); err != nil {
			b.Fatal(err)
		}
	}

	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	b.ResetTimer()
	cpu0 := processCPU()
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if _, err := c.GetKey(ctx); err != nil {
					failed.Add(1)
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	b.StopTimer()
	if failed.Load() > 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "releases/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	// CPU per release (client and server together) does not depend on what
	// else runs on the machine: 2 cores / this is the ceiling here.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/release")
	b.ReportMetric(0, "ns/op")
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
