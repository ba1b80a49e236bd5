//! What ingest and auth need from a store, as the traits a store backend implements:
//! [`IngestStore`] (message records with their outbox events, checkpoints, post-action
//! records, durability) for a collection cycle, [`TokenStore`] (sealed OAuth2 grants) for the token service. The
//! embedded sled [`Store`] implements both; it is the only backend today.
//!
//! Only these operations are behind the traits. Everything else stays on the sled
//! [`Store`] itself and is sled-only for now: reading messages back (`meta`, `raw`,
//! `raw_reader`, `iter_meta`, `iter_meta_from`, `counts`: the API, `messages
//! list/show/export`), the rest of the outbox (state change events, sink records,
//! pruning), listing token records and
//! rotating the at-rest key (`token_keys`, `rotate_key`), and the settings a reload changes
//! (`set_compression`, `set_min_free_bytes`).
//!
//! Why two traits and not one per concern: one commit writes a message, its location, its
//! folder checkpoint step, its post-action record and its outbox event together (that is
//! what exactly-once storing and announcing rest on), so a backend provides messages,
//! checkpoints, post-actions and the outbox as one unit.
//! Tokens are independent of all that, and the token service needs nothing else.
//!
//! Ingest is generic over [`IngestStore`] (static dispatch: the commit path is the same
//! machine code as a direct call, with no allocation of its own), and the two operations
//! that run on the parse-and-store workers are plain blocking calls. The token service holds
//! an `Arc<dyn TokenStore>`: a token is read or written a few times an hour per source, so a
//! boxed future per call costs nothing that shows, and the service, the TokenManager actor,
//! the API and the CLI stay free of a type parameter.

use std::collections::HashSet;

use futures_util::future::BoxFuture;

use super::{
    Checkpoint, Event, GrantBinding, NewMessage, Store, StoreError, StoreOutcome, StoredToken,
};

/// What one source's collection cycle (`crate::ingest`) needs from the store.
///
/// # Guarantees an implementation keeps
///
/// **Exactly once per location.** A location (IMAP: source, folder, UIDVALIDITY, UID;
/// POP3: source, UIDL) is stored at most once. Committed again (a later session, a retried
/// batch, or twice within one batch), it comes back [`StoreOutcome::AlreadyStored`] with the
/// id it was stored under, and nothing is written for it.
///
/// **Ids in commit order.** Each newly stored message gets an id larger than every id given
/// before it (across restarts too; ids are never reused), given when its commit runs, not
/// when it is prepared. A reader paging by id never sees a larger id before a smaller one
/// is visible.
///
/// **One commit is atomic.** Everything [`IngestStore::commit_batch`] writes for a batch
/// (messages, their locations, checkpoint steps, post-action records, events) is there
/// after a crash, or none of it is.
///
/// **One event per newly stored message.** Each newly stored message gets exactly one
/// `message.stored` event ([`Event::message`] its id), in the same commit, with a seq
/// in commit order: larger than every seq given before (across restarts and pruning
/// too; never reused), and within a batch in the batch's order. Re-matched or already
/// stored messages get none: old mail is never announced again as new. Events are seen
/// by readers ([`IngestStore::events_after`]) only once durable, so a crash never takes
/// back an event someone has seen.
///
/// **Checkpoints never pass an unstored message.** A message committed with its flag set
/// moves its folder's checkpoint in the same commit, by [`Checkpoint::advanced`]: further
/// under the same UIDVALIDITY (never back), replaced under another. Ingest sets the flag
/// only when every lower UID of the batch is handled, and commits a session's batches one
/// at a time in the order it prepared them.
///
/// **Re-matching by content.** A message with [`NewMessage::rematch`] is first mapped to a
/// stored copy of the same bytes, of the same source and folder, stored under another
/// UIDVALIDITY and not yet answering for a UID under the current one. Each copy answers for
/// one UID: two identical old copies answer for two new UIDs, a third is stored.
///
/// **Post-actions only after their message is durable.** A message committed with
/// [`NewMessage::post_action`] (IMAP only) gets a post-action record in the same commit, so
/// a record never exists for a message that is not stored. Ingest calls
/// [`IngestStore::flush`] before it reads the records and changes the server, and records
/// them done ([`IngestStore::actions_done`]) only after the server said OK.
///
/// **What a crash leaves.** Before a commit is durable: nothing of it; the messages are
/// above the checkpoint and are fetched again. After the commit, before the server was
/// changed: the post-action records are still pending and the next session does them.
/// After the server was changed, before `actions_done` is durable: the next session does
/// them again, which is harmless (seen, delete and move of a UID are idempotent on the
/// server). POP3 deletes only UIDLs stored and flushed, so a crash never loses a message.
///
/// The operations that answer at once (the sled store's) or after a round trip (a
/// networked backend's) are async; the two that run on the parse-and-store worker threads
/// ([`IngestStore::prepare_batch`], [`IngestStore::commit_batch`]) are blocking calls made
/// outside any async runtime.
pub trait IngestStore: Send + Sync + 'static {
    /// A message made ready outside its commit: checksum, keys, serialized and compressed
    /// values, whatever the backend can compute before the commit decides anything.
    type Prepared: Send + 'static;

    // --- Message records ---

    /// Prepares messages for [`IngestStore::commit_batch`], each with whether its commit
    /// moves the folder checkpoint. Pure computation: it decides nothing (no ids, no
    /// lookups), so it may run on one worker while an earlier batch commits on another.
    fn prepare_batch(
        &self,
        msgs: Vec<(NewMessage, bool)>,
    ) -> Result<Vec<Self::Prepared>, StoreError>;

    /// Commits prepared messages as one atomic unit, in order: one outcome per message.
    /// Ingest commits a session's batches one at a time, in the order they were prepared.
    fn commit_batch(&self, prepared: &[Self::Prepared]) -> Result<Vec<StoreOutcome>, StoreError>;

    /// The POP3 UIDLs stored for `source`.
    fn stored_uidls(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// When the message stored for a POP3 UIDL was stored (RFC 3339), for
    /// `delete_after_days`; `None` when it is not stored.
    fn pop3_stored_at(
        &self,
        source: &str,
        uidl: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    // --- Checkpoints ---

    /// The folder's checkpoint; `None` for a folder never collected.
    fn checkpoint(
        &self,
        source: &str,
        folder: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;

    /// Starts a folder over under a new UIDVALIDITY: `last_uid` 0, and the UIDs below
    /// `uidnext` (every UID without one) re-matched by content
    /// ([`Checkpoint::rematch_below`]). Returns the new checkpoint.
    fn reset_checkpoint(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uidnext: Option<u32>,
    ) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send;

    /// Moves the checkpoint past `uid` without storing anything (too large, or expunged
    /// before it could be fetched), by [`Checkpoint::advanced`]: never back.
    fn skip(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    // --- Post-action records ---

    /// The UIDs of `folder` under `uidvalidity` whose post-action is still to be done, in
    /// no particular order. Records under another UIDVALIDITY are dropped: their UIDs name
    /// nothing on the server now.
    fn pending_actions(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> impl Future<Output = Result<Vec<u32>, StoreError>> + Send;

    /// Records that the post-action of these UIDs is done (after the server said OK).
    fn actions_done(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    // --- The outbox ---

    /// Up to `limit` durable events with a seq above `after`, in seq order (what the
    /// delivery engine and `/api/events` read).
    fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    // --- Room and durability ---

    /// Fails with [`StoreError::DiskFull`] unless `incoming` more bytes of mail fit. Asked
    /// before the mail is fetched, so a full store stops collection instead of failing
    /// half-way through a commit.
    fn ensure_room(&self, incoming: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Returns once everything written before the call is durable (survives a crash or a
    /// power cut). A backend whose writes are durable when acknowledged returns at once.
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Where the token service keeps each credential's OAuth2 state ([`StoredToken`]).
///
/// # Guarantees an implementation keeps
/// - Records are sealed at rest: refresh and access tokens never reach the disk (or the
///   network, for a remote backend) in the clear.
/// - Records are bound to their [`GrantBinding`] (source, issuer or token endpoint, client
///   id): a record read for another binding never yields its tokens.
/// - [`TokenStore::put_token`] returns only once the record is durable: with refresh-token
///   rotation the old token may already be spent, so the new one must survive a crash
///   before the new access token is used.
/// - The last write wins. Within a node the token service holds each credential's record
///   across its read, provider request and write (a refresh, an import, dropping a refused
///   access token), so those never interleave; a backend shared by several nodes must also
///   keep two nodes from doing so for one credential at once (which the single-node sled
///   store never has to).
///
/// Nothing removes a record today: a refused grant is marked
/// ([`StoredToken::needs_reauth`]), not deleted.
pub trait TokenStore: Send + Sync {
    /// The record stored for `binding.source`, opened. A record sealed for another binding
    /// comes back without its tokens, marked as needing re-authorization.
    fn token<'a>(
        &'a self,
        binding: &'a GrantBinding,
    ) -> BoxFuture<'a, Result<Option<StoredToken>, StoreError>>;

    /// Seals `token` with `binding` and writes it for `binding.source`, durably (see the
    /// guarantees above).
    fn put_token<'a>(
        &'a self,
        binding: &'a GrantBinding,
        token: &'a StoredToken,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The sled store: each operation is the inherent method of the same name (which the API,
/// the CLI and the tests also call directly). Its reads and writes are local and short, so
/// the async ones run when first polled.
impl IngestStore for Store {
    type Prepared = super::Prepared;

    fn prepare_batch(
        &self,
        msgs: Vec<(NewMessage, bool)>,
    ) -> Result<Vec<Self::Prepared>, StoreError> {
        Store::prepare_batch(self, msgs)
    }

    fn commit_batch(&self, prepared: &[Self::Prepared]) -> Result<Vec<StoreOutcome>, StoreError> {
        Store::commit_batch(self, prepared)
    }

    async fn stored_uidls(&self, source: &str) -> Result<HashSet<String>, StoreError> {
        Store::stored_uidls(self, source)
    }

    async fn pop3_stored_at(&self, source: &str, uidl: &str) -> Result<Option<String>, StoreError> {
        Store::pop3_stored_at(self, source, uidl)
    }

    async fn checkpoint(
        &self,
        source: &str,
        folder: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        Store::checkpoint(self, source, folder)
    }

    async fn reset_checkpoint(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uidnext: Option<u32>,
    ) -> Result<Checkpoint, StoreError> {
        Store::reset_checkpoint(self, source, folder, uidvalidity, uidnext)
    }

    async fn skip(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<(), StoreError> {
        Store::skip(self, source, folder, uidvalidity, uid)
    }

    async fn pending_actions(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<u32>, StoreError> {
        Store::pending_actions(self, source, folder, uidvalidity)
    }

    async fn actions_done(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        Store::actions_done(self, source, folder, uidvalidity, uids)
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        Store::events_after(self, after, limit)
    }

    async fn ensure_room(&self, incoming: u64) -> Result<(), StoreError> {
        Store::ensure_room(self, incoming)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Store::flush(self).await
    }
}

impl TokenStore for Store {
    fn token<'a>(
        &'a self,
        binding: &'a GrantBinding,
    ) -> BoxFuture<'a, Result<Option<StoredToken>, StoreError>> {
        Box::pin(async move { Store::token(self, binding) })
    }

    fn put_token<'a>(
        &'a self,
        binding: &'a GrantBinding,
        token: &'a StoredToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::put_token(self, binding, token))
    }
}
