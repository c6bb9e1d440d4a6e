//! Hard bounds on every size a request can carry and every record or event the server
//! keeps. They are checked where wire types become core types and in the narrowing
//! rules, so no later layer ever sees an unbounded value.

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
/// Most members of one allow-set or deny-set, and most scopes one claim applies to.
pub const MAX_SET_ITEMS: usize = 64;
/// Longest string value (claim value, attribute, purpose, context value) in bytes.
pub const MAX_VALUE_LEN: usize = 512;
/// Most reachable targets on one token.
pub const MAX_TARGETS: usize = 64;
/// Most entries in `tctx` or `rctx`.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Most attributes in one action check.
pub const MAX_ATTRIBUTES: usize = 32;
/// Most values one attribute of an action may carry (a multi-valued attribute).
pub const MAX_ATTRIBUTE_VALUES: usize = 64;
/// Most tokens one transaction (call tree) may hold, so revoking, listing or walking a
/// whole tree is bounded work whatever the fan-out and depth settings.
pub const MAX_TOKENS_PER_TXN: usize = 4096;
/// The deepest chain any configuration may allow.
pub const MAX_DEPTH_CEILING: u32 = 64;
/// Largest gRPC message the server accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest grant (scopes, claims, targets) a token may carry, as measured by
/// [`Grant::size`](crate::Grant::size). A hop may add claims, so without it a chain could
/// grow its records without bound; a mint or downscope over it is refused before
/// anything is stored.
pub const MAX_GRANT_BYTES: usize = 32 * 1024;
/// Largest context (purpose, `tctx`, `rctx`) a token may carry, as measured by
/// [`TokenRecord::context_size`](crate::TokenRecord::context_size).
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;
/// Largest record's encoded size (protobuf or the store's encoding): the grant, the
/// context, a full actor chain of [`MAX_DEPTH_CEILING`] + 1 parties, and the fixed fields.
/// A `TokenInfo` answer is smaller, so every Mint, Downscope and Validate answer fits
/// well inside the server's 256 KiB response limit.
pub const MAX_RECORD_BYTES: usize = MAX_GRANT_BYTES
    + MAX_CONTEXT_BYTES
    + (MAX_DEPTH_CEILING as usize + 2) * (MAX_ID_LEN + 3 * SIZE_OVERHEAD)
    + 1024;
/// Largest encoded audit event: the fields anyone can make the server store are cut
/// (see [`Event`](crate::Event)), so each event costs bounded disk, memory and bandwidth.
pub const MAX_EVENT_BYTES: usize = 12 * 1024;
/// Longest human-readable detail (a refusal's or denial's message) stored in an event or
/// sent in a `grpc-message`, in bytes.
pub const MAX_DETAIL_BYTES: usize = 512;
/// Shortest idempotency key, in bytes: room for 96 random bits in base64 (a UUID is 36).
pub const MIN_IDEMPOTENCY_KEY_LEN: usize = 16;
/// Longest idempotency key, in bytes (printable ASCII).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// What the size measures charge per string (beyond its bytes), number or container: more
/// than any encoding Writ uses spends on a tag and a length, so a measured size bounds
/// the encoded one.
pub const SIZE_OVERHEAD: usize = 8;

/// Most attributes a consent request's action may carry.
pub const MAX_CONSENT_ATTRIBUTES: usize = 16;
