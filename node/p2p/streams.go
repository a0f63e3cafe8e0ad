package p2p

import (
	"context"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// NewStream opens a stream of protocol proto to a connected peer (the
// protocols other packages serve through Config.StreamHandlers, such as
// node/contexts' application fetch).
func (n *Network) NewStream(ctx context.Context, p peer.ID, proto protocol.ID) (network.Stream, error) {
	h := n.host()
	if h == nil {
		return nil, ErrNotRunning
	}
	return h.NewStream(ctx, p, proto)
}

// ConnectedPeers lists the peers this node has a connection to.
func (n *Network) ConnectedPeers() []peer.ID {
	h := n.host()
	if h == nil {
		return nil
	}
	return h.Network().Peers()
}
