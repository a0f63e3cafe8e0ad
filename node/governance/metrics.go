package governance

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's Prometheus collectors.
type metrics struct {
	applied prometheus.Counter
	refused *prometheus.CounterVec
	pending *prometheus.GaugeVec
	replays prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetbox_governance_ops_applied_total",
			Help: "Namespace ops admitted to a DAG (received or authored).",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_governance_ops_refused_total",
			Help: "Namespace ops refused, by reason (malformed, oversize, signature, wrong_namespace, nonce, not_member, read_only, unauthorized, invalid, parent_refused, pending_full, pending_quota, pending_expired).",
		}, []string{"reason"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fleetbox_governance_ops_pending",
			Help: "Ops waiting for missing parents, per namespace.",
		}, []string{"namespace"}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetbox_governance_rebuilds_total",
			Help: "Re-checks of provisionally admitted ops after group keys arrived.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.applied, m.refused, m.pending, m.replays} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering governance metrics: %w", err)
		}
	}
	return m, nil
}
