package node

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/node/fleet"
	"github.com/fleetbox/fleetbox/node/governance"
	"github.com/fleetbox/fleetbox/node/p2p"
)

// The verifier side of fleet join: judging other replicas' announces and
// admitting those that pass.

// onAnnounce is the gossip validator for TeeAttestationAnnounces. Every node
// checks shape and signature before an announce spreads; a node that may
// admit members also judges it fully, off the validator's path.
func (f *fleetState) onAnnounce(ctx context.Context, pns p2p.NamespaceID, from peer.ID, wire []byte) pubsub.ValidationResult {
	ns := pns
	a, err := fleet.DecodeAnnounce(wire)
	if err != nil {
		f.m.refused.WithLabelValues(string(fleet.ReasonMalformed)).Inc()
		return pubsub.ValidationReject
	}
	if a.Namespace != [32]byte(ns) {
		f.m.refused.WithLabelValues(string(fleet.ReasonWrongNamespace)).Inc()
		return pubsub.ValidationReject
	}
	if !a.VerifySignature() {
		f.m.refused.WithLabelValues(string(fleet.ReasonBadSignature)).Inc()
		return pubsub.ValidationReject
	}
	if from == f.d.net().ID() {
		return pubsub.ValidationAccept // our own announce
	}
	view, err := f.d.eng.TeeView(ns)
	if err != nil || !view.CanManage {
		return pubsub.ValidationAccept // not ours to judge; let it reach those who can
	}
	f.mu.Lock()
	busy := f.inflight[a.Member]
	if !busy {
		f.inflight[a.Member] = true
	}
	f.mu.Unlock()
	if !busy {
		f.d.goRun(func(ctx context.Context) {
			defer func() {
				f.mu.Lock()
				delete(f.inflight, a.Member)
				f.mu.Unlock()
			}()
			f.admit(ctx, ns, a)
		})
	}
	return pubsub.ValidationAccept
}

// verifierView adapts governance's view and the head tracker to fleet.View.
type verifierView struct {
	*governance.TeeView
	ns    governance.NamespaceID
	heads *fleet.HeadTracker
}

func (v verifierView) Policy() *attest.Policy { return v.TeeView.Policy }

func (v verifierView) HeadAge(h [32]byte) (time.Duration, bool) {
	return v.heads.Age([32]byte(v.ns), h, time.Now())
}

// admit checks an announce and, if it passes, publishes
// MemberJoinedViaTeeAttestation and the root keys for the replica.
func (f *fleetState) admit(ctx context.Context, ns governance.NamespaceID, a *fleet.Announce) {
	view, err := f.d.eng.TeeView(ns)
	if err != nil {
		return
	}
	if heads, _, err := f.d.eng.Heads(ns); err == nil {
		fleet.Observe(f.heads, [32]byte(ns), heads, time.Now())
	}
	adm, err := f.checker.Check(ctx, [32]byte(ns), a, verifierView{TeeView: view, ns: ns, heads: f.heads})
	if err != nil {
		reasons := fleet.Reasons(err)
		for _, r := range reasons {
			f.m.refused.WithLabelValues(string(r)).Inc()
		}
		lvl := slog.LevelWarn
		if len(reasons) == 1 && reasons[0] == fleet.ReasonAlreadyMember {
			lvl = slog.LevelDebug // re-announces in flight while admission spreads
		}
		f.d.log.Log(ctx, lvl, "TeeAttestationAnnounce refused", "namespace", ns.String()[:16], "member", fmt.Sprintf("%x", a.Member[:8]), "reasons", reasons, "err", err)
		return
	}
	// A short random delay lets a concurrent verifier's admission arrive
	// first, so racing verifiers rarely both publish (both would still
	// converge to one membership).
	select {
	case <-time.After(time.Duration(rand.IntN(20)) * time.Millisecond):
	case <-ctx.Done():
		return
	}
	if v, err := f.d.eng.TeeView(ns); err == nil && (v.IsMember(adm.Member) || v.QuoteUsed(adm.QuoteHash)) {
		return
	}
	f.d.authoring.Lock()
	wires, err := f.d.eng.AdmitTeeMember(ctx, ns, adm)
	if err == nil {
		f.d.publish(ctx, ns, wires)
	}
	f.d.authoring.Unlock()
	if err != nil {
		f.d.log.Warn("admitting fleet replica", "err", err)
		return
	}
	f.m.admitted.Inc()
	mode := "TDX"
	if adm.Mock {
		mode = "MOCK TDX"
	}
	f.d.log.Info("fleet replica admitted as ReadOnlyTee", "namespace", ns.String()[:16], "member", fmt.Sprintf("%x", adm.Member[:8]),
		"mrtd", adm.MRTD.String()[:16], "tcbStatus", adm.TcbStatus, "quote", mode)
}
