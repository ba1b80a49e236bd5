//! Commands of the transaction state: UIDL, LIST, TOP, DELE, the pipelined RETRs, and
//! QUIT from any state.

use super::*;

/// One command of the transaction state answered with one reply (and the multi-line body
/// its `+OK` opens, when it has one), made into a `T`.
pub struct Command<T> {
    during: &'static str,
    /// The cap of the body a `+OK` opens; `None`: a single-line reply.
    limit: Option<u64>,
    parse: fn(&[u8]) -> Result<T, ProtocolError>,
    found: T,
}

impl Transaction {
    fn command<T: Default>(
        self,
        during: &'static str,
        bytes: Vec<u8>,
        limit: Option<u64>,
        parse: fn(&[u8]) -> Result<T, ProtocolError>,
    ) -> Run<Command<T>> {
        let plan = Command {
            during,
            limit,
            parse,
            found: T::default(),
        };
        Run::new(self, plan, Ok(Next::Send(bytes)))
    }

    /// `UIDL`: `(message number, unique id)` for every message in the maildrop.
    pub fn uidl(self) -> Run<Command<Vec<(u32, String)>>> {
        let bytes = pop3::uidl().to_vec();
        self.command("UIDL", bytes, Some(LISTING_LIMIT), pop3::parse_uidl)
    }

    /// `LIST`: `(message number, size)` for every message.
    pub fn list(self) -> Run<Command<Vec<(u32, u64)>>> {
        let bytes = pop3::list().to_vec();
        self.command("LIST", bytes, Some(LISTING_LIMIT), pop3::parse_list)
    }

    /// `TOP n 0`: the header of message `n`.
    pub fn top_header(self, n: u32) -> Run<Command<Vec<u8>>> {
        self.command("TOP", pop3::top(n, 0), Some(HEADER_LIMIT), |h| {
            Ok(h.to_vec())
        })
    }

    /// `DELE n`: marks a message; the server deletes it once QUIT is answered (a dropped
    /// session deletes nothing).
    pub fn dele(self, n: u32) -> Run<Command<()>> {
        self.command("DELE", pop3::dele(n), None, |_| Ok(()))
    }

    /// `RETR` for each of `messages` (number, size from LIST), streaming each message,
    /// dot-unstuffed, as a [`Step::Item`], in order. With `PIPELINING` every RETR asked for
    /// is sent at once; without, each after the reply before it. `limit` caps each message.
    pub fn retrieve(self, messages: &[(u32, u64)], limit: u64) -> Run<Retrieve> {
        let plan = Retrieve {
            pipelining: self.pipelining(),
            limit,
            unsent: messages.iter().copied().collect(),
            sent: VecDeque::new(),
        };
        Run::new(self, plan, Ok(Next::Read))
    }
}

impl<T> Plan for Command<T> {
    type From = Transaction;
    type To = (Transaction, T);
    type Item = Infallible;

    fn during(&self) -> &'static str {
        self.during
    }

    fn body(&self) -> Option<Body> {
        self.limit.map(|limit| Body {
            limit,
            expected: None,
        })
    }

    fn on_reply(
        &mut self,
        _core: &mut Core,
        reply: Reply,
        body: Vec<u8>,
    ) -> Result<Next<Infallible>, Pop3Error> {
        if !matches!(reply, Reply::Ok(_)) {
            return Ok(Next::Refused(refused(&reply)));
        }
        // A listing read to its end that cannot be used leaves the session usable.
        Ok(match (self.parse)(&body) {
            Ok(found) => {
                self.found = found;
                Next::Done
            }
            Err(e) => Next::Refused(e.into()),
        })
    }

    fn complete(self, from: Transaction) -> (Transaction, T) {
        (from, self.found)
    }
}

/// Streams the messages of one or more RETRs.
#[derive(Debug)]
pub struct Retrieve {
    pipelining: bool,
    limit: u64,
    /// Asked for, RETR not sent yet: (number, size from LIST).
    unsent: VecDeque<(u32, u64)>,
    /// RETR sent, reply not read yet: the size from LIST.
    sent: VecDeque<u64>,
}

impl Run<Retrieve> {
    /// Asks for more messages (number, size from LIST), after those asked for before. Has
    /// no effect once the exchange has failed.
    pub fn request(&mut self, messages: &[(u32, u64)]) {
        if self.end.is_none() {
            self.plan.unsent.extend(messages.iter().copied());
        }
    }
}

/// About how long a message's reply gets: a little longer than its size from LIST for
/// dot-stuffing, and no longer than the limit allows.
pub(super) fn expected_len(listed: u64, limit: u64) -> u64 {
    listed.min(limit).saturating_add(listed / 64 + 1024)
}

impl Plan for Retrieve {
    type From = Transaction;
    type To = Transaction;
    type Item = Vec<u8>;

    fn during(&self) -> &'static str {
        "RETR"
    }

    fn body(&self) -> Option<Body> {
        let listed = *self.sent.front()?;
        Some(Body {
            limit: self.limit,
            expected: Some(expected_len(listed, self.limit)),
        })
    }

    fn next_command(&mut self) -> Option<Vec<u8>> {
        let due = if self.pipelining {
            self.unsent.len()
        } else {
            usize::from(self.sent.is_empty()).min(self.unsent.len())
        };
        if due == 0 {
            return None;
        }
        let mut bytes = Vec::new();
        for (n, listed) in self.unsent.drain(..due) {
            bytes.extend_from_slice(&pop3::retr(n));
            self.sent.push_back(listed);
        }
        Some(bytes)
    }

    fn awaiting(&self) -> bool {
        !self.sent.is_empty() || !self.unsent.is_empty()
    }

    fn on_reply(
        &mut self,
        _core: &mut Core,
        reply: Reply,
        body: Vec<u8>,
    ) -> Result<Next<Vec<u8>>, Pop3Error> {
        self.sent.pop_front();
        match reply {
            Reply::Ok(_) => Ok(Next::Item(body)),
            // The replies to RETRs sent after this one are still coming: the session is
            // out of step unless none was.
            other if self.sent.is_empty() => Ok(Next::Refused(refused(&other))),
            other => Err(refused(&other)),
        }
    }

    fn complete(self, from: Transaction) -> Transaction {
        from
    }
}

// ---------------------------------------------------------------------------------------
// Closing

/// QUIT from a state `S`: the state is given up whatever the answer.
pub struct Quit<S> {
    _state: std::marker::PhantomData<fn(S)>,
}

/// QUIT from any state. A reply other than `+OK` is fatal (the session is over either way):
/// after [`Transaction`] it means the DELEs may not have taken effect.
pub fn quit<S: State>(state: S) -> Run<Quit<S>> {
    let plan = Quit {
        _state: std::marker::PhantomData,
    };
    Run::new(state, plan, Ok(Next::Send(pop3::quit().to_vec())))
}

impl<S: State> Plan for Quit<S> {
    type From = S;
    type To = Closed;
    type Item = Infallible;

    fn during(&self) -> &'static str {
        "QUIT"
    }

    fn on_reply(
        &mut self,
        _core: &mut Core,
        reply: Reply,
        _body: Vec<u8>,
    ) -> Result<Next<Infallible>, Pop3Error> {
        match reply {
            Reply::Ok(_) => Ok(Next::Done),
            other => Err(refused(&other)),
        }
    }

    fn complete(self, _from: S) -> Closed {
        Closed
    }
}
