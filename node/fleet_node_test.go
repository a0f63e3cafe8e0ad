package node

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
	"github.com/fleetbox/fleetbox/node/fleet"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
	"github.com/fleetbox/fleetbox/node/store"
)

// startNodeWith starts a node whose config mod may change (fleet settings).
func startNodeWith(t testing.TB, name, home string, mod func(*Config)) *tnode {
	t.Helper()
	fc, err := LoadFileConfig(home)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Home: home, FileConfig: fc, StoreKey: &testStoreKey, NoSync: true, Logger: testLogger(name)}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("node %s: %v", name, err)
	}
	tn := &tnode{Node: n, home: home, client: &Client{BaseURL: n.AdminURL(), Token: n.Token()}}
	var once sync.Once
	tn.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("node %s: run: %v", name, err)
			}
		})
	}
	t.Cleanup(tn.stop)
	return tn
}

// fleetTestbed is a test CA, its collateral, and the measurements the
// namespace pins.
type fleetTestbed struct {
	ca       *attesttest.CA
	verifier *attest.Verifier
	good     attesttest.QuoteOptions
}

func newFleetTestbed(t testing.TB) *fleetTestbed {
	ca := attesttest.NewCA(t)
	coll := ca.Collateral(t, attesttest.CollateralOptions{})
	// The collateral is valid around attesttest.Epoch; verify at that time.
	return &fleetTestbed{
		ca:       ca,
		verifier: attest.NewVerifier(ca.VerifierConfig(attest.StaticCollateral{C: coll}, attesttest.Epoch)),
		good:     attesttest.QuoteOptions{MRTD: attest.MRTD{0xa1}, RTMR: [4]attest.RTMR{{0xb0}, {0xb1}, {0xb2}, {0xb3}}},
	}
}

func (tb *fleetTestbed) policy() *Policy {
	p := &attest.Policy{
		AllowedMrtd:  []string{tb.good.MRTD.String()},
		AllowedRtmr0: []string{tb.good.RTMR[0].String()}, AllowedRtmr1: []string{tb.good.RTMR[1].String()},
		AllowedRtmr2: []string{tb.good.RTMR[2].String()}, AllowedRtmr3: []string{tb.good.RTMR[3].String()},
	}
	return (*Policy)(p)
}

func (tb *fleetTestbed) source(t testing.TB, o attesttest.QuoteOptions) attest.Source {
	return &attesttest.Source{Platform: tb.ca.NewPlatform(t, attesttest.DefaultPlatform), Options: o}
}

func (tb *fleetTestbed) fleetConfig(src attest.Source) func(*Config) {
	return func(c *Config) {
		c.Fleet = FleetConfig{QuoteSource: src, Verifier: tb.verifier, Window: time.Minute,
			AnnounceMinBackoff: 100 * time.Millisecond, AnnounceMaxBackoff: time.Second}
	}
}

// counter reads a counter (or the sum of a counter vector's children that
// carry the label value) from a node's registry.
func counter(t testing.TB, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	var sum float64
	for _, m := range metricsNamed(t, reg, name) {
		if label == "" || hasLabelValue(m, label) {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// metricsNamed returns the children of one metric family in a registry.
func metricsNamed(t testing.TB, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func hasLabelValue(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

// TestFleetReplicaLifecycle: admission through a TeeAttestationAnnounce by
// two racing verifiers, the group key delivered, a ReadOnlyTee write
// refused, a wrong-MRTD candidate refused by reason, eviction with key
// rotation and self-purge (no rows, no bytes of the group-key row left in the
// database file), and the admitting announce replayed after eviction.
func TestFleetReplicaLifecycle(t *testing.T) {
	ctx := context.Background()
	tb := newFleetTestbed(t)
	a := startNodeWith(t, "a", newHome(t), tb.fleetConfig(nil))
	b := startNodeWith(t, "b", newHome(t), tb.fleetConfig(nil))
	connect(t, b, a)
	created, err := a.client.CreateNamespace(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := governance.ParseNamespaceID(created.ID)
	jb, err := b.client.JoinNamespace(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.AddMember(ctx, created.ID, "", MemberAddRequest{Member: jb.MemberKeys, Role: "Member", Capabilities: "MANAGE_MEMBERS"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.client.SetPolicy(ctx, created.ID, tb.policy()); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, "a and b", ns, a, b)

	// The replica joins by hand so the test keeps the exact announce that
	// admits it (the announcer would make its own).
	r := startNodeWith(t, "r", newHome(t), tb.fleetConfig(tb.source(t, tb.good)))
	connect(t, r, a)
	connect(t, r, b)
	if _, err := r.eng.JoinNamespace(ns); err != nil {
		t.Fatal(err)
	}
	if err := r.net.Join(p2p.NamespaceID(ns)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replica syncs the DAG skeleton", func() bool { h, _, _ := r.eng.Heads(ns); return len(h) > 0 })
	sk, agreement, err := r.eng.IdentityKeys(ns)
	if err != nil {
		t.Fatal(err)
	}
	var admitting []byte
	waitFor(t, "replica admitted with the group key", func() bool {
		if st, _ := r.FleetStatus(ns); st != nil && st.Admitted && st.HasGroupKey {
			return true
		}
		heads, _, _ := r.eng.Heads(ns)
		ann, err := fleet.NewAnnounce(ctx, r.cfg.Fleet.QuoteSource, [32]byte(ns), sk, agreement, heads[len(heads)-1])
		if err != nil {
			t.Fatal(err)
		}
		admitting, _ = ann.Encode()
		r.net.PublishAnnounce(ctx, p2p.NamespaceID(ns), admitting)
		time.Sleep(150 * time.Millisecond)
		return false
	})
	r.fleet.remember(ns, mustStatus(t, r, ns))
	rKeys, _ := r.eng.Identity(ns)
	waitConverged(t, "admission spreads", ns, a, b, r)
	members, err := a.eng.Members(ns, ns.Root())
	if err != nil {
		t.Fatal(err)
	}
	var rows int
	for _, m := range members {
		if m.Member == rKeys.Signing {
			rows++
			if m.Role != governance.RoleReadOnlyTee {
				t.Fatalf("replica role %s", m.Role)
			}
		}
	}
	if rows != 1 {
		t.Fatalf("%d membership rows for the replica", rows)
	}

	// A ReadOnlyTee replica's write is refused locally (403: a "no").
	_, outsiderKeys := outsider(t)
	if _, err := r.client.AddMember(ctx, created.ID, "", MemberAddRequest{Member: outsiderKeys.String(), Role: "Member"}); err == nil {
		t.Fatal("a ReadOnlyTee replica authored an op")
	}

	// A candidate with the wrong MRTD is refused by reason, never admitted.
	bad := tb.good
	bad.MRTD = attest.MRTD{0xee}
	w := startNodeWith(t, "w", newHome(t), tb.fleetConfig(tb.source(t, bad)))
	connect(t, w, a)
	connect(t, w, b)
	if _, err := w.client.FleetJoin(ctx, created.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "wrong MRTD refused", func() bool {
		return counter(t, a.reg, "fleet_announces_refused_total", attest.ReasonMrtdNotAllowed)+
			counter(t, b.reg, "fleet_announces_refused_total", attest.ReasonMrtdNotAllowed) > 0
	})
	if st, _ := w.FleetStatus(ns); st.Admitted {
		t.Fatal("wrong-MRTD candidate admitted")
	}
	// Told to stop, the candidate stops announcing.
	if st, err := w.client.FleetLeave(ctx, created.ID); err != nil || st.Announcing {
		t.Fatalf("fleet-join --stop: %+v %v", st, err)
	}

	// Eviction: the admin removes the replica; the key rotates; the replica
	// purges itself.
	keyRow := groupKeyRow(t, r, ns)
	if !fileContains(t, r, keyRow) {
		t.Fatal("test is blind: the group-key row is not visible in the replica's file before the purge")
	}
	if _, err := a.client.RemoveMember(ctx, created.ID, "", rKeys.Signing.String()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replica self-purged", func() bool {
		return counter(t, r.reg, "self_purge_completed_total", "") > 0
	})
	if nss, _ := r.eng.Namespaces(); len(nss) != 0 || !markersGone(t, r) || counter(t, r.reg, "self_purge_failures_total", "") != 0 {
		t.Fatal("purge completed but the namespace, a marker or a failure remains")
	}
	if fileContains(t, r, keyRow) {
		t.Fatal("the purged group-key row (key and sealed value) is still in the database file")
	}
	if n := rowsLeft(t, r, ns); n != 0 {
		r.st.View(func(tx *store.Tx) error {
			for _, col := range store.Columns {
				tx.ForEach(col, nil, func(k, v []byte) error {
					if bytes.Contains(k, ns[:]) || bytes.Contains(v, ns[:]) {
						t.Logf("left: %s %q", col, k)
					}
					return nil
				})
			}
			return nil
		})
		t.Fatalf("%d copies of the namespace id remain in the file after the self-purge", n)
	}

	// The announce that admitted the replica, replayed after its eviction,
	// is refused: its quote hash is recorded namespace-wide.
	waitFor(t, "replayed announce refused", func() bool {
		w.net.PublishAnnounce(ctx, p2p.NamespaceID(ns), admitting)
		time.Sleep(100 * time.Millisecond)
		return counter(t, a.reg, "fleet_announces_refused_total", string(fleet.ReasonQuoteReplayed))+
			counter(t, b.reg, "fleet_announces_refused_total", string(fleet.ReasonQuoteReplayed)) > 0
	})
	v, _ := a.eng.TeeView(ns)
	if v.IsMember(rKeys.Signing) {
		t.Fatal("replayed announce re-admitted the evicted replica")
	}
}

func mustStatus(t testing.TB, n *tnode, ns governance.NamespaceID) *governance.TeeStatus {
	st, err := n.eng.TeeStatus(ns)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// groupKeyRow returns the raw bytes of one stored group-key row of ns: the
// row key (cleartext) followed by the sealed value, as bbolt lays out a leaf.
func groupKeyRow(t testing.TB, n *tnode, ns governance.NamespaceID) []byte {
	t.Helper()
	raw, err := os.ReadFile(n.st.Path())
	if err != nil {
		t.Fatal(err)
	}
	prefix := append([]byte("gov/key/"), ns[:]...)
	i := bytes.Index(raw, prefix)
	if i < 0 {
		t.Fatal("no group-key row in the file")
	}
	const rowKeyLen, sealedLen = 8 + 32 + 32, 1 + 24 + 32 + 16
	if i+rowKeyLen+sealedLen > len(raw) {
		t.Fatal("group-key row truncated")
	}
	return bytes.Clone(raw[i : i+rowKeyLen+sealedLen])
}

func fileContains(t testing.TB, n *tnode, b []byte) bool {
	raw, err := os.ReadFile(n.st.Path())
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(raw, b[:72]) || bytes.Contains(raw, b[72:])
}

func markersGone(t testing.TB, n *tnode) bool {
	m, err := n.fleet.purger.Pending()
	return err == nil && len(m) == 0
}

func rowsLeft(t testing.TB, n *tnode, ns governance.NamespaceID) int {
	raw, err := os.ReadFile(n.st.Path())
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(raw), string(ns[:]))
}
