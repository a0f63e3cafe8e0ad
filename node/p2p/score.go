package p2p

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Gossipsub peer scoring (libp2p gossipsub v1.1 spec, "Peer Scoring").
//
// fleetbox scores only what every honest node judges the same way:
//
//   - P4, invalid message deliveries: a message the topic validator rejects
//     (it does not decode, its signature or nonce fails, its signer may not
//     author it, it belongs to another namespace, it is oversize). Rejection
//     depends only on the message and its causal past, and validators run
//     before forwarding, so an honest peer never forwards what another
//     honest peer rejects. Messages that are merely not useful (known ops,
//     announces nobody here may judge) are ignored, never rejected. The
//     exception is a signer that equivocates (two ops under one nonce):
//     peers that saw different halves first disagree, which costs the
//     honest forwarders a little score that decays.
//   - P7, behaviour penalties the router itself detects (re-grafting during
//     a prune backoff, advertising messages it then does not serve).
//
// Delivery-rate scores (P1-P3) and the IP-colocation factor are off: a
// namespace's traffic is sparse and bursty, and fleets often put several
// nodes behind one address, so those would punish honest peers.
//
// A peer's P4 contribution is invalidWeight·n² for n (decaying) rejected
// messages. With the thresholds below, 8 rejected messages stop
// gossip exchange with the peer, 11 stop publishing to it, and 16 graylist
// it: every RPC from it is dropped before validation, so a flood of bad
// messages costs little. The counter decays to nothing in about an hour;
// a graylisted peer is heard again once its count falls back under the
// threshold (for a peer just over it, seconds to a minute), and each
// further rejection pushes it back.
const (
	invalidWeight     = -10
	invalidDecayTime  = time.Hour
	gossipThreshold   = -500
	publishThreshold  = -1000
	graylistThreshold = -2500
)

func peerScoreParams() *pubsub.PeerScoreParams {
	return &pubsub.PeerScoreParams{
		SkipAtomicValidation:      true,
		Topics:                    map[string]*pubsub.TopicScoreParams{},
		AppSpecificScore:          func(peer.ID) float64 { return 0 },
		BehaviourPenaltyWeight:    -10,
		BehaviourPenaltyThreshold: 6,
		BehaviourPenaltyDecay:     pubsub.ScoreParameterDecay(10 * time.Minute),
		DecayInterval:             pubsub.DefaultDecayInterval,
		DecayToZero:               pubsub.DefaultDecayToZero,
		RetainScore:               time.Hour, // a graylisted peer cannot reconnect to a clean slate
	}
}

// topicScoreParams are set on every namespace topic when it is joined.
func topicScoreParams() *pubsub.TopicScoreParams {
	return &pubsub.TopicScoreParams{
		SkipAtomicValidation: true,
		TopicWeight:          1,
		// P1 is off (weight 0), but go-libp2p-pubsub divides by the quantum
		// whatever the weight, so it must not be zero.
		TimeInMeshQuantum:              time.Second,
		InvalidMessageDeliveriesWeight: invalidWeight,
		InvalidMessageDeliveriesDecay:  pubsub.ScoreParameterDecay(invalidDecayTime),
	}
}

func peerScoreThresholds() *pubsub.PeerScoreThresholds {
	return &pubsub.PeerScoreThresholds{
		GossipThreshold:   gossipThreshold,
		PublishThreshold:  publishThreshold,
		GraylistThreshold: graylistThreshold,
		// Peer exchange is off; no opportunistic grafting needed on small
		// meshes.
		AcceptPXThreshold:           0,
		OpportunisticGraftThreshold: 0,
	}
}

// inspectScores is called by gossipsub every scoreInspectPeriod with every
// scored peer's score; it keeps the graylisted-peers gauge current.
func (n *Network) inspectScores(scores map[peer.ID]float64) {
	gray := 0
	for _, s := range scores {
		if s < graylistThreshold {
			gray++
		}
	}
	n.metrics.graylisted.Set(float64(gray))
}

const scoreInspectPeriod = time.Second
