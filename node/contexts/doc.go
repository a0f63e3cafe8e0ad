// Package contexts runs contexts: instances of WASM applications
// (node/contexts/wasmhost) inside a group of a namespace, whose key-value
// state every member and ReadOnlyTee replica of the group holds.
//
// # How state changes
//
// A mutating call executes once, on the caller's node, against that node's
// current state of the context. Its outcome (the keys it set or removed,
// sorted) travels with the method and input in a ContextCall op: a GroupOp
// of the namespace's governance DAG (node/governance, contexts.go), signed
// by the caller's namespace identity and sealed with the group key like
// every group op. Creation (with the init method's writes), application
// upgrades and deletion are group ops too. Peers do not re-execute calls:
// they apply the recorded writes.
//
// # The conflict rule: recorded writes, in the governance total order
//
// The state of a context is the result of applying the write sets of its
// effective context ops in the namespace's total order (height in the DAG,
// then op id; governance/doc.go). Nodes that hold the same set of ops hold
// the same ordered list of write sets, so they hold byte-identical state
// and the same state root hash, whatever order the ops arrived in. Which
// ops take effect is governance's decision in that same order: a call whose
// author was removed by a concurrent op that sorts first, or whose context
// was deleted first, has no effect anywhere.
//
// Consequences, and the price:
//
//   - Concurrent calls that write the same key: the one that sorts last
//     wins (last-writer-wins per key, in the total order). A concurrent
//     read-modify-write (two increments of one counter) can lose an
//     update; write disjoint keys (per member, per item) where that
//     matters.
//   - The result a caller gets is computed on its own state at the time
//     (its causal view); a concurrent op that sorts before its call does
//     not re-run it.
//   - The application's own checks run on the caller's node only. Every
//     peer checks the op's signature, the caller's role and the shape and
//     limits of the writes, but a member running a modified node could
//     record writes its application would not make. Membership is the
//     trust boundary, as for governance ops.
//   - In return: applying an op never runs WASM, so state never depends on
//     the WASM engine, its version, a call's time limit or the speed of a
//     node, and a replica follows state without loading the application
//     (it needs it only to answer queries); catching up costs a map update
//     per write.
//
// Cost: an op that sorts after everything applied (live calls, a sync in
// order) costs its writes. An op that sorts before applied ones undoes
// them back to its place (each applied op keeps an undo record of the
// values it overwrote, for the last UndoWindow ops of a context) and
// re-applies them after it; a change reaching further back rebuilds the
// context from its whole history. Both grow with how far back the
// concurrency reaches, not with the length of the history.
//
// # Calls and queries
//
// A call's result depends only on the context state, the call (method,
// input) and its caller: every call starts from a fresh module state, and
// the module sees no clock, randomness or I/O that is not fixed per call
// (wasmhost). A query runs the same way against the node's current state
// and may not write; any member may query, including ReadOnly and
// ReadOnlyTee replicas, which refuse mutating calls locally (and whose
// forged ops every peer refuses).
//
// # State root
//
// The state root hash is SHA-256 over "fleetbox/v1/context-state", the
// context id, the application id, and every entry in key order as
// len(key) || key || len(value) || value (lengths as big-endian u32).
// `fleetbox ctl context show` prints it; tests compare it across nodes.
//
// # Storage
//
// The State column holds, per context, a meta row (application, deleted,
// the number of ops applied and a hash chain over their ids, which tells
// after a restart whether the stored state matches the DAG) and one row
// per key. Row keys are cleartext in the store, so a key's row is named by
// SHA-256 of the context id and the key, never the key itself; the key
// and value live in the sealed value. The Application column holds
// application bytes by id. The whole state of every context is also held
// in memory.
package contexts
