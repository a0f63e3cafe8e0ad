package node

import (
	"context"
	"time"
)

// redeliverLoop closes key gaps every heartbeat interval: a member added
// concurrently with a removal got the old group key from its adder but not
// the rotated one; governance.RedeliverKeys publishes this node's share of
// the missing KeyDeliveries (duplicates from racing nodes are harmless).
func (n *Node) redeliverLoop(ctx context.Context) {
	every := time.Duration(n.cfg.HeartbeatInterval)
	if every <= 0 {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nss, err := n.eng.Namespaces()
		if err != nil {
			continue
		}
		for _, ns := range nss {
			n.mu.Lock()
			wires, err := n.eng.RedeliverKeys(ctx, ns)
			if err == nil && len(wires) > 0 {
				n.publish(ctx, ns, wires)
				n.log.Info("re-delivered group keys to members that lacked them", "namespace", ns.String(), "ops", len(wires))
			}
			n.mu.Unlock()
		}
	}
}
