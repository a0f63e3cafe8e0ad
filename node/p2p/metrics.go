package p2p

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	gossip        *prometheus.CounterVec
	published     *prometheus.CounterVec
	refused       *prometheus.CounterVec
	syncs         *prometheus.CounterVec
	syncServed    *prometheus.CounterVec
	syncSeconds   prometheus.Histogram
	syncOpsServed prometheus.Counter
	opsSynced     prometheus.Counter
	opsGossiped   prometheus.Counter
	peers         prometheus.Gauge
	namespaces    prometheus.Gauge
	graylisted    prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		gossip: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_p2p_gossip_messages_total",
			Help: "Gossip messages validated, by kind and result (accept, reject, ignore).",
		}, []string{"kind", "result"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_p2p_published_total",
			Help: "Gossip messages published by this node, by kind.",
		}, []string{"kind"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_p2p_ops_refused_total",
			Help: "Ops from the network refused (decoding, signature, nonce or authorization), by source (gossip, sync).",
		}, []string{"source"}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_p2p_syncs_total",
			Help: "Sync fetches this node ran, by outcome.",
		}, []string{"outcome"}),
		syncServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleetbox_p2p_syncs_served_total",
			Help: "Sync requests this node answered, by outcome.",
		}, []string{"outcome"}),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fleetbox_p2p_sync_duration_seconds",
			Help:    "Duration of sync fetches.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		syncOpsServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetbox_p2p_sync_ops_served_total",
			Help: "Ops sent to peers over the sync protocol.",
		}),
		opsSynced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetbox_p2p_ops_synced_total",
			Help: "Ops applied after a sync fetch.",
		}),
		opsGossiped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleetbox_p2p_ops_gossiped_total",
			Help: "Ops applied from gossip.",
		}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetbox_p2p_peers",
			Help: "Connected peers.",
		}),
		namespaces: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetbox_p2p_namespaces",
			Help: "Namespace topics joined.",
		}),
		graylisted: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleetbox_p2p_graylisted_peers",
			Help: "Peers whose gossip score fell below the graylist threshold (their messages are dropped unread); see score.go.",
		}),
	}
}

func (m *metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.gossip, m.published, m.refused, m.syncs, m.syncServed,
		m.syncSeconds, m.syncOpsServed, m.opsSynced, m.opsGossiped, m.peers, m.namespaces, m.graylisted} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}
