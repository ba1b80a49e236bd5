//! Commands of the authenticated and selected states: SELECT, LIST, UID FETCH, the
//! post-ingest actions, IDLE and LOGOUT.

use super::*;

/// One tagged command whose untagged responses are gathered by `G` until its completion.
pub struct Simple<S, G> {
    tag: String,
    during: &'static str,
    gather: G,
    _state: std::marker::PhantomData<fn(S) -> S>,
}

/// What a [`Simple`] command gathers and what it leads to.
pub trait Gather<S>: Sized {
    type To;
    fn response(&mut self, _response: ServerResponse) {}
    /// A tagged OK arrived: the outcome, or why the answer cannot be used.
    fn ok(&mut self) -> Result<(), ImapError> {
        Ok(())
    }
    fn complete(self, from: S) -> Self::To;
}

impl<S: State, G: Gather<S>> Plan for Simple<S, G> {
    type From = S;
    type To = G::To;
    type Item = Infallible;

    fn during(&self) -> &'static str {
        self.during
    }

    fn on_response(
        &mut self,
        _core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        let Some((completion, line)) = tagged(&response, &self.tag) else {
            self.gather.response(response);
            return Ok(Next::Read);
        };
        if completion != Completion::Ok {
            return Ok(Next::Refused(refused(completion, line.to_string())));
        }
        Ok(match self.gather.ok() {
            Ok(()) => Next::Done,
            Err(e) => Next::Refused(e),
        })
    }

    fn complete(self, from: S) -> G::To {
        self.gather.complete(from)
    }
}

fn simple<S: State, G: Gather<S>>(
    mut state: S,
    during: &'static str,
    gather: G,
    command: impl FnOnce(&mut Commands) -> crate::protocol::imap::Command,
) -> Run<Simple<S, G>> {
    let cmd = command(&mut state.core_mut().cmds);
    let plan = Simple {
        tag: cmd.tag,
        during,
        gather,
        _state: std::marker::PhantomData,
    };
    Run::new(state, plan, Ok(Next::Send(cmd.bytes)))
}

/// SELECT/EXAMINE: the folder's UIDVALIDITY, UIDNEXT and EXISTS.
pub struct SelectGather {
    folder: String,
    uidvalidity: Option<u32>,
    uidnext: Option<u32>,
    exists: u32,
}

impl Gather<Authenticated> for SelectGather {
    type To = Selected;

    fn response(&mut self, response: ServerResponse) {
        match response {
            ServerResponse::Exists(n) => self.exists = n,
            ServerResponse::UntaggedStatus {
                code: Some(ResponseCode::UidValidity(v)),
                ..
            } => self.uidvalidity = Some(v),
            ServerResponse::UntaggedStatus {
                code: Some(ResponseCode::UidNext(v)),
                ..
            } => self.uidnext = Some(v),
            _ => {}
        }
    }

    fn ok(&mut self) -> Result<(), ImapError> {
        match self.uidvalidity {
            Some(_) => Ok(()),
            None => Err(ProtocolError::Malformed(format!(
                "SELECT {} gave no UIDVALIDITY",
                self.folder
            ))
            .into()),
        }
    }

    fn complete(self, from: Authenticated) -> Selected {
        Selected {
            core: from.core,
            mailbox: MailboxStatus {
                uidvalidity: self.uidvalidity.unwrap_or_default(),
                uidnext: self.uidnext,
                exists: self.exists,
            },
        }
    }
}

/// `LIST "" pattern`: the selectable folders matching it, in the server's order.
pub struct ListGather {
    pattern: String,
    names: Vec<String>,
}

impl<S> Gather<S> for ListGather {
    type To = (S, Vec<String>);

    fn response(&mut self, response: ServerResponse) {
        if let ServerResponse::List {
            name,
            delimiter,
            noselect: false,
        } = response
            && (pattern_matches(&self.pattern, &name, delimiter)
                || (self.pattern.eq_ignore_ascii_case("INBOX")
                    && name.eq_ignore_ascii_case("INBOX")))
        {
            self.names.push(name);
        }
    }

    fn complete(self, from: S) -> (S, Vec<String>) {
        (from, self.names)
    }
}

/// `UID FETCH from:to (UID RFC822.SIZE)`: UIDs in range with sizes, ascending.
pub struct UidsGather {
    from: u32,
    upper: u32,
    found: Vec<(u32, u32)>,
}

impl Gather<Selected> for UidsGather {
    type To = (Selected, Vec<(u32, u32)>);

    fn response(&mut self, response: ServerResponse) {
        // `UID FETCH n:*` always returns the highest message, even below n.
        if let ServerResponse::Fetch(f) = response
            && let Some(uid) = f.uid
            && (self.from..=self.upper).contains(&uid)
        {
            self.found.push((uid, f.rfc822_size.unwrap_or(0)));
        }
    }

    fn complete(mut self, from: Selected) -> (Selected, Vec<(u32, u32)>) {
        self.found.sort_unstable();
        self.found.dedup_by_key(|(u, _)| *u);
        (from, self.found)
    }
}

/// `UID FETCH * (UID BODY.PEEK[HEADER])`: the newest message's header.
#[derive(Default)]
pub struct HeaderGather {
    header: Option<Vec<u8>>,
}

impl Gather<Selected> for HeaderGather {
    type To = (Selected, Option<Vec<u8>>);

    fn response(&mut self, response: ServerResponse) {
        if let ServerResponse::Fetch(f) = response
            && self.header.is_none()
        {
            self.header = f.header;
        }
    }

    fn complete(self, from: Selected) -> (Selected, Option<Vec<u8>>) {
        (from, self.header)
    }
}

/// LOGOUT from a state `S`: the state is given up whatever the answer.
pub struct Logout<S> {
    tag: String,
    _state: std::marker::PhantomData<fn(S)>,
}

impl<S: State> Plan for Logout<S> {
    type From = S;
    type To = ();
    type Item = Infallible;
    const EXPECTS_BYE: bool = true;

    fn during(&self) -> &'static str {
        "LOGOUT"
    }

    fn on_response(
        &mut self,
        _core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        // The BYE or the tagged OK, whichever comes first: nothing is waited for after it.
        match response {
            ServerResponse::Bye { .. } => Ok(Next::Done),
            r if tagged(&r, &self.tag).is_some() => Ok(Next::Done),
            _ => Ok(Next::Read),
        }
    }

    fn complete(self, _from: S) {}
}

/// LOGOUT from any state.
pub fn logout<S: State>(mut state: S) -> Run<Logout<S>> {
    let cmd = state.core_mut().cmds.logout();
    let plan = Logout {
        tag: cmd.tag,
        _state: std::marker::PhantomData,
    };
    Run::new(state, plan, Ok(Next::Send(cmd.bytes)))
}

/// LIST from the authenticated or the selected state.
pub fn list<S: State>(state: S, pattern: &str) -> Run<Simple<S, ListGather>> {
    let gather = ListGather {
        pattern: pattern.to_string(),
        names: Vec::new(),
    };
    simple(state, "LIST", gather, |c| c.list(pattern))
}

impl Authenticated {
    /// SELECT (or EXAMINE when `read_only`). Refused, the state stays authenticated.
    pub fn select(self, folder: &str, read_only: bool) -> Run<Simple<Authenticated, SelectGather>> {
        let gather = SelectGather {
            folder: folder.to_string(),
            uidvalidity: None,
            uidnext: None,
            exists: 0,
        };
        simple(self, "SELECT", gather, |c| c.select(folder, read_only))
    }
}

impl Selected {
    /// A selected state without a SELECT, for tests about what follows one.
    #[cfg(test)]
    pub(crate) fn for_test(state: NotAuthenticated, exists: u32) -> Selected {
        Selected {
            core: state.core,
            mailbox: MailboxStatus {
                uidvalidity: 1,
                uidnext: None,
                exists,
            },
        }
    }

    /// What SELECT told us about the folder.
    pub fn mailbox(&self) -> MailboxStatus {
        self.mailbox
    }

    /// Leaves the folder (no command: the next SELECT replaces it, or a failed one closes
    /// it, RFC 3501 §6.3.1).
    pub fn into_authenticated(self) -> Authenticated {
        Authenticated { core: self.core }
    }

    /// SELECT another folder; refused, the state is authenticated (no folder selected).
    pub fn select(self, folder: &str, read_only: bool) -> Run<Simple<Authenticated, SelectGather>> {
        self.into_authenticated().select(folder, read_only)
    }

    /// UIDs in `from..=to` (`to = None`: to the end) with their RFC822.SIZE, ascending.
    pub fn uids_between(self, from: u32, to: Option<u32>) -> Run<Simple<Selected, UidsGather>> {
        let gather = UidsGather {
            from,
            upper: to.unwrap_or(u32::MAX),
            found: Vec::new(),
        };
        simple(self, "UID FETCH", gather, |c| {
            c.uid_fetch_sizes(from.max(1), to)
        })
    }

    /// The header of the message with the highest UID, or `None` when the folder is empty
    /// (then nothing is sent).
    pub fn last_header(self) -> Run<Simple<Selected, HeaderGather>> {
        if self.mailbox.exists == 0 {
            let plan = Simple {
                tag: String::new(),
                during: "UID FETCH",
                gather: HeaderGather::default(),
                _state: std::marker::PhantomData,
            };
            return Run::new(self, plan, Ok(Next::Done));
        }
        simple(self, "UID FETCH", HeaderGather::default(), |c| {
            c.uid_fetch_header_star()
        })
    }

    /// `UID FETCH <uids> (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])`, streaming each message
    /// with a body as a [`Step::Item`].
    pub fn fetch(mut self, uids: &[u32]) -> Run<FetchBodies> {
        let cmd = self.core.cmds.uid_fetch_set(uids);
        Run::new(
            self,
            FetchBodies { tag: cmd.tag },
            Ok(Next::Send(cmd.bytes)),
        )
    }

    /// Applies `action` to `uids` (already stored): `\Seen`, move to `move_to` (default
    /// `Processed`, created when missing), or delete. The commands are chosen from the
    /// capabilities: UID MOVE when offered, else UID COPY + `\Deleted` + UID EXPUNGE; delete
    /// only with UIDPLUS, since a plain EXPUNGE would also remove what other clients marked.
    /// Nothing is sent for `Keep` or no UIDs; an unsafe action is refused before sending.
    pub fn post_action(
        mut self,
        action: PostAction,
        uids: &[u32],
        move_to: Option<&str>,
    ) -> Run<PostActions> {
        let mut plan = PostActions {
            uids: uids.to_vec(),
            target: move_to.unwrap_or("Processed").to_string(),
            ops: VecDeque::new(),
            current: None,
        };
        let first = if uids.is_empty() || action == PostAction::Keep {
            Ok(Next::Done)
        } else if let Err(e) = check_post_action(&self.core.caps, action) {
            Ok(Next::Refused(e))
        } else {
            plan.ops = match action {
                PostAction::Keep => VecDeque::new(),
                PostAction::Seen => [Op::Flag("\\Seen")].into(),
                PostAction::Delete => [Op::Flag("\\Deleted"), Op::Expunge].into(),
                PostAction::Move if self.core.has("MOVE") => [Op::Create, Op::Move].into(),
                PostAction::Move => {
                    [Op::Create, Op::Copy, Op::Flag("\\Deleted"), Op::Expunge].into()
                }
            };
            Ok(plan.next_op(&mut self.core))
        };
        Run::new(self, plan, first)
    }

    /// IDLE until the server reports new mail or the caller ends the wait with
    /// [`Run::wake`]; DONE is sent and the completion read, so the state is ready for the
    /// next command.
    pub fn idle(mut self) -> Run<Idle> {
        let cmd = self.core.cmds.idle();
        let plan = Idle {
            tag: cmd.tag,
            phase: IdlePhase::Starting,
            wake: None,
        };
        Run::new(self, plan, Ok(Next::Send(cmd.bytes)))
    }
}

/// Streams the messages of a UID FETCH.
pub struct FetchBodies {
    tag: String,
}

impl Plan for FetchBodies {
    type From = Selected;
    type To = Selected;
    type Item = Fetched;

    fn during(&self) -> &'static str {
        "fetching messages"
    }

    fn on_response(
        &mut self,
        _core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Fetched>, ImapError> {
        match response {
            ServerResponse::Fetch(f) if f.body.is_some() && f.uid.is_some() => Ok(Next::Item(f)),
            r => Ok(match tagged(&r, &self.tag) {
                Some((Completion::Ok, _)) => Next::Done,
                Some((completion, line)) => Next::Refused(refused(completion, line.to_string())),
                None => Next::Read,
            }),
        }
    }

    fn complete(self, from: Selected) -> Selected {
        from
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Flag(&'static str),
    Expunge,
    Move,
    Copy,
}

/// The commands of a post-ingest action, one after the other.
pub struct PostActions {
    uids: Vec<u32>,
    target: String,
    ops: VecDeque<Op>,
    current: Option<(String, Op)>,
}

impl PostActions {
    fn next_op(&mut self, core: &mut Core) -> Next<Infallible> {
        let Some(op) = self.ops.pop_front() else {
            self.current = None;
            return Next::Done;
        };
        let cmds = &mut core.cmds;
        let cmd = match op {
            Op::Create => cmds.create(&self.target),
            Op::Flag(flag) => cmds.uid_store_add_flag(&self.uids, flag),
            Op::Expunge => cmds.uid_expunge(&self.uids),
            Op::Move => cmds.uid_move(&self.uids, &self.target),
            Op::Copy => cmds.uid_copy(&self.uids, &self.target),
        };
        self.current = Some((cmd.tag, op));
        Next::Send(cmd.bytes)
    }
}

impl Plan for PostActions {
    type From = Selected;
    type To = Selected;
    type Item = Infallible;

    fn during(&self) -> &'static str {
        match self.current.as_ref().map(|(_, op)| *op) {
            Some(Op::Create) => "CREATE",
            Some(Op::Flag(_)) | None => "UID STORE",
            Some(Op::Expunge) => "UID EXPUNGE",
            Some(Op::Move) => "UID MOVE",
            Some(Op::Copy) => "UID COPY",
        }
    }

    fn on_response(
        &mut self,
        core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        let Some((tag, op)) = &self.current else {
            return Ok(Next::Read);
        };
        let Some((completion, line)) = tagged(&response, tag) else {
            return Ok(Next::Read);
        };
        // CREATE: NO [ALREADYEXISTS] (or a server's own wording) means it is there; a real
        // problem shows in the MOVE/COPY that follows, with that server's reply.
        let ok = match op {
            Op::Create => completion != Completion::Bad,
            _ => completion == Completion::Ok,
        };
        if !ok {
            return Ok(Next::Refused(refused(completion, line.to_string())));
        }
        Ok(self.next_op(core))
    }

    fn complete(self, from: Selected) -> Selected {
        from
    }
}

/// IDLE (RFC 2177): waits for EXISTS, or for the caller to end the wait.
pub struct Idle {
    tag: String,
    phase: IdlePhase,
    wake: Option<IdleWake>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdlePhase {
    /// IDLE sent, the continuation not yet seen.
    Starting,
    Waiting,
    /// DONE sent (or due), reading the completion.
    Ending,
    /// The server ended IDLE by itself.
    EndedByServer,
}

impl Run<Idle> {
    /// Ends the wait (the deadline passed, or the caller stops): DONE is due. Has no
    /// effect unless the exchange is [`Step::Waiting`].
    pub fn wake(&mut self, why: IdleWake) {
        if self.plan.phase == IdlePhase::Waiting && self.end.is_none() {
            self.plan.wake = Some(why);
            self.plan.phase = IdlePhase::Ending;
            self.outbox = Some(IDLE_DONE.to_vec());
        }
    }
}

impl Plan for Idle {
    type From = Selected;
    type To = (Selected, IdleWake);
    type Item = Infallible;

    fn during(&self) -> &'static str {
        match self.phase {
            IdlePhase::Starting => "starting IDLE",
            IdlePhase::Waiting => "in IDLE",
            IdlePhase::Ending | IdlePhase::EndedByServer => "ending IDLE",
        }
    }

    fn waiting(&self) -> bool {
        self.phase == IdlePhase::Waiting
    }

    fn on_response(
        &mut self,
        _core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        let completion = tagged(&response, &self.tag).map(|(c, l)| (c, l.to_string()));
        match (self.phase, response, completion) {
            (IdlePhase::Starting, ServerResponse::Continue(_), _) => {
                if self.wake.is_some() {
                    self.phase = IdlePhase::Ending;
                    return Ok(Next::Send(IDLE_DONE.to_vec()));
                }
                self.phase = IdlePhase::Waiting;
                Ok(Next::Read)
            }
            (IdlePhase::Starting, _, Some((completion, line))) => {
                Ok(Next::Refused(refused(completion, line)))
            }
            (IdlePhase::Starting, ServerResponse::Exists(_), None) => {
                self.wake = Some(IdleWake::NewMail);
                Ok(Next::Read)
            }
            (IdlePhase::Waiting, ServerResponse::Exists(_), _) => {
                self.wake = Some(IdleWake::NewMail);
                self.phase = IdlePhase::Ending;
                Ok(Next::Send(IDLE_DONE.to_vec()))
            }
            (IdlePhase::Waiting, _, Some(_)) => {
                // The server ended IDLE on its own: treated like a timeout.
                self.phase = IdlePhase::EndedByServer;
                Ok(Next::Done)
            }
            (IdlePhase::Ending, _, Some((Completion::Ok, _))) => Ok(Next::Done),
            (IdlePhase::Ending, _, Some((completion, line))) => {
                Ok(Next::Refused(refused(completion, line)))
            }
            (IdlePhase::Ending, ServerResponse::Exists(_), None)
                if self.wake != Some(IdleWake::Stopped) =>
            {
                self.wake = Some(IdleWake::NewMail);
                Ok(Next::Read)
            }
            _ => Ok(Next::Read),
        }
    }

    fn complete(self, from: Selected) -> (Selected, IdleWake) {
        let wake = match self.phase {
            IdlePhase::EndedByServer => IdleWake::Timeout,
            _ => self.wake.unwrap_or(IdleWake::Timeout),
        };
        (from, wake)
    }
}

#[cfg(test)]
mod tests;
