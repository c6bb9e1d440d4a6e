//! Hard bounds on every size a request can carry. They are checked once, where wire
//! types become core types, so no later layer ever sees an unbounded value.

/// Longest id of a party (user, agent, workload, service) in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Most scopes on one token.
pub const MAX_SCOPES: usize = 64;
/// Longest scope string in bytes.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most claims on one token.
pub const MAX_CLAIMS: usize = 32;
/// Longest claim or attribute name in bytes.
pub const MAX_CLAIM_NAME_LEN: usize = 64;
/// Most members of one allow-set or deny-set.
pub const MAX_SET_ITEMS: usize = 64;
/// Longest string value (claim value, attribute, purpose, context value) in bytes.
pub const MAX_VALUE_LEN: usize = 512;
/// Most reachable targets on one token.
pub const MAX_TARGETS: usize = 64;
/// Most entries in `tctx` or `rctx`.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Most attributes in one action check.
pub const MAX_ATTRIBUTES: usize = 32;
/// Most tokens one transaction (call tree) may hold, so revoking, listing or walking a
/// whole tree is bounded work whatever the fan-out and depth settings.
pub const MAX_TOKENS_PER_TXN: usize = 4096;
/// The deepest chain any configuration may allow.
pub const MAX_DEPTH_CEILING: u32 = 64;
/// Largest gRPC message the server accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
