// Package governance is namespace governance: one causal DAG of signed ops
// per namespace, replayed into groups, members, roles, capabilities, group
// keys and the TeeAdmissionPolicy. It is pure and network-free; node/p2p
// carries its wire bytes and the daemon calls Engine.
//
// # Ops on the wire
//
// A SignedNamespaceOp is canonical CBOR (RFC 8949 core deterministic
// encoding) {1: body, 2: Ed25519 signature}. The body holds the namespace
// id, the parents (the signer's heads, sorted), the signer's namespace
// identity key, a per-signer nonce, and either a cleartext RootOp
// (NamespaceCreated, GroupCreated, KeyDelivery, TeeAdmissionPolicySet) or a
// SealedGroupOp: a GroupOp (MemberAdded, MemberRemoved, MemberRoleSet,
// MemberCapabilitiesSet) encrypted with XChaCha20-Poly1305 under a group
// key, AAD = the op header. The signature covers
// "fleetbox/v1/SignedNamespaceOp\x00" || body and the op id is SHA-256 of
// those same bytes. Decoding is strict (no duplicate keys, indefinite
// lengths, tags or unknown fields; bounded sizes) and bytes that are not the
// canonical encoding of what they decode to are refused, so one op has one
// encoding and one id.
//
// # Admission: which ops enter the DAG
//
// An op enters the DAG when (1) it passes the stateless checks (Validate:
// size, decoding, signature, namespace), (2) all its parents are in the DAG
// (otherwise it waits in a bounded pending queue, and its missing parents
// are reported for fetching), and (3) it is authorized in its causal state:
// the state obtained by replaying exactly the op's ancestors. The causal
// state is what the signer saw when it signed, and it depends on nothing
// else, so every node decides admission of an op the same way whatever else
// it holds or in which order ops arrived. That is what makes the op set —
// and therefore the heads — identical on nodes that have seen the same ops:
// a forged, replayed-nonce, non-member or read-only op is refused by all of
// them, and a refused op's descendants are refused with it.
//
// A node that lacks a group key (a joiner before its KeyDelivery, a removed
// member) cannot read sealed ops, so its causal state may be incomplete. It
// then checks only what it can (signature, nonce), keeps the op as a
// skeleton marked provisional so the DAG stays whole, and re-checks every
// provisional op when keys arrive, dropping any that fail (with their
// descendants). A node that holds the keys never needs that step.
//
// # Convergence: the state is a function of the op set
//
// The namespace state is the replay of all admitted ops in one total order:
// by height (the length of the longest path from the genesis op, so every
// parent sorts before its children), then by op id, which no single node
// controls. The order of any op's ancestors is the restriction of the
// order of the whole DAG, so the causal state and the namespace state are
// replays of the same sequence, one filtered. During the replay each op is
// authorized again, against the state built so far; an op that
// fails there (say a role change for a member a concurrent op already
// removed, or the second of two admins removing each other after the first
// removal took away its author's role) stays in the DAG with no effect.
// Every admitted op spends its nonce, with effect or without, and an op
// whose nonce is not above its signer's last one (an equivocating signer's
// second op) has no effect either.
//
// Why this rule: it needs no coordination and no clocks, it is plainly
// deterministic (the same set sorts the same way everywhere), it respects
// causality (nobody can act on a membership they have not seen), and for
// the conflicts that matter it is safe: two admins removing each other
// leave exactly one of them (the one whose op sorts first), never none; an
// Admin's removal racing a role change ends with the member removed in
// either order (removed first, the role change finds no member; role change
// first, the removal then takes the row away). The last root Admin can
// never be removed or demoted. The price is that a concurrent loser's op is
// silently inert; OpLog shows each op's effect so an operator can see it.
//
// Cost: an op whose parents are exactly the current heads (live gossip, and
// the sync of a history in order) is authorized against the current state
// and extends the replay by one apply. Other ops find their causal state by
// scanning the order backwards only as far as the last state snapshot
// (taken every 128 ops) whose whole prefix lies among the op's ancestors,
// and an op that sorts before already-applied ones replays from the
// snapshot before its position. Both costs grow with how far back the
// concurrency reaches, not with the size of the DAG.
//
// # Keys
//
// Each group has a key ring: the key made by NamespaceCreated or
// GroupCreated, plus a new one per MemberRemoved in it or in a group above
// it (NewKeyID, SubgroupKeys): a member removed from a group could read its
// subgroups through inheritance, so their keys rotate too. A key is
// named by SHA-256("fleetbox/v1/group-key-id" || key), which commits each
// sealed op to exactly one key. KeyDelivery wraps keys for one recipient
// with X25519 ECDH between the sender's and the recipient's namespace
// agreement keys, HKDF-SHA256 ("fleetbox/v1/key-delivery", both identities)
// and XChaCha20-Poly1305; the op signature signs the envelope. Authoring
// delivers: the subgroup key to the members a new subgroup inherits; every
// held key of a group and its subgroups to a new member; the rotated key to
// every remaining member after a removal (never the removed one, who keeps
// only the keys of ops sealed before its removal).
//
// # Extension points
//
// MemberJoinedViaTeeAttestation (next issue) is a RootOp variant (CBOR key 5
// is reserved) with a case in state.applyRoot; it is the only op that may
// grant RoleReadOnlyTee. Context ops are GroupOp variants from CBOR key 16
// (contexts.go: ContextCreated, ContextApplicationUpgraded, ContextDeleted,
// ContextCall) applied by state.applyContext; ContextChanges hands the
// effective ones, in the total order, to node/contexts. Each new variant
// also needs a check() and kind() case in ops.go.
//
// # Persistence
//
// Ops, group keys, namespace identities and the namespace list live in
// node/store (OpLog, Keys, Identity and Group columns; see engine.go for the
// row keys). The state is not stored: New replays it from the ops.
//
// # Limits and known gaps
//
//   - A member added concurrently with a removal gets the group key from its
//     adder but not the rotated key from the remover. KeyGaps finds such
//     members from the DAG and RedeliverKeys (the key's creator, or any
//     writer if the creator is gone) delivers the key; the daemon calls it
//     periodically, it is not automatic inside Apply.
//   - The pending queue refuses new ops when full rather than evicting old
//     ones. Whether an op's signer may author it depends on its parents, so
//     anyone can sign ops naming unknown parents and fill the queue until
//     they are refused or the node restarts. Gossip peer scoring (node/p2p)
//     does not catch this: such ops are not invalid until their parents
//     are known.
//   - Decoding refuses unknown fields and op variants, so every node must
//     run a version that knows every op kind in use (no mixed versions).
//   - The pending queue is in memory: pending ops are fetched again after a
//     restart.
package governance
