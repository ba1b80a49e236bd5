//! `mailsluice messages list / show / export`, from the store or through the running node.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow};

use mailsluice::api::SourceView;
use mailsluice::config::Settings;
use mailsluice::store::{MessageMeta, Store};

use super::node_api::NodeApi;
use super::{ExportFormat, MessagesCommand, open_store, runtime};

/// Reads the store directly, or through the running node's API.
enum Reader {
    Local(Store),
    Remote(NodeApi, tokio::runtime::Runtime),
}

impl Reader {
    fn open(settings: &Settings) -> anyhow::Result<Reader> {
        Ok(match open_store(settings)? {
            Some(s) => Reader::Local(s),
            None => Reader::Remote(NodeApi::new(settings)?, runtime()?),
        })
    }

    /// How many messages `source` (or all sources) has stored.
    fn total(&self, source: Option<&str>) -> anyhow::Result<u64> {
        let counts: Vec<(String, u64)> = match self {
            Reader::Local(store) => store.counts()?.into_iter().collect(),
            Reader::Remote(api, rt) => rt
                .block_on(api.get_json::<Vec<SourceView>>("/api/sources"))?
                .into_iter()
                .map(|v| (v.name, v.stored_total))
                .collect(),
        };
        Ok(counts
            .into_iter()
            .filter(|(name, _)| source.is_none_or(|s| s == name))
            .map(|(_, n)| n)
            .sum())
    }

    /// Calls `f` for every message (in storage order) of `source`, or all.
    fn each(
        &self,
        source: Option<&str>,
        limit: usize,
        mut f: impl FnMut(MessageMeta) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match self {
            Reader::Local(store) => {
                for m in store.iter_meta(source).take(limit) {
                    f(m?)?;
                }
            }
            Reader::Remote(api, rt) => {
                // Ids start at 0: the first page has no `after`.
                let mut after: Option<u64> = None;
                let mut seen = 0usize;
                loop {
                    let mut path = match after {
                        Some(a) => format!("/api/messages?after={a}&limit=1000"),
                        None => "/api/messages?limit=1000".to_string(),
                    };
                    if let Some(s) = source {
                        path.push_str(&format!("&source={s}"));
                    }
                    let page: Vec<MessageMeta> = rt.block_on(api.get_json(&path))?;
                    if page.is_empty() {
                        break;
                    }
                    for m in page {
                        after = Some(m.id);
                        if seen >= limit {
                            return Ok(());
                        }
                        seen += 1;
                        f(m)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn meta(&self, id: u64) -> anyhow::Result<Option<MessageMeta>> {
        match self {
            Reader::Local(store) => Ok(store.meta(id)?),
            Reader::Remote(api, rt) => Ok(rt
                .block_on(api.get_json(&format!("/api/messages/{id}")))
                .ok()),
        }
    }

    fn raw(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        match self {
            Reader::Local(store) => store
                .raw(id)?
                .ok_or_else(|| anyhow!("message {id}: raw bytes missing")),
            Reader::Remote(api, rt) => {
                rt.block_on(api.get_bytes(&format!("/api/messages/{id}/raw")))
            }
        }
    }
}

fn location(m: &MessageMeta) -> String {
    match &m.location {
        mailsluice::store::Location::Imap {
            folder,
            uidvalidity,
            uid,
        } => format!("{folder};UIDVALIDITY={uidvalidity};UID={uid}"),
        mailsluice::store::Location::Pop3 { uidl } => format!("UIDL={uidl}"),
    }
}

pub(crate) fn messages(settings: &Settings, command: MessagesCommand) -> anyhow::Result<()> {
    let reader = Reader::open(settings)?;
    let mut out = std::io::stdout().lock();
    match command {
        MessagesCommand::List { source, limit } => {
            reader.each(source.as_deref(), limit, |m| {
                let subject = m
                    .parsed
                    .as_ref()
                    .and_then(|p| p.subject.clone())
                    .unwrap_or_else(|| {
                        if m.parse_error.is_some() {
                            "(unparsed)".into()
                        } else {
                            String::new()
                        }
                    });
                writeln!(
                    out,
                    "{:>8}  {:<16} {:<40} {:>9}  {}",
                    m.id,
                    m.source,
                    location(&m),
                    m.size,
                    subject
                )?;
                Ok(())
            })?;
        }
        MessagesCommand::Show { id, raw } => {
            let Some(meta) = reader.meta(id)? else {
                return Err(anyhow!("no message {id}"));
            };
            if raw {
                out.write_all(&reader.raw(id)?)?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&meta)?)?;
            }
        }
        MessagesCommand::Export {
            format,
            out: path,
            source,
        } => {
            let n = export(&reader, format, &path, source.as_deref())?;
            writeln!(out, "exported {n} message(s) to {}", path.display())?;
        }
    }
    Ok(())
}

fn export(
    reader: &Reader,
    format: ExportFormat,
    path: &Path,
    source: Option<&str>,
) -> anyhow::Result<u64> {
    let mut n = 0u64;
    // A progress bar on a terminal; the total is what the store counts.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(reader.total(source).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "exporting [{bar:40}] {pos}/{len} messages, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    match format {
        ExportFormat::Eml => {
            std::fs::create_dir_all(path).with_context(|| format!("--out {}", path.display()))?;
            reader.each(source, usize::MAX, |m| {
                let raw = reader.raw(m.id)?;
                std::fs::write(path.join(format!("{}.eml", m.id)), raw)?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
        }
        ExportFormat::Mbox => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("--out {}", path.display()))?,
            );
            reader.each(source, usize::MAX, |m| {
                let raw = reader.raw(m.id)?;
                write_mboxrd(&mut f, &m, &raw)?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
            f.flush()?;
        }
        ExportFormat::Jsonl => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("--out {}", path.display()))?,
            );
            reader.each(source, usize::MAX, |m| {
                serde_json::to_writer(&mut f, &m)?;
                f.write_all(b"\n")?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
            f.flush()?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(n)
}

/// mboxrd: a `From ` separator line, then the message with every line matching
/// `>*From ` quoted with one more `>`, then a blank line.
fn write_mboxrd(w: &mut impl Write, m: &MessageMeta, raw: &[u8]) -> std::io::Result<()> {
    let date = m
        .internal_date
        .as_deref()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".into());
    writeln!(w, "From mailsluice@localhost {date}")?;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let stripped = line
            .iter()
            .skip_while(|&&b| b == b'>')
            .copied()
            .collect::<Vec<u8>>();
        if stripped.starts_with(b"From ") {
            w.write_all(b">")?;
        }
        w.write_all(line)?;
    }
    if !raw.ends_with(b"\n") {
        w.write_all(b"\n")?;
    }
    w.write_all(b"\n")
}
