package contexts

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	calls    *prometheus.CounterVec   // kind: call, query, create
	failures *prometheus.CounterVec   // reason
	latency  *prometheus.HistogramVec // kind
	applied  prometheus.Counter
	reorders prometheus.Counter
	rebuilds prometheus.Counter
	fetched  *prometheus.CounterVec // result
}

func newMetrics(reg prometheus.Registerer, e *Engine) (*metrics, error) {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetbox_context_calls_total",
			Help: "Context calls this node ran, by kind (call, query, create), successful or not."}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetbox_context_call_failures_total",
			Help: "Context calls that failed, by reason (time_limit, memory_limit, trap, refused, read_only, ...)."}, []string{"reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fleetbox_context_call_duration_seconds",
			Help:    "Latency of context calls on this node (a call includes recording its op), by kind.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"kind"}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetbox_context_ops_applied_total",
			Help: "Context ops applied to context state (re-applications after a reordering included)."}),
		reorders: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetbox_context_reorders_total",
			Help: "Times applied context ops were undone because an op sorting before them arrived."}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleetbox_context_rebuilds_total",
			Help: "Contexts rebuilt from their whole history (a change beyond the undo window)."}),
		fetched: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleetbox_app_fetches_total",
			Help: "Application fetches from peers, by result."}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	gauge := func(name, help string, pick func(bytes, keys, n int) int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			return float64(pick(e.stateTotals()))
		})
	}
	for _, c := range []prometheus.Collector{m.calls, m.failures, m.latency, m.applied, m.reorders, m.rebuilds, m.fetched,
		gauge("fleetbox_context_state_bytes", "Bytes of keys and values in the state of this node's live contexts.", func(b, _, _ int) int { return b }),
		gauge("fleetbox_context_state_keys", "Keys in the state of this node's live contexts.", func(_, k, _ int) int { return k }),
		gauge("fleetbox_contexts", "Live contexts on this node.", func(_, _, n int) int { return n }),
	} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}
